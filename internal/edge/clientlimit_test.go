package edge_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// startLimitedEdge serves an edge with a client limit over real HTTP.
func startLimitedEdge(t *testing.T, b *testbed.Bed, cl edge.ClientLimit) string {
	t.Helper()
	nc := b.Connect("edge")
	srv := httptest.NewServer(edge.NewServer(edge.Config{Timeout: 3 * time.Second, MaxBody: 4096, ClientLimit: cl}, nc, b.Logger))
	t.Cleanup(srv.Close)
	return srv.URL
}

func getWithXFF(t *testing.T, u, xff string) httpReply {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return readReply(t, resp)
}

// TestClientLimitOverHTTP: past its burst a client gets 429 rate_limited
// with Retry-After, before its request reaches a worker or WeChat; the
// probes are never limited.
func TestClientLimitOverHTTP(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	b.StartWorker(b.WorkerConfig())
	// 0.5/s: the second token is 2s away, so the test cannot earn one.
	base := startLimitedEdge(t, b, edge.ClientLimit{Rate: 0.5, Burst: 2})
	for i := range 2 {
		code := fmt.Sprintf("limited-ok-%d", i)
		if r := get(t, base+"/v1/openid?code="+code); r.status != 200 || r.openid != fakewx.OpenID(testbed.App.AppID, code) {
			t.Fatalf("request %d within the burst: %d %s", i+1, r.status, r.raw)
		}
	}
	r := get(t, base+"/v1/openid?code=limited-over")
	if r.status != http.StatusTooManyRequests || r.body.Error != protocol.KindRateLimited ||
		r.body.Retry != protocol.RetrySameCode || r.body.Message == "" {
		t.Fatalf("over the limit: %d %s, want 429 rate_limited same_code", r.status, r.raw)
	}
	if s, err := strconv.Atoi(r.retryAfter); err != nil || s < 1 || s > 2 {
		t.Errorf("Retry-After %q, want 1 or 2 seconds", r.retryAfter)
	}
	if n := b.Fake.Calls("limited-over"); n != 0 {
		t.Errorf("a refused request reached WeChat %d times", n)
	}
	for _, probe := range []string{"/healthz", "/readyz"} {
		for range 5 {
			if s := status(t, base+probe); s != 200 {
				t.Fatalf("%s: %d; probes must not be limited", probe, s)
			}
		}
	}
}

// TestClientLimitOffByDefault: the zero ClientLimit lets everything
// through.
func TestClientLimitOffByDefault(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	b.StartWorker(b.WorkerConfig())
	base := startLimitedEdge(t, b, edge.ClientLimit{})
	for i := range 50 {
		if r := get(t, base+fmt.Sprintf("/v1/openid?code=unlimited-%d", i)); r.status != 200 {
			t.Fatalf("request %d: %d %s", i+1, r.status, r.raw)
		}
	}
}

// TestClientLimitTrustProxy: behind a trusted proxy each forwarded client
// has its own bucket; without trust, a forged X-Forwarded-For does not
// earn a fresh one.
func TestClientLimitTrustProxy(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	b.StartWorker(b.WorkerConfig())

	t.Run("trusted", func(t *testing.T) {
		base := startLimitedEdge(t, b, edge.ClientLimit{Rate: 0.5, Burst: 1, TrustProxy: true,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}})
		if r := getWithXFF(t, base+"/v1/openid?code=xff-a-1", "198.51.100.1"); r.status != 200 {
			t.Fatalf("client a: %d %s", r.status, r.raw)
		}
		if r := getWithXFF(t, base+"/v1/openid?code=xff-a-2", "198.51.100.1, 10.0.0.1"); r.status != 429 {
			t.Fatalf("client a again: %d %s, want 429", r.status, r.raw)
		}
		// What a client writes left of the hop its proxy appended
		// does not earn it a fresh bucket.
		if r := getWithXFF(t, base+"/v1/openid?code=xff-a-3", "192.0.2.200, 198.51.100.1"); r.status != 429 {
			t.Fatalf("client a again: %d %s, want 429", r.status, r.raw)
		}
		if r := getWithXFF(t, base+"/v1/openid?code=xff-b-1", "198.51.100.2"); r.status != 200 {
			t.Fatalf("client b shares a's bucket: %d %s", r.status, r.raw)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		base := startLimitedEdge(t, b, edge.ClientLimit{Rate: 0.5, Burst: 1})
		if r := getWithXFF(t, base+"/v1/openid?code=noxff-1", "198.51.100.1"); r.status != 200 {
			t.Fatalf("first: %d %s", r.status, r.raw)
		}
		if r := getWithXFF(t, base+"/v1/openid?code=noxff-2", "198.51.100.77"); r.status != 429 {
			t.Fatalf("a forged X-Forwarded-For got a fresh bucket: %d %s", r.status, r.raw)
		}
	})
}
