package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
)

// TestRunServesAndStops runs the edge binary's run against a real NATS
// server with a worker behind it.
func TestRunServesAndStops(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	addr, debug := testbed.FreeAddr(t), testbed.FreeAddr(t)
	t.Setenv("NATS_URL", b.NATS.ClientURL())
	t.Setenv("EDGE_ADDR", addr)
	t.Setenv("DEBUG_ADDR", debug)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard) }()

	base := "http://" + addr
	testbed.Eventually(t, 10*time.Second, "edge ready", func() bool { return testbed.HTTPStatus(base+"/readyz") == 200 })
	if s := testbed.HTTPStatus(base + "/v1/openid?code=edge-run-1"); s != 200 {
		t.Fatalf("status %d", s)
	}
	// The profiler answers on DEBUG_ADDR only, never on the public port.
	if s := testbed.HTTPStatus("http://" + debug + "/debug/pprof/goroutine?debug=1"); s != 200 {
		t.Errorf("profiler on DEBUG_ADDR: status %d", s)
	}
	if s := testbed.HTTPStatus(base + "/debug/pprof/"); s == 200 {
		t.Error("the profiler answers on EDGE_ADDR")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return")
	}
}

// TestStartsWithoutNATS: the edge starts, /readyz is 503, and requests
// get 503 at once rather than hanging.
func TestStartsWithoutNATS(t *testing.T) {
	addr := testbed.FreeAddr(t)
	t.Setenv("NATS_URL", "nats://"+testbed.FreeAddr(t))
	t.Setenv("EDGE_ADDR", addr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard) }()
	base := "http://" + addr
	testbed.Eventually(t, 10*time.Second, "healthz", func() bool { return testbed.HTTPStatus(base+"/healthz") == 200 })
	if s := testbed.HTTPStatus(base + "/readyz"); s != 503 {
		t.Errorf("readyz %d, want 503", s)
	}
	start := time.Now()
	resp, err := http.Get(base + "/v1/openid?code=no-nats")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), `"unavailable"`) || time.Since(start) > time.Second {
		t.Errorf("got %d %s after %v", resp.StatusCode, body, time.Since(start))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestBadSettingStopsAtStart(t *testing.T) {
	t.Setenv("EDGE_MAX_BODY", "lots")
	err := run(context.Background(), nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "EDGE_MAX_BODY") {
		t.Fatalf("got %v", err)
	}
}
