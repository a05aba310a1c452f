package stack_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/embednats"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/stack"
)

var quiet = slog.New(slog.DiscardHandler)

func demoWorker() exchange.Config {
	return exchange.Config{
		Apps:        map[string]string{fakewx.DemoAppID: fakewx.DemoSecret},
		HTTPTimeout: 2 * time.Second, MaxAttempts: 1, Concurrency: 16, RequestTimeout: 5 * time.Second,
	}
}

// options is a whole stack on loopback: embedded NATS with JetStream in
// dir, the fake (the demo one when nil), two workers and an edge.
func options(dir string, fake *fakewx.Server) stack.Options {
	return stack.Options{
		Logger:   quiet,
		Embedded: embednats.Options{Port: -1, JetStream: true, StoreDir: dir},
		Fake:     fake,
		Workers:  2,
		Worker:   demoWorker(),
		Edge:     &stack.EdgeOptions{Addr: "127.0.0.1:0", Config: edge.Config{Timeout: 5 * time.Second, MaxBody: 4096}},
	}
}

func openid(t *testing.T, base, code string) (int, string) {
	t.Helper()
	resp, err := http.Get(base + "/v1/openid?code=" + code)
	if err != nil {
		t.Error(err)
		return 0, ""
	}
	defer resp.Body.Close()
	var res protocol.Result
	body, _ := io.ReadAll(resp.Body)
	json.Unmarshal(body, &res)
	return resp.StatusCode, res.OpenID
}

// TestStopOrder: a request in flight when the stack stops still gets its
// answer: the edge waits for its reply and the worker for WeChat, and
// NATS, which carries the reply, stops only after both.
func TestStopOrder(t *testing.T) {
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{fakewx.DemoApp()}})
	st, err := stack.Start(context.Background(), options(t.TempDir(), fake))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(st.Workers()); n != 2 {
		t.Fatalf("%d workers, want 2", n)
	}
	if status, id := openid(t, st.EdgeURL(), "stack-first"); status != 200 || id != fakewx.OpenID(fakewx.DemoAppID, "stack-first") {
		t.Fatalf("got %d %q", status, id)
	}

	const code = "fx-slow500-stack-inflight"
	type answer struct {
		status int
		openid string
	}
	done := make(chan answer, 1)
	go func() {
		status, id := openid(t, st.EdgeURL(), code)
		done <- answer{status, id}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for fake.Calls(code) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request did not reach the upstream")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := st.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	if a := <-done; a.status != 200 || a.openid != fakewx.OpenID(fakewx.DemoAppID, code) {
		t.Fatalf("the request in flight at stop got %d %q, want its openid", a.status, a.openid)
	}
	if _, err := http.Get(st.EdgeURL() + "/healthz"); err == nil {
		t.Error("the edge still answers after Stop")
	}
	if st.NATS().Running() {
		t.Error("the embedded server still runs after Stop")
	}
}

// TestWaitStopsWithContext: Wait (what Run does after Start) serves until
// Start's context ends, then stops everything and removes the store
// directory the stack made.
func TestWaitStopsWithContext(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir()) // where the stack makes its store dir
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := stack.Start(ctx, options("", nil))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- st.Wait() }()

	base := st.EdgeURL()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if status, _ := openid(t, base, "stack-run"); status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stack did not answer within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "wxlogin-nats-*"))
	if len(dirs) != 1 {
		t.Fatalf("store dirs %v, want one", dirs)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after cancel")
	}
	if _, err := os.Stat(dirs[0]); !os.IsNotExist(err) {
		t.Errorf("store dir %s left behind: %v", dirs[0], err)
	}
}

// TestStartFailsCleanly: a part that cannot start fails Start with the
// address it could not use, and what started before it is stopped.
func TestStartFailsCleanly(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	o := options(t.TempDir(), nil)
	o.Edge.Addr = held.Addr().String()
	nats, err := embednats.Start(embednats.Options{Port: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nats.Shutdown()
	o.NATSURL = nats.ClientURL()
	o.Worker.NoDedup = true
	_, err = stack.Start(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), held.Addr().String()) {
		t.Fatalf("got %v, want an error naming %s", err, held.Addr())
	}
	deadline := time.Now().Add(5 * time.Second)
	for nats.NumClients() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections left open by the failed start", nats.NumClients())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
