package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/wxlogin/wxlogin/internal/dev/natstest"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

const panicSecret = "SECRET-panic-5e1f"

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRecoverPanics: a handler's panic becomes the contract's 500
// internal without detail, the log names where it happened but not the
// panic's value, and the server goes on serving.
func TestRecoverPanics(t *testing.T) {
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	mux := http.NewServeMux()
	mux.HandleFunc("/boom", func(http.ResponseWriter, *http.Request) { panic("code " + panicSecret) })
	mux.HandleFunc("/late", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("partial"))
		panic(panicSecret)
	})
	mux.HandleFunc("/ok", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("fine")) })
	srv := httptest.NewServer(recoverPanics(mux, logger))
	defer srv.Close()

	for range 3 {
		resp, err := http.Get(srv.URL + "/boom")
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var body protocol.ErrorBody
		if resp.StatusCode != 500 || json.Unmarshal(raw, &body) != nil || body.Error != "internal" {
			t.Fatalf("panic answered %d %s, want 500 internal", resp.StatusCode, raw)
		}
		if strings.Contains(string(raw), panicSecret) || strings.Contains(string(raw), "goroutine") {
			t.Errorf("the reply shows detail: %s", raw)
		}
	}
	// A reply already begun is not followed by a second one.
	resp, err := http.Get(srv.URL + "/late")
	if err == nil {
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.Contains(string(raw), "internal") {
			t.Errorf("late panic: %d %q, want the begun reply only", resp.StatusCode, raw)
		}
	}
	if s := statusOf(t, srv.URL+"/ok"); s != 200 {
		t.Fatalf("after the panics: %d", s)
	}
	out := logs.String()
	if !strings.Contains(out, "http handler panicked") || !strings.Contains(out, "path=/boom") {
		t.Errorf("the panic was not logged: %s", out)
	}
	if strings.Contains(out, panicSecret) {
		t.Errorf("the log shows the panic's value: %s", out)
	}
}

func statusOf(t *testing.T, u string) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// panicHandler is a slog handler that panics on the edge's per-request
// log line: a panic inside the edge's own request path.
type panicHandler struct{ slog.Handler }

func (h panicHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h panicHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "request" {
		panic(panicSecret)
	}
	return h.Handler.Handle(ctx, r)
}

// TestServerRecoversPanics: the edge's handler, as NewServer builds it,
// carries the recovery: a panic in its request path is logged and the
// edge keeps serving.
func TestServerRecoversPanics(t *testing.T) {
	ns := natstest.Start(t, true)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var logs syncBuffer
	logger := slog.New(panicHandler{slog.NewTextHandler(&logs, nil)})
	srv := httptest.NewServer(NewServer(Config{Timeout: time.Second, MaxBody: 4096}, nc, logger))
	defer srv.Close()
	for range 2 {
		// No worker: 503 unavailable, then the log line panics.
		if s := statusOf(t, srv.URL+"/v1/openid?code=panic-path-1"); s != 503 {
			t.Fatalf("status %d, want the reply written before the panic (503)", s)
		}
	}
	if s := statusOf(t, srv.URL+"/healthz"); s != 200 {
		t.Fatalf("healthz after panics: %d", s)
	}
	if out := logs.String(); !strings.Contains(out, "http handler panicked") || strings.Contains(out, panicSecret) {
		t.Errorf("want the panic logged without its value: %s", out)
	}
}
