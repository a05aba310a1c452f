package edge_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/embednats"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

type httpReply struct {
	status     int
	retryAfter string
	openid     string
	unionid    string
	body       protocol.ErrorBody
	raw        string
}

func get(t *testing.T, u string) httpReply {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	return readReply(t, resp)
}

func post(t *testing.T, u, contentType, body string) httpReply {
	t.Helper()
	resp, err := http.Post(u, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return readReply(t, resp)
}

func readReply(t *testing.T, resp *http.Response) httpReply {
	t.Helper()
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := httpReply{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), raw: string(raw)}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var ok protocol.Result
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, &ok); err != nil {
			t.Fatalf("200 body %q: %v", raw, err)
		}
		r.openid, r.unionid = ok.OpenID, ok.UnionID
	} else if err := json.Unmarshal(raw, &r.body); err != nil {
		t.Fatalf("error body %q: %v", raw, err)
	}
	if strings.Contains(string(raw), "session_key") {
		t.Errorf("reply carries a session_key: %s", raw)
	}
	return r
}

// TestKindsOverHTTP checks the contract table through the edge, over
// real sockets: HTTP client → edge → NATS → worker → fake WeChat.
func TestKindsOverHTTP(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	for _, c := range testbed.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			budget := c.Budget
			if budget == 0 {
				budget = 3 * time.Second
			}
			base := b.StartEdge(budget)
			if c.Prepare != nil {
				c.Prepare(b, c)
			}
			q := url.Values{"code": {c.Code}}
			if c.AppID != "" {
				q.Set("appid", c.AppID)
			}
			start := time.Now()
			r := get(t, base+"/v1/openid?"+q.Encode())
			if took := time.Since(start); took > budget+500*time.Millisecond {
				t.Errorf("answer took %v, budget %v", took, budget)
			}
			appid := c.AppID
			if appid == "" {
				appid = testbed.App.AppID
			}
			if c.Kind == "" {
				if r.status != 200 || r.openid != fakewx.OpenID(appid, c.Code) || r.unionid != fakewx.UnionID(appid, c.Code) {
					t.Fatalf("got %d %s, want the code's openid", r.status, r.raw)
				}
			} else {
				if r.status != c.Status || r.body.Error != c.Kind || r.body.Retry != c.Retry || r.body.WxErrcode != c.Errcode || r.body.Message == "" {
					t.Errorf("got %d %s; want %d %s retry=%s errcode=%d", r.status, r.raw, c.Status, c.Kind, c.Retry, c.Errcode)
				}
				if c.RetryAfter && r.retryAfter == "" {
					t.Error("no Retry-After header")
				}
				if c.Errcode == 0 && strings.Contains(r.raw, "wx_errcode") {
					t.Errorf("wx_errcode present though WeChat gave none: %s", r.raw)
				}
			}
			if c.Calls >= 0 && b.Fake.Calls(c.Code) != c.Calls {
				t.Errorf("upstream calls %d, want %d", b.Fake.Calls(c.Code), c.Calls)
			}
		})
	}
}

// TestRequestShapes: the shapes the seed clients send all work.
func TestRequestShapes(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	base := b.StartEdge(3*time.Second) + "/v1/openid"
	app := testbed.App.AppID
	for _, s := range []struct {
		name, code string
		do         func(code string) httpReply
	}{
		{"GET query", "shape-get", func(c string) httpReply { return get(t, base+"?code="+c+"&appid="+app) }},
		{"POST json", "shape-json", func(c string) httpReply {
			return post(t, base, "application/json", `{"code":"`+c+`","appid":"`+app+`"}`)
		}},
		{"POST json without appid", "shape-json-noapp", func(c string) httpReply {
			return post(t, base, "application/json; charset=utf-8", `{"code":"`+c+`"}`)
		}},
		{"POST form", "shape-form", func(c string) httpReply {
			return post(t, base, "application/x-www-form-urlencoded", "code="+c+"&appid="+app)
		}},
		{"POST text/plain", "shape-text", func(c string) httpReply { return post(t, base+"?appid="+app, "text/plain", c+"\n") }},
		{"POST raw code labelled json (wx.request with a string)", "shape-raw-json", func(c string) httpReply {
			return post(t, base, "application/json", c)
		}},
	} {
		t.Run(s.name, func(t *testing.T) {
			r := s.do(s.code)
			if r.status != 200 || r.openid != fakewx.OpenID(app, s.code) {
				t.Fatalf("got %d %s", r.status, r.raw)
			}
		})
	}
	for _, s := range []struct {
		name        string
		do          func() httpReply
		status      int
		notReaching string
	}{
		{"oversized body", func() httpReply {
			return post(t, base, "application/json", `{"code":"`+strings.Repeat("a", 5000)+`"}`)
		}, 413, ""},
		{"unsupported type", func() httpReply { return post(t, base, "application/xml", "<code>x</code>") }, 415, ""},
		{"wrong method", func() httpReply {
			req, _ := http.NewRequest(http.MethodDelete, base+"?code=abc", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			return readReply(t, resp)
		}, 405, ""},
		{"invalid utf-8", func() httpReply { return get(t, base+"?code=abc%FF%FEdef") }, 400, "abc\xff\xfedef"},
		{"control character", func() httpReply { return get(t, base+"?code=abc%0Adef") }, 400, "abc\ndef"},
	} {
		t.Run(s.name, func(t *testing.T) {
			r := s.do()
			if r.status != s.status || r.body.Error != protocol.KindBadRequest {
				t.Fatalf("got %d %s, want %d bad_request", r.status, r.raw, s.status)
			}
			if s.notReaching != "" && b.Fake.Calls(s.notReaching) != 0 {
				t.Error("a refused code reached WeChat")
			}
		})
	}
	if n := b.Fake.TotalCalls(); n != 6 {
		t.Errorf("upstream saw %d calls, want 6 (refused requests must not reach it)", n)
	}
}

// TestNoWorkerIsFast: with nobody on the subject, 503 comes at once, not
// after EDGE_TIMEOUT.
func TestNoWorkerIsFast(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	base := b.StartEdge(5 * time.Second)
	start := time.Now()
	r := get(t, base+"/v1/openid?code=nobody-home")
	if r.status != 503 || r.body.Error != protocol.KindUnavailable || r.retryAfter == "" {
		t.Fatalf("got %d %s, want 503 unavailable with Retry-After", r.status, r.raw)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("no-responders took %v; the edge waited for its timeout", took)
	}
}

// TestSilentWorkerIsTimeout: a responder that never answers costs the
// client EDGE_TIMEOUT and a 504, no more.
func TestSilentWorkerIsTimeout(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	silent := b.Connect("silent")
	if _, err := silent.QueueSubscribe(protocol.Subject("wxlogin"), protocol.QueueGroup, func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	silent.Flush()
	base := b.StartEdge(300 * time.Millisecond)
	start := time.Now()
	r := get(t, base+"/v1/openid?code=silence")
	took := time.Since(start)
	if r.status != 504 || r.body.Error != protocol.KindTimeout || r.body.Retry != protocol.RetrySameCode {
		t.Fatalf("got %d %s, want 504 timeout", r.status, r.raw)
	}
	if took < 250*time.Millisecond || took > time.Second {
		t.Errorf("timeout after %v, EDGE_TIMEOUT 300ms", took)
	}
}

// TestNATSOutageAndRecovery: while NATS is away the edge answers 503 at
// once and /readyz says 503; when it is back, edge and worker reconnect
// by themselves.
func TestNATSOutageAndRecovery(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	b.StartWorker(b.WorkerConfig())
	base := b.StartEdge(3 * time.Second)
	if r := get(t, base+"/v1/openid?code=before-outage"); r.status != 200 {
		t.Fatalf("before: %d %s", r.status, r.raw)
	}
	port := b.NATS.Addr().(*net.TCPAddr).Port
	b.NATS.Shutdown()
	b.NATS.WaitForShutdown()

	testbed.Eventually(t, 5*time.Second, "readyz 503", func() bool { return status(t, base+"/readyz") == 503 })
	start := time.Now()
	r := get(t, base+"/v1/openid?code=during-outage")
	if r.status != 503 || r.body.Error != protocol.KindUnavailable {
		t.Fatalf("during: %d %s", r.status, r.raw)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("503 took %v during the outage", took)
	}
	if status(t, base+"/healthz") != 200 {
		t.Error("healthz must stay 200: the process is alive")
	}

	s, err := embednats.Start(embednats.Options{Port: port}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	testbed.Eventually(t, 10*time.Second, "readyz 200 after restart", func() bool { return status(t, base+"/readyz") == 200 })
	testbed.Eventually(t, 10*time.Second, "an openid after the restart", func() bool {
		return get(t, base+"/v1/openid?code=after-outage-"+time.Now().Format("150405.000000")).status == 200
	})
}

// TestInFlightFailFastOnNATSLoss: a request waiting for its reply when the
// edge's NATS connection drops gets 503 at once, not 504 at EDGE_TIMEOUT:
// its reply could only have come over the lost connection.
func TestInFlightFailFastOnNATSLoss(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	cfg := b.WorkerConfig()
	// The held exchange ends after one attempt: the test's cleanup waits
	// for it.
	cfg.MaxAttempts, cfg.HTTPTimeout = 1, 3*time.Second
	b.StartWorker(cfg)
	const timeout = 20 * time.Second
	base := b.StartEdge(timeout)

	type result struct {
		r    httpReply
		took time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		// fx-hang: WeChat never answers, so the worker holds the request.
		r := get(t, base+"/v1/openid?code=fx-hang-inflight")
		done <- result{r, time.Since(start)}
	}()
	testbed.Eventually(t, 10*time.Second, "the exchange reached WeChat", func() bool {
		return b.Fake.Calls("fx-hang-inflight") > 0
	})
	b.NATS.Shutdown()

	select {
	case res := <-done:
		if res.r.status != 503 || res.r.body.Error != protocol.KindUnavailable || res.r.retryAfter == "" {
			t.Fatalf("got %d %s, want 503 unavailable with Retry-After", res.r.status, res.r.raw)
		}
		t.Logf("503 after %v", res.took)
		if res.r.body.Retry != protocol.RetrySameCode {
			t.Errorf("retry hint %q, want %q: the retry may find the answer stored", res.r.body.Retry, protocol.RetrySameCode)
		}
	case <-time.After(timeout / 2):
		t.Fatalf("no reply %v after NATS went away; EDGE_TIMEOUT is %v", timeout/2, timeout)
	}
}

func status(t *testing.T, u string) int {
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestEdgeMetrics: /metrics counts requests by outcome and the NATS
// connection state.
func TestEdgeMetrics(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	reg := metrics.NewRegistry()
	nc := b.Connect("edge-metrics", nats.ReconnectBufSize(-1))
	srv := httptest.NewServer(edge.NewServer(edge.Config{Timeout: 2 * time.Second, MaxBody: 4096, Registry: reg}, nc, b.Logger))
	defer srv.Close()
	get(t, srv.URL+"/v1/openid?code=metrics-CODE-1")
	get(t, srv.URL+"/v1/openid?code=fx-invalid-CODE-2")
	get(t, srv.URL+"/v1/openid?code=bad%20CODE")
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(raw)
	for _, want := range []string{
		`wxlogin_edge_requests_total{outcome="ok"} 1`,
		`wxlogin_edge_requests_total{outcome="invalid_code"} 1`,
		`wxlogin_edge_requests_total{outcome="bad_request"} 1`,
		`wxlogin_edge_request_duration_seconds_count{outcome="ok"} 1`,
		`wxlogin_nats_connected{component="edge"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, "CODE") {
		t.Error("a code reached the metrics")
	}
}
