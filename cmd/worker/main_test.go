package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/testbed"
)

// TestRunServesAndStops runs the worker binary's run against a real NATS
// server and the fake upstream over TCP.
func TestRunServesAndStops(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	probes := testbed.FreeAddr(t)
	t.Setenv("NATS_URL", b.NATS.ClientURL())
	t.Setenv("WX_APPS", testbed.App.AppID+":"+testbed.App.Secret)
	t.Setenv("WX_API_BASE", b.Upstream.URL)
	t.Setenv("WORKER_METRICS_ADDR", probes)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard) }()

	testbed.Eventually(t, 10*time.Second, "worker ready", func() bool { return testbed.HTTPStatus("http://"+probes+"/readyz") == 200 })
	res, e := b.Request(b.Connect("client"), protocol.Request{Code: "worker-run-1"}, 2*time.Second)
	if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, "worker-run-1") {
		t.Fatalf("%v %+v", e, res)
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
