package exchange_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// TestKindsOverNATS checks every behaviour of the contract table as
// another service sees it: a NATS request to the worker pool.
func TestKindsOverNATS(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	nc := b.Connect("client")
	for _, c := range testbed.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			if c.Prepare != nil {
				c.Prepare(b, c)
			}
			budget := c.Budget
			if budget == 0 {
				budget = 3 * time.Second
			}
			start := time.Now()
			res, e := b.Request(nc, protocol.Request{AppID: c.AppID, Code: c.Code}, budget)
			if took := time.Since(start); took > budget+500*time.Millisecond {
				t.Errorf("answer took %v, budget %v", took, budget)
			}
			checkCase(t, b, c, res, e)
		})
	}
}

func checkCase(t *testing.T, b *testbed.Bed, c testbed.Case, res protocol.Result, e *protocol.Error) {
	t.Helper()
	appid := c.AppID
	if appid == "" {
		appid = testbed.App.AppID
	}
	if c.Kind == "" {
		if e != nil {
			t.Fatalf("want success, got %v", e)
		}
		if want := fakewx.OpenID(appid, c.Code); res.OpenID != want {
			t.Errorf("openid %q, want %q", res.OpenID, want)
		}
		if want := fakewx.UnionID(appid, c.Code); res.UnionID != want {
			t.Errorf("unionid %q, want %q", res.UnionID, want)
		}
	} else {
		if e == nil {
			t.Fatalf("want %s, got success %+v", c.Kind, res)
		}
		if e.Kind != c.Kind || e.Status != c.Status || e.Retry != c.Retry || e.WxErrcode != c.Errcode {
			t.Errorf("got kind=%s status=%d retry=%s errcode=%d; want %s %d %s %d",
				e.Kind, e.Status, e.Retry, e.WxErrcode, c.Kind, c.Status, c.Retry, c.Errcode)
		}
		if c.RetryAfter && e.RetryAfter <= 0 {
			t.Errorf("no Retry-After")
		}
		if len(c.Code) >= 8 && strings.Contains(e.Message, c.Code) {
			t.Errorf("message echoes the code: %q", e.Message)
		}
	}
	if c.Calls >= 0 {
		if got := b.Fake.Calls(c.Code); got != c.Calls {
			t.Errorf("upstream calls for the code: %d, want %d", got, c.Calls)
		}
	}
}

func TestAppIDRequiredWithSeveralApps(t *testing.T) {
	b := testbed.New(t, testbed.Options{Apps: []fakewx.App{testbed.App, testbed.App2}})
	b.StartWorker(b.WorkerConfig(testbed.App, testbed.App2))
	nc := b.Connect("client")
	_, e := b.Request(nc, protocol.Request{Code: "no-appid-given"}, time.Second)
	if e == nil || e.Kind != protocol.KindAppIDRequired || e.Status != 400 {
		t.Fatalf("got %v, want appid_required", e)
	}
	res, e := b.Request(nc, protocol.Request{AppID: testbed.App2.AppID, Code: "for-app-2"}, time.Second)
	if e != nil || res.OpenID != fakewx.OpenID(testbed.App2.AppID, "for-app-2") {
		t.Fatalf("app2: %v %+v", e, res)
	}
	if res.UnionID != "" {
		t.Errorf("app2 is not bound to an open platform, got unionid %q", res.UnionID)
	}
}

func TestMalformedNATSRequests(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	nc := b.Connect("client")
	for _, body := range []string{"", "not json", `{"code":12}`, `[]`, `{"code":""}`, `{"code":"a\u0000b"}`} {
		reply, err := nc.Request(protocol.Subject("wxlogin"), []byte(body), 2*time.Second)
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if got := reply.Header.Get(micro.ErrorCodeHeader); got != "400" {
			t.Errorf("%q: error code header %q, want 400", body, got)
		}
		_, e := protocol.DecodeReply(reply)
		if e == nil || e.Kind != protocol.KindBadRequest {
			t.Errorf("%q: got %v, want bad_request", body, e)
		}
	}
	if n := b.Fake.TotalCalls(); n != 0 {
		t.Errorf("bad requests reached WeChat %d times", n)
	}
}

func TestMisconfiguredSecretIsLoggedAsError(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	cfg := b.WorkerConfig()
	cfg.Apps[testbed.App.AppID] = "WRONG-SECRET-never-logged"
	b.StartWorker(cfg)
	_, e := b.Request(b.Connect("client"), protocol.Request{Code: "misconfigured-1"}, 2*time.Second)
	if e == nil || e.Kind != protocol.KindUpstream || e.WxErrcode != 40125 || e.Retry != protocol.RetryNo {
		t.Fatalf("got %v, want upstream_error 40125 retry=no", e)
	}
	if n := b.Fake.Calls("misconfigured-1"); n != 1 {
		t.Errorf("40125 was retried: %d calls", n)
	}
	logs := b.Logs.String()
	if !strings.Contains(logs, `"level":"ERROR"`) || !strings.Contains(logs, `"errcode":40125`) {
		t.Errorf("misconfiguration not logged at error level:\n%s", logs)
	}
	if strings.Contains(logs, "WRONG-SECRET") {
		t.Errorf("secret in logs")
	}
}

// TestRateLimitFailsFast: with WX_RATE=1 the second call in the same
// second cannot get a token within a short budget and fails at once with
// rate_limited and a Retry-After, without reaching WeChat.
func TestRateLimitFailsFast(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	cfg := b.WorkerConfig()
	cfg.Rate, cfg.Burst = 1, 1
	// The pool-wide limiter binds in the background. A first call made
	// before it did takes the per-worker limiter's token, which the pool's
	// schedule does not know of; the second call could then get the pool's
	// next slot within its budget (seen under CI load, 1 run in 60).
	waitShared(t, []*testbed.Worker{b.StartWorker(cfg)})
	nc := b.Connect("client")
	// Slots fall on whole seconds: the first call may wait up to 1 s for
	// its own.
	if _, e := b.Request(nc, protocol.Request{Code: "first-call"}, 3*time.Second); e != nil {
		t.Fatal(e)
	}
	start := time.Now()
	_, e := b.Request(nc, protocol.Request{Code: "second-call"}, 300*time.Millisecond)
	if e == nil || e.Kind != protocol.KindRateLimited || e.RetryAfter <= 0 {
		t.Fatalf("got %v, want rate_limited with Retry-After", e)
	}
	if took := time.Since(start); took > 250*time.Millisecond {
		t.Errorf("rate_limited took %v: it should fail at once, not wait", took)
	}
	if n := b.Fake.Calls("second-call"); n != 0 {
		t.Errorf("rate-limited request reached WeChat %d times", n)
	}
	// With a budget long enough to wait for the next token, it waits.
	if _, e := b.Request(nc, protocol.Request{Code: "third-call"}, 3*time.Second); e != nil {
		t.Fatalf("a request that can wait for a token failed: %v", e)
	}
}

// TestDeadlineHonoured: retries stop at the requester's budget, not at
// WX_MAX_ATTEMPTS × WX_HTTP_TIMEOUT.
func TestDeadlineHonoured(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	cfg := b.WorkerConfig()
	cfg.MaxAttempts, cfg.HTTPTimeout, cfg.RequestTimeout = 10, 2*time.Second, 800*time.Millisecond
	b.StartWorker(cfg)
	start := time.Now()
	_, e := b.Request(b.Connect("client"), protocol.Request{Code: "fx-hang-deadline"}, 500*time.Millisecond)
	took := time.Since(start)
	if e == nil || e.Kind != protocol.KindTimeout || e.Status != 504 {
		t.Fatalf("got %v, want timeout", e)
	}
	if took > 900*time.Millisecond {
		t.Errorf("answer after %v for a 500ms budget", took)
	}
	// A worker given no budget header uses WORKER_REQUEST_TIMEOUT.
	nc := b.Connect("raw")
	data, _ := json.Marshal(protocol.Request{Code: "fx-hang-noheader"})
	start = time.Now()
	reply, err := nc.Request(protocol.Subject("wxlogin"), data, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, e := protocol.DecodeReply(reply); e == nil || e.Kind != protocol.KindTimeout {
		t.Fatalf("without header: got %v, want timeout after the default budget", e)
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("without header: answer after %v, default budget 800ms", took)
	}
}

// TestExchangesRunConcurrently: a subscription hands messages over one at
// a time; the worker must not serve them one at a time.
func TestExchangesRunConcurrently(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	cfg := b.WorkerConfig()
	cfg.Concurrency = 100
	w := b.StartWorker(cfg)
	nc := b.Connect("client")
	const n = 150
	var wg sync.WaitGroup
	results := make(chan *protocol.Error, n)
	for i := range n {
		wg.Go(func() {
			_, e := b.Request(nc, protocol.Request{Code: fmt.Sprintf("fx-hang-%d", i)}, 1500*time.Millisecond)
			results <- e
		})
	}
	// All hang upstream at once, up to the concurrency limit, and no more.
	testbed.Eventually(t, 5*time.Second, "100 exchanges in flight", func() bool { return w.Stats().InFlight == 100 })
	if got := w.Stats().InFlight; got > 100 {
		t.Fatalf("%d in flight, limit 100", got)
	}
	wg.Wait()
	close(results)
	for e := range results {
		if e == nil || e.Kind != protocol.KindTimeout {
			t.Fatalf("hanging upstream: got %v, want timeout", e)
		}
	}
}

// TestShutdownAnswersEverythingInFlight: stop intake, finish, then drain.
func TestShutdownAnswersEverythingInFlight(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	w := b.StartWorker(b.WorkerConfig())
	nc := b.Connect("client")
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			code := fmt.Sprintf("fx-slow1500-%d", i)
			res, e := b.Request(nc, protocol.Request{Code: code}, 5*time.Second)
			if e != nil {
				errs <- fmt.Errorf("%s: %v", code, e)
			} else if res.OpenID != fakewx.OpenID(testbed.App.AppID, code) {
				errs <- fmt.Errorf("%s: wrong openid", code)
			}
		})
	}
	testbed.Eventually(t, 3*time.Second, "all in flight", func() bool { return w.Stats().InFlight == n })
	start := time.Now()
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("shutdown took %v", took)
	}
	if !w.NC.IsClosed() {
		t.Error("connection not closed after shutdown")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Gone: a new request finds no responder at once.
	_, err := nc.Request(protocol.Subject("wxlogin"), []byte(`{"code":"after-stop"}`), 2*time.Second)
	if err != nats.ErrNoResponders {
		t.Errorf("after shutdown: %v, want no responders", err)
	}
}

// TestSecretsNeverLeave runs success and failure paths against an
// upstream that returns a known session_key, and checks every log line
// (debug level) and every reply for the secret, the session_key and codes.
func TestSecretsNeverLeave(t *testing.T) {
	const sessionKey = "SESSIONKEY-CANARY-1234567890=="
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{testbed.App}})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code := r.URL.Query().Get("js_code")
		if strings.HasPrefix(code, "canary-ok") {
			fmt.Fprintf(w, `{"openid":"o-canary","session_key":%q}`, sessionKey)
			return
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(upstream.Close)
	b := testbed.New(t, testbed.Options{Upstream: upstream})
	cfg := b.WorkerConfig()
	b.StartWorker(cfg)
	nc := b.Connect("client")
	codes := []string{"canary-ok-CODE-1", "fx-invalid-CODE-2", "fx-busy99-CODE-3", "fx-garbage99-CODE-4", "fx-hang-CODE-5", "fx-5xx99-CODE-6", "has space CODE-7"}
	var replies strings.Builder
	for _, code := range codes {
		res, e := b.Request(nc, protocol.Request{Code: code}, 700*time.Millisecond)
		fmt.Fprintf(&replies, "%+v %v\n", res, e)
		if e != nil {
			body, _ := json.Marshal(e.Body())
			replies.Write(body)
		}
	}
	// The misconfiguration path too.
	cfg.Apps[testbed.App.AppID] = "WRONG-SECRET-CANARY"
	cfg.SubjectPrefix = "other"
	b.StartWorker(cfg)
	data, _ := json.Marshal(protocol.Request{Code: "CODE-8-misconf"})
	if reply, err := nc.Request("other.code2session", data, 3*time.Second); err == nil {
		replies.Write(reply.Data)
	}
	for name, text := range map[string]string{"logs": b.Logs.String(), "replies": replies.String()} {
		for _, secret := range []string{testbed.App.Secret, "WRONG-SECRET-CANARY", sessionKey, "CODE-"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contain %q:\n%s", name, secret, text)
			}
		}
	}
	if !strings.Contains(b.Logs.String(), `"msg":"exchange"`) {
		t.Fatal("no exchange log lines captured: the check above proves nothing")
	}
}

// TestServiceDiscoveryAndStats: the worker is a micro service that
// `nats micro info/stats wxlogin` can see, with the worker's own figures.
func TestServiceDiscoveryAndStats(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	nc := b.Connect("client")
	if _, e := b.Request(nc, protocol.Request{Code: "stats-1"}, time.Second); e != nil {
		t.Fatal(e)
	}
	b.Request(nc, protocol.Request{Code: "fx-invalid-stats"}, time.Second)

	reply, err := nc.Request("$SRV.INFO.wxlogin", nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	json.Unmarshal(reply.Data, &info)
	if info.Name != "wxlogin" || len(info.Endpoints) != 1 || info.Endpoints[0].Subject != "wxlogin.code2session" ||
		info.Endpoints[0].QueueGroup != protocol.QueueGroup || info.Version == "" || info.Description == "" {
		t.Errorf("info: %+v", info)
	}
	reply, err = nc.Request("$SRV.STATS.wxlogin", nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	json.Unmarshal(reply.Data, &st)
	if len(st.Endpoints) != 1 {
		t.Fatalf("stats: %s", reply.Data)
	}
	var ours exchange.Stats
	if err := json.Unmarshal(st.Endpoints[0].Data, &ours); err != nil {
		t.Fatalf("stats data: %v: %s", err, reply.Data)
	}
	if ours.Requests != 2 || ours.OK != 1 || ours.Errors["invalid_code"] != 1 || ours.UpstreamCalls != 2 || ours.UpstreamCodes["40029"] != 1 {
		t.Errorf("stats data: %+v", ours)
	}
}

// TestLostAnswerIsCodeUsed: an attempt that times out after WeChat
// consumed the code makes the retry see 40163; that is code_used with
// retry new_code, and counted.
func TestLostAnswerIsCodeUsed(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	cfg := b.WorkerConfig()
	cfg.HTTPTimeout = 100 * time.Millisecond
	w := b.StartWorker(cfg)
	b.Fake.Script("lost-answer", fakewx.Slow(300*time.Millisecond))
	_, e := b.Request(b.Connect("client"), protocol.Request{Code: "lost-answer"}, 2*time.Second)
	if e == nil || e.Kind != protocol.KindCodeUsed || e.Retry != protocol.RetryNewCode {
		t.Fatalf("got %v, want code_used", e)
	}
	if got := w.Stats().LostAnswers; got != 1 {
		t.Errorf("lost answers counted %d, want 1", got)
	}
	if n := b.Fake.Calls("lost-answer"); n != 2 {
		t.Errorf("%d upstream calls, want 2", n)
	}
}

// panicOnce is a log handler that panics the first time the worker logs
// the exchange of one code: a stand-in for any bug on an exchange's path.
type panicOnce struct {
	slog.Handler
	codeHash string
	done     *atomic.Bool
}

func (h panicOnce) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "exchange" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "code" && a.Value.String() == h.codeHash && h.done.CompareAndSwap(false, true) {
				panic("boom: " + h.codeHash)
			}
			return true
		})
	}
	return h.Handler.Handle(ctx, r)
}

func (h panicOnce) WithAttrs(as []slog.Attr) slog.Handler {
	return panicOnce{h.Handler.WithAttrs(as), h.codeHash, h.done}
}

func (h panicOnce) WithGroup(name string) slog.Handler {
	return panicOnce{h.Handler.WithGroup(name), h.codeHash, h.done}
}

// TestPanicInExchangeIsAnsweredAndServingGoesOn: an exchange that panics
// gets an error reply at once, its slot is freed, the panic is logged
// without the code, and the worker goes on serving, the same code too.
func TestPanicInExchangeIsAnsweredAndServingGoesOn(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	const code = "panic-code-1"
	b.Logger = slog.New(panicOnce{b.Logger.Handler(), logging.CodeHash(code), new(atomic.Bool)})
	cfg := b.WorkerConfig()
	cfg.Concurrency = 1 // a slot the panic kept would stop every later exchange
	w := b.StartWorker(cfg)
	nc := b.Connect("client")

	start := time.Now()
	_, e := b.Request(nc, protocol.Request{Code: code}, 3*time.Second)
	if e == nil || e.Kind != protocol.KindUpstream || e.Retry != protocol.RetrySameCode {
		t.Fatalf("exchange that panicked: got %v, want upstream_error with retry same_code", e)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("answer after %v: the requester waited for its deadline", took)
	}
	for _, c := range []string{"after-panic-1", code} {
		res, e := b.Request(nc, protocol.Request{Code: c}, 3*time.Second)
		if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, c) {
			t.Fatalf("%s after the panic: %+v, %v", c, res, e)
		}
	}
	if n := w.Stats().InFlight; n != 0 {
		t.Errorf("%d exchanges in flight after all were answered", n)
	}
	logs := b.Logs.String()
	if !strings.Contains(logs, "panic recovered") {
		t.Errorf("the panic was not logged:\n%s", logs)
	}
	if strings.Contains(logs, code) || strings.Contains(logs, "boom") {
		t.Errorf("the log holds the raw code or the panic's value:\n%s", logs)
	}
}
