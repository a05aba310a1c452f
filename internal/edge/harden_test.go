package edge_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/metrics"
)

// serveEdge runs edge.ServeListener on a listener of its own and returns
// the base URL; the server stops at cleanup.
func serveEdge(t *testing.T, b *testbed.Bed, cfg edge.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- edge.ServeListener(ctx, cfg, ln, b.Connect("edge", nats.ReconnectBufSize(-1)), b.Logger, edge.ProbeOptions{})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("edge: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// TestRefuseGet: with EDGE_ALLOW_GET=false a code in a URL is refused
// with a typed error before it is read, and POST still works.
func TestRefuseGet(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	b.StartWorker(b.WorkerConfig())
	nc := b.Connect("edge")
	srv := httptest.NewServer(edge.NewServer(edge.Config{Timeout: 3 * time.Second, MaxBody: 4096, RefuseGet: true}, nc, b.Logger))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/v1/openid?code=get-refused-1")
	if err != nil {
		t.Fatal(err)
	}
	r := readReply(t, resp)
	if r.status != http.StatusMethodNotAllowed || r.body.Error != "bad_request" || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET: %d Allow %q %s, want 405 bad_request with Allow: POST", r.status, resp.Header.Get("Allow"), r.raw)
	}
	if r := post(t, srv.URL+"/v1/openid?code=in-url-2", "application/json", `{"code":"get-refused-2"}`); r.status != 400 || r.body.Error != "bad_request" {
		t.Fatalf("POST with a code in the URL: %d %s, want 400 bad_request", r.status, r.raw)
	}
	if r := post(t, srv.URL+"/v1/openid", "application/json", `{"code":"get-refused-3"}`); r.status != 200 || r.openid == "" {
		t.Fatalf("POST: %d %s", r.status, r.raw)
	}
	// The default stays GET-friendly for the seed clients.
	open := httptest.NewServer(edge.NewServer(edge.Config{Timeout: 3 * time.Second, MaxBody: 4096}, nc, b.Logger))
	defer open.Close()
	if r := get(t, open.URL+"/v1/openid?code=get-allowed-4"); r.status != 200 {
		t.Fatalf("GET by default: %d %s", r.status, r.raw)
	}
}

// TestMetricsAddr: with MetricsAddr set, /metrics is served there and
// not on the public port; without, on the public port.
func TestMetricsAddr(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	b.StartWorker(b.WorkerConfig())
	metricsAddr := testbed.FreeAddr(t)
	base := serveEdge(t, b, edge.Config{Timeout: 3 * time.Second, MaxBody: 4096, MetricsAddr: metricsAddr, Registry: metrics.NewRegistry()})
	testbed.Eventually(t, 5*time.Second, "metrics port", func() bool { return testbed.HTTPStatus("http://"+metricsAddr+"/metrics") == 200 })
	if s := testbed.HTTPStatus(base + "/metrics"); s != http.StatusNotFound {
		t.Errorf("public /metrics: %d, want 404", s)
	}
	if s := testbed.HTTPStatus(base + "/healthz"); s != 200 {
		t.Errorf("public /healthz: %d", s)
	}
	if s := testbed.HTTPStatus("http://" + metricsAddr + "/v1/openid?code=x"); s == 200 {
		t.Error("the metrics port answers logins")
	}

	same := serveEdge(t, b, edge.Config{Timeout: 3 * time.Second, MaxBody: 4096})
	if s := testbed.HTTPStatus(same + "/metrics"); s != 200 {
		t.Errorf("/metrics on the public port without MetricsAddr: %d, want 200", s)
	}
}

// TestMaxConns: past the cap, a new client waits (it is not served while
// the held connections stay open), and is served as soon as one closes.
// The server never has more than the cap open at once.
func TestMaxConns(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	b.StartWorker(b.WorkerConfig())
	const maxConns = 3
	base := serveEdge(t, b, edge.Config{Timeout: 3 * time.Second, MaxBody: 4096, MaxConns: maxConns})
	host := strings.TrimPrefix(base, "http://")

	// Hold the cap and one more: each conn makes a keep-alive request
	// and stays open.
	var held []net.Conn
	served := 0
	for i := range maxConns + 2 {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		held = append(held, c)
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		// The first ones must be served; past the cap, a short wait
		// shows they are not.
		wait := 5 * time.Second
		if i >= maxConns {
			wait = 300 * time.Millisecond
		}
		c.SetReadDeadline(time.Now().Add(wait))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			served++
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("conn %d: %v", i, err)
		}
	}
	if served != maxConns {
		t.Fatalf("%d connections served at once, want the cap, %d", served, maxConns)
	}

	// A new client is served once a slot frees.
	result := make(chan int, 1)
	go func() {
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(base + "/healthz")
		if err != nil {
			result <- 0
			return
		}
		resp.Body.Close()
		result <- resp.StatusCode
	}()
	// Three slots free: two for the waiting extra conns, which then stay
	// open idle, and one for the new client.
	for _, c := range held[:3] {
		c.Close()
	}
	select {
	case s := <-result:
		if s != 200 {
			t.Fatalf("new client after slots freed: status %d", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a new client was not served after slots freed")
	}
}
