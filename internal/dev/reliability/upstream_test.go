package reliability_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/stack"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

// startWorkerAt runs a worker with cfg against the WeChat API at apiBase
// on its own connection to the bed's NATS.
func startWorkerAt(t *testing.T, b *testbed.Bed, cfg exchange.Config, apiBase string) {
	t.Helper()
	st, err := stack.Start(context.Background(), stack.Options{Logger: b.Logger, NATSURL: b.NATS.ClientURL(), Upstream: apiBase})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })
	if _, err := st.StartWorker(cfg, b.Connect("worker-"+cfg.SubjectPrefix)); err != nil {
		t.Fatal(err)
	}
}

// TestUpstreamFaults: every way WeChat (or what stands in front of it)
// can misbehave ends in the contract's error kind, within the budget.
// Each case names the protection it proves.
func TestUpstreamFaults(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	const budget = 2 * time.Second

	// Three pools on three subjects, so that each fault meets the worker
	// settings that make its outcome certain rather than a race:
	//   "wxlogin": attempts longer than the budget (a hang meets the
	//     requester's deadline);
	//   "short": 250ms attempts, well within the budget (a hang or drip
	//     meets WX_HTTP_TIMEOUT, three times);
	//   "refused": nothing listens at its WeChat address.
	long := b.WorkerConfig()
	long.HTTPTimeout = 10 * time.Second
	b.StartWorker(long)
	short := b.WorkerConfig()
	short.SubjectPrefix, short.HTTPTimeout = "short", 250*time.Millisecond
	b.StartWorker(short)
	refused := b.WorkerConfig()
	refused.SubjectPrefix = "refused"
	startWorkerAt(t, b, refused, "http://"+closedAddr(t))

	edges := map[string]string{}
	for _, prefix := range []string{"wxlogin", "short", "refused"} {
		edges[prefix] = serveEdge(t, edgeConn(b), edge.Config{Timeout: budget, SubjectPrefix: prefix}, b.Logger)
	}
	c := newClient(t, 16)

	for _, tc := range []struct {
		name, pool, code string
		script           []fakewx.Step
		kind             protocol.Kind // "" for success
		status           int
		retry            protocol.Retry
		protection       string
	}{
		{"hang past the budget", "wxlogin", "fx-hang-past", nil, protocol.KindTimeout, 504, protocol.RetrySameCode,
			"the requester's budget (Wxlogin-Timeout-Ms) bounds the upstream attempt"},
		{"hang, each attempt timed out", "short", "hangs", []fakewx.Step{fakewx.Hang(), fakewx.Hang(), fakewx.Hang()},
			protocol.KindUpstream, 502, protocol.RetrySameCode, "WX_HTTP_TIMEOUT per attempt"},
		{"slow drip", "short", "drips", []fakewx.Step{fakewx.Drip(50 * time.Millisecond), fakewx.Drip(50 * time.Millisecond), fakewx.Drip(50 * time.Millisecond)},
			protocol.KindUpstream, 502, protocol.RetrySameCode, "the attempt's deadline covers reading the body, not only the headers"},
		// Six resets: net/http itself may resend a GET once on a reused
		// connection that was reset, which takes a step more per attempt.
		{"connection reset", "wxlogin", "resets", []fakewx.Step{fakewx.Reset(), fakewx.Reset(), fakewx.Reset(), fakewx.Reset(), fakewx.Reset(), fakewx.Reset()},
			protocol.KindUpstream, 502, protocol.RetrySameCode, "transport errors are classified, retried a bounded number of times"},
		{"HTTP 5xx with an HTML page", "wxlogin", "fx-5xx99-html", nil, protocol.KindUpstream, 502, protocol.RetrySameCode,
			"non-200 statuses are errors whatever the body says"},
		{"truncated JSON", "wxlogin", "truncated", []fakewx.Step{fakewx.Truncated(), fakewx.Truncated(), fakewx.Truncated()},
			protocol.KindUpstream, 502, protocol.RetrySameCode, "a cut JSON body is garbage, not a success"},
		{"not JSON at all", "wxlogin", "fx-garbage99-x", nil, protocol.KindUpstream, 502, protocol.RetrySameCode,
			"garbage is an upstream error"},
		{"connection refused", "refused", "refused", nil, protocol.KindUpstream, 502, protocol.RetrySameCode,
			"dial errors are upstream errors, retried a bounded number of times"},
		{"JSON labelled text/html", "wxlogin", "mislabelled", []fakewx.Step{fakewx.WrongContentType()}, "", 200, "",
			"the answer is decoded whatever its Content-Type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code := uniq(tc.code)
			b.Fake.Script(code, tc.script...)
			r := get(c, edges[tc.pool]+"/v1/openid?code="+code)
			if tc.kind == "" {
				if !r.ok(code) {
					t.Fatalf("got %v, want the code's openid", r)
				}
			} else if r.err != nil || r.status != tc.status || r.body.Error != tc.kind || r.body.Retry != tc.retry {
				t.Errorf("got %v; want %d %s retry=%s (protection: %s)", r, tc.status, tc.kind, tc.retry, tc.protection)
			}
			if r.took > budget+slack {
				t.Errorf("answer after %v, budget %v (protection: %s)", r.took, budget, tc.protection)
			}
			if tc.pool != "refused" && b.Fake.Calls(code) == 0 {
				t.Error("WeChat never saw the code: the case proves nothing")
			}
		})
	}
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// countingWriter counts the bytes an upstream handler managed to send.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

func (w countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// TestUpstreamHugeBodyIsBounded: WeChat (or a proxy) answers 100 MB. The
// worker reads at most wechat.MaxBody of it, hangs up, and reports an
// upstream error; the process never holds the body.
//
// Protection: the LimitReader on the answer in wechat.Code2Session and
// dropping the connection instead of draining it. Without them the
// worker reads all 100 MB per attempt (the upstream's byte count and
// the process's allocations both show it).
//
// Not parallel: it measures the whole process's allocations.
func TestUpstreamHugeBodyIsBounded(t *testing.T) {
	const huge = 100 << 20
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{testbed.App}})
	var sent atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fake.ServeHTTP(countingWriter{w, &sent}, r)
	}))
	t.Cleanup(upstream.Close)
	b := testbed.New(t, testbed.Options{Upstream: upstream})
	b.StartWorker(b.WorkerConfig())
	const budget = 5 * time.Second
	base := serveEdge(t, edgeConn(b), edge.Config{Timeout: budget}, b.Logger)
	c := newClient(t, 4)
	warm := uniq("warm")
	if r := get(c, base+"/v1/openid?code="+warm); !r.ok(warm) {
		t.Fatalf("warm-up: %v", r)
	}

	code := uniq("huge")
	fake.Script(code, fakewx.Huge(huge), fakewx.Huge(huge), fakewx.Huge(huge))
	before := measure()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	r := get(c, base+"/v1/openid?code="+code)
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)

	if r.err != nil || r.status != http.StatusBadGateway || r.kind() != string(protocol.KindUpstream) {
		t.Errorf("got %v, want 502 upstream_error", r)
	}
	if r.took > budget+slack {
		t.Errorf("answer after %v, budget %v", r.took, budget)
	}
	calls := fake.Calls(code)
	if calls == 0 {
		t.Fatal("the huge answer was never asked for")
	}
	// The upstream can push a few MB into socket buffers before it
	// notices the client is gone; far less than the body.
	perCall := sent.Load() / int64(calls)
	allocated := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("%d calls; upstream sent %.1f MB per call of %d MB; process allocated %.1f MB while answering",
		calls, mb(uint64(perCall)), huge>>20, mb(allocated))
	if perCall > huge/4 {
		t.Errorf("upstream sent %.1f MB per call: the worker read far past wechat.MaxBody (%d KiB)", mb(uint64(perCall)), wechat.MaxBody>>10)
	}
	if allocated > 32<<20 {
		t.Errorf("the process allocated %.1f MB answering one request: the body was read", mb(allocated))
	}
	settles(t, "after the huge answer", before, 50, 16<<20)
}
