package exchange_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/dedup"
	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/seal"
)

// sharedWorkers starts n workers on a JetStream server and waits until
// each has bound the shared bucket.
func sharedWorkers(t *testing.T, b *testbed.Bed, n int, tune func(*exchange.Config)) []*testbed.Worker {
	t.Helper()
	var ws []*testbed.Worker
	for range n {
		cfg := b.WorkerConfig()
		cfg.ClaimTTL = time.Second
		if tune != nil {
			tune(&cfg)
		}
		w := b.StartWorker(cfg)
		testbed.Eventually(t, 10*time.Second, "bucket bound", func() bool { return w.DedupMode() == "shared" })
		ws = append(ws, w)
	}
	return ws
}

// TestDuplicatesAcrossWorkersCallWeChatOnce: 50 concurrent requests for
// one code, over 3 workers, make one upstream call and get 50 identical
// answers.
func TestDuplicatesAcrossWorkersCallWeChatOnce(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	ws := sharedWorkers(t, b, 3, nil)
	const code = "dup-0712cDoV0cfty22AeloV0daMoV02cDog"
	b.Fake.Script(code, fakewx.Slow(300*time.Millisecond)) // keep the leader busy while duplicates arrive
	nc := b.Connect("client")
	var wg sync.WaitGroup
	answers := make(chan string, 50)
	for range 50 {
		wg.Go(func() {
			res, e := b.Request(nc, protocol.Request{Code: code}, 3*time.Second)
			if e != nil {
				answers <- "error: " + e.Error()
				return
			}
			answers <- res.OpenID + "/" + res.UnionID
		})
	}
	wg.Wait()
	close(answers)
	want := fakewx.OpenID(testbed.App.AppID, code) + "/" + fakewx.UnionID(testbed.App.AppID, code)
	n := 0
	for a := range answers {
		n++
		if a != want {
			t.Errorf("answer %q, want %q", a, want)
		}
	}
	if n != 50 {
		t.Fatalf("%d answers", n)
	}
	if calls := b.Fake.Calls(code); calls != 1 {
		t.Errorf("%d upstream calls, want 1", calls)
	}
	busy := 0
	for _, w := range ws {
		if w.Stats().Requests > 0 {
			busy++
		}
	}
	if busy < 2 {
		t.Errorf("requests reached %d of 3 workers; the test did not spread them", busy)
	}
}

// TestAnswerSurvivesWorkersAndTime: the same code later, on a worker that
// never saw it, is answered from the shared store without a call; once
// WX_RESULT_TTL has passed it is not.
func TestAnswerSurvivesWorkersAndTime(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	first := sharedWorkers(t, b, 1, func(c *exchange.Config) { c.ResultTTL = 3 * time.Second })[0]
	nc := b.Connect("client")
	const code = "later-code"
	res1, e := b.Request(nc, protocol.Request{Code: code}, 2*time.Second)
	if e != nil {
		t.Fatal(e)
	}
	first.Stop()
	second := sharedWorkers(t, b, 1, func(c *exchange.Config) { c.ResultTTL = 3 * time.Second })[0]
	res2, e := b.Request(nc, protocol.Request{Code: code}, 2*time.Second)
	if e != nil || res2 != res1 {
		t.Fatalf("later: %v %+v, want %+v", e, res2, res1)
	}
	if calls := b.Fake.Calls(code); calls != 1 {
		t.Errorf("%d upstream calls, want 1", calls)
	}
	if second.Stats().Deduplicated != 1 {
		t.Errorf("second worker's stats: %+v", second.Stats())
	}

	// After the TTL the bucket has forgotten; a fresh worker asks WeChat,
	// which by then says the code was used.
	second.Stop()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), dedup.BucketName("wxlogin"))
	if err != nil {
		t.Fatal(err)
	}
	key := dedup.Key(testbed.App.Secret, testbed.App.AppID, code)
	testbed.Eventually(t, 10*time.Second, "the answer expires", func() bool {
		_, err := kv.Get(context.Background(), key)
		return err != nil
	})
	sharedWorkers(t, b, 1, func(c *exchange.Config) { c.ResultTTL = 3 * time.Second })
	_, e = b.Request(nc, protocol.Request{Code: code}, 2*time.Second)
	if e == nil || e.Kind != protocol.KindCodeUsed {
		t.Fatalf("after the TTL: %v, want code_used from WeChat", e)
	}
	if calls := b.Fake.Calls(code); calls != 2 {
		t.Errorf("%d upstream calls after the TTL, want 2", calls)
	}
}

// TestReplyLostAfterSuccess: the requester gives up (weak network) after
// WeChat answered but before the reply reached it; its retry gets the
// stored answer, not "code been used".
func TestReplyLostAfterSuccess(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	sharedWorkers(t, b, 2, nil)
	const code = "reply-lost"
	b.Fake.Script(code, fakewx.Slow(500*time.Millisecond))
	nc := b.Connect("client")
	data := []byte(`{"code":"` + code + `"}`)
	msg := natsRequest(data, 3*time.Second) // the worker may work 3s...
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	if _, err := nc.RequestMsgWithContext(ctx, msg); err == nil { // ...but the client waits 150ms
		t.Fatal("the first request was meant to time out")
	}
	// Retry at once: it meets the claim, waits for the answer.
	res, e := b.Request(nc, protocol.Request{Code: code}, 3*time.Second)
	if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, code) {
		t.Fatalf("retry: %v %+v", e, res)
	}
	// And again, later.
	res, e = b.Request(nc, protocol.Request{Code: code}, 3*time.Second)
	if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, code) {
		t.Fatalf("second retry: %v %+v", e, res)
	}
	if calls := b.Fake.Calls(code); calls != 1 {
		t.Errorf("%d upstream calls, want 1", calls)
	}
}

// TestDeadClaimExpires: a worker that claimed a code and died before
// calling WeChat blocks a retry only until the claim expires.
func TestDeadClaimExpires(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	sharedWorkers(t, b, 1, nil)
	const code = "claimed-by-the-dead"
	js, err := jetstream.New(b.Connect("dead-worker"))
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), dedup.BucketName("wxlogin"))
	if err != nil {
		t.Fatal(err)
	}
	key := dedup.Key(testbed.App.Secret, testbed.App.AppID, code)
	// A claim as a worker makes it, MAC'd: one without is not waited for.
	keys, err := seal.Derive(nil, testbed.App.AppID, testbed.App.Secret)
	if err != nil {
		t.Fatal(err)
	}
	claim := keys.Answers.Sign(dedup.BucketName("wxlogin"), key, []byte(`{"claim":true}`))
	if _, err := kv.Create(context.Background(), key, claim, jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, e := b.Request(b.Connect("client"), protocol.Request{Code: code}, 5*time.Second)
	if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, code) {
		t.Fatalf("after a dead claim: %v %+v", e, res)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("waited %v for a 1s claim", took)
	}
	if calls := b.Fake.Calls(code); calls != 1 {
		t.Errorf("%d upstream calls, want 1", calls)
	}
	if strings.Contains(key, code) {
		t.Error("the key holds the raw code")
	}
}

// TestTerminalRememberedTransientNot: 40029 is remembered like a success;
// -1 (busy) is not, so a retry can still succeed.
func TestTerminalRememberedTransientNot(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	sharedWorkers(t, b, 2, func(c *exchange.Config) { c.MaxAttempts = 1 })
	nc := b.Connect("client")
	for range 3 {
		if _, e := b.Request(nc, protocol.Request{Code: "fx-invalid-remembered"}, 2*time.Second); e == nil || e.Kind != protocol.KindInvalidCode || e.WxErrcode != 40029 {
			t.Fatalf("got %v, want invalid_code", e)
		}
	}
	if calls := b.Fake.Calls("fx-invalid-remembered"); calls != 1 {
		t.Errorf("40029: %d upstream calls, want 1", calls)
	}
	const busy = "fx-busy1-transient"
	if _, e := b.Request(nc, protocol.Request{Code: busy}, 2*time.Second); e == nil || e.WxErrcode != -1 {
		t.Fatalf("first: %v, want busy", e)
	}
	res, e := b.Request(nc, protocol.Request{Code: busy}, 2*time.Second)
	if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, busy) {
		t.Fatalf("retry after busy: %v, want success", e)
	}
	if calls := b.Fake.Calls(busy); calls != 2 {
		t.Errorf("busy: %d upstream calls, want 2", calls)
	}
}

// TestWithoutJetStream: a plain NATS server still gets per-worker
// de-duplication, and the worker says so.
func TestWithoutJetStream(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	w := b.StartWorker(b.WorkerConfig())
	testbed.Eventually(t, 5*time.Second, "the no-JetStream warning", func() bool {
		return strings.Contains(b.Logs.String(), "de-duplication is OFF")
	})
	if w.DedupMode() != "local" {
		t.Errorf("mode %q, want local", w.DedupMode())
	}
	const code = "local-dup"
	b.Fake.Script(code, fakewx.Slow(200*time.Millisecond))
	nc := b.Connect("client")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			res, e := b.Request(nc, protocol.Request{Code: code}, 3*time.Second)
			if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, code) {
				errs <- fmt.Errorf("%v %+v", e, res)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, e := b.Request(nc, protocol.Request{Code: code}, time.Second); e != nil {
		t.Errorf("repeat: %v", e)
	}
	if calls := b.Fake.Calls(code); calls != 1 {
		t.Errorf("%d upstream calls, want 1", calls)
	}
	probe := httptest.NewServer(w.HealthHandler())
	defer probe.Close()
	if body := getBody(t, probe.URL+"/readyz"); !strings.Contains(body, "local") {
		t.Errorf("readyz does not say de-duplication is local: %q", body)
	}
}

func natsRequest(data []byte, budget time.Duration) *nats.Msg {
	m := nats.NewMsg(protocol.Subject(protocol.DefaultSubjectPrefix))
	m.Data = data
	m.Header.Set(protocol.HeaderTimeout, strconv.FormatInt(budget.Milliseconds(), 10))
	return m
}

func getBody(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
