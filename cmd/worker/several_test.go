package main

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// defaultProbes is WORKER_METRICS_ADDR's default.
const defaultProbes = ":9091"

// holdDefaultProbes makes sure the default probe port is taken while the
// test runs: by the test itself, or already by someone else, which is
// the case under test all the same.
func holdDefaultProbes(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", defaultProbes)
	switch {
	case err == nil:
		t.Cleanup(func() { ln.Close() })
	case errors.Is(err, syscall.EADDRINUSE):
	default:
		t.Fatal(err)
	}
}

// TestSeveralWorkersOnOneHost: three workers started with the default
// environment on a host where the default probe port is taken all join
// the pool and serve.
func TestSeveralWorkersOnOneHost(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	holdDefaultProbes(t)
	t.Setenv("NATS_URL", b.NATS.ClientURL())
	t.Setenv("WX_APPS", testbed.App.AppID+":"+testbed.App.Secret)
	t.Setenv("WX_API_BASE", b.Upstream.URL)
	ctx, cancel := context.WithCancel(context.Background())
	const n = 3
	done := make(chan error, n)
	for range n {
		go func() { done <- run(ctx, nil, io.Discard) }()
	}
	running := n
	t.Cleanup(func() {
		cancel()
		for range running {
			if err := <-done; err != nil {
				t.Errorf("worker: %v", err)
			}
		}
	})

	nc := b.Connect("client")
	testbed.Eventually(t, 15*time.Second, "three workers in the pool", func() bool {
		select {
		case err := <-done:
			running--
			t.Fatalf("a worker exited: %v", err)
		default:
		}
		return countWorkers(t, nc) == n
	})
	for i := range 6 {
		code := "several-" + string(rune('a'+i))
		res, e := b.Request(nc, protocol.Request{Code: code}, 3*time.Second)
		if e != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, code) {
			t.Fatalf("%s: %v %+v", code, e, res)
		}
	}
}

// countWorkers asks the micro service's discovery who is there: every
// worker answers $SRV.PING.wxlogin.
func countWorkers(t *testing.T, nc *nats.Conn) int {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest("$SRV.PING.wxlogin", inbox, nil); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := sub.NextMsg(300 * time.Millisecond); err != nil {
			return n
		}
		n++
	}
}

// TestExplicitProbeAddrTaken: an address the operator set that is
// already taken stops the worker at start, naming the variable.
func TestExplicitProbeAddrTaken(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NATS_URL", b.NATS.ClientURL())
	t.Setenv("WX_APPS", testbed.App.AppID+":"+testbed.App.Secret)
	t.Setenv("WX_API_BASE", b.Upstream.URL)
	t.Setenv("WORKER_METRICS_ADDR", ln.Addr().String())
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), nil, io.Discard) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "WORKER_METRICS_ADDR") || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("got %v, want WORKER_METRICS_ADDR ... address already in use", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the worker started on a taken address the operator chose")
	}
}
