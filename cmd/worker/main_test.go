package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// TestRunServesAndStops runs the worker binary's run against a real NATS
// server and the fake upstream over TCP.
func TestRunServesAndStops(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	probes, debug := testbed.FreeAddr(t), testbed.FreeAddr(t)
	t.Setenv("NATS_URL", b.NATS.ClientURL())
	t.Setenv("WX_APPS", testbed.App.AppID+":"+testbed.App.Secret)
	t.Setenv("WX_API_BASE", b.Upstream.URL)
	t.Setenv("WORKER_METRICS_ADDR", probes)
	t.Setenv("DEBUG_ADDR", debug)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard) }()

	testbed.Eventually(t, 10*time.Second, "worker ready", func() bool { return testbed.HTTPStatus("http://"+probes+"/readyz") == 200 })
	res, e := b.Request(b.Connect("client"), protocol.Request{Code: "worker-run-1"}, 2*time.Second)
	if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, "worker-run-1") {
		t.Fatalf("%v %+v", e, res)
	}
	if s := testbed.HTTPStatus("http://" + debug + "/debug/pprof/heap"); s != 200 {
		t.Errorf("profiler on DEBUG_ADDR: status %d", s)
	}
	if s := testbed.HTTPStatus("http://" + probes + "/debug/pprof/"); s == 200 {
		t.Error("the profiler answers on WORKER_METRICS_ADDR")
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

// TestRunTrustsWXCAFile runs the worker against the fake over TLS,
// trusting its certificate through WX_CA_FILE, as behind an intercepting
// proxy or a private gateway: the exchange succeeds, over HTTP/2.
func TestRunTrustsWXCAFile(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	cert, err := fakewx.NewTLSCert()
	if err != nil {
		t.Fatal(err)
	}
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{testbed.App}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(cert.Listener(ln))
	t.Cleanup(func() { srv.Close() })
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, cert.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Setenv("NATS_URL", b.NATS.ClientURL())
	t.Setenv("WX_APPS", testbed.App.AppID+":"+testbed.App.Secret)
	t.Setenv("WX_API_BASE", "https://"+ln.Addr().String())
	t.Setenv("WX_CA_FILE", caFile)
	t.Setenv("WORKER_METRICS_ADDR", "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	nc := b.Connect("client")
	var res protocol.Result
	var e *protocol.Error
	// The worker answers once it has subscribed; until then, no responders.
	testbed.Eventually(t, 10*time.Second, "an answer", func() bool {
		res, e = b.Request(nc, protocol.Request{Code: "worker-tls-1"}, 2*time.Second)
		return e == nil || e.Kind != protocol.KindUnavailable
	})
	if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, "worker-tls-1") {
		t.Fatalf("%v %+v", e, res)
	}
	if h1, h2 := fake.CallsByProtocol(); h1 != 0 || h2 != 1 {
		t.Errorf("calls by protocol: HTTP/1.x %d, HTTP/2 %d; want 0, 1", h1, h2)
	}
}

func TestBadCAFileStopsAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, []byte("TOPSECRET, not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WX_APPS", "wxa:secret")
	t.Setenv("WX_CA_FILE", path)
	err := run(context.Background(), nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "WX_CA_FILE") || strings.Contains(err.Error(), "TOPSECRET") {
		t.Fatalf("got %v, want an error naming WX_CA_FILE without the file's content", err)
	}
}

// TestStartsWithoutNATS: an unreachable server is not a bad setting; the
// worker starts, says it is not ready, and keeps trying.
func TestStartsWithoutNATS(t *testing.T) {
	probes := testbed.FreeAddr(t)
	t.Setenv("NATS_URL", "nats://"+testbed.FreeAddr(t))
	t.Setenv("WX_APPS", "wxa:secret")
	t.Setenv("WORKER_METRICS_ADDR", probes)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard) }()
	testbed.Eventually(t, 10*time.Second, "healthz", func() bool { return testbed.HTTPStatus("http://"+probes+"/healthz") == 200 })
	if s := testbed.HTTPStatus("http://" + probes + "/readyz"); s != 503 {
		t.Errorf("readyz %d without NATS, want 503", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestMissingAppsStopsAtStart(t *testing.T) {
	t.Setenv("WX_APPS", "")
	err := run(context.Background(), nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "WX_APPS") {
		t.Fatalf("got %v, want an error naming WX_APPS", err)
	}
	t.Setenv("WX_APPS", "wxa:TOPSECRET,broken")
	err = run(context.Background(), nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "WX_APPS") || strings.Contains(err.Error(), "TOPSECRET") {
		t.Fatalf("got %v, want an error naming WX_APPS without the secret", err)
	}
}
