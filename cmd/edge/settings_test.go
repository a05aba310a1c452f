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

// TestRunRecommendedSettings: the manifests' settings reach the edge:
// EDGE_ALLOW_GET=false refuses GET, and EDGE_METRICS_ADDR moves /metrics
// off the public port.
func TestRunRecommendedSettings(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	addr, metricsAddr := testbed.FreeAddr(t), testbed.FreeAddr(t)
	t.Setenv("NATS_URL", b.NATS.ClientURL())
	t.Setenv("EDGE_ADDR", addr)
	t.Setenv("EDGE_METRICS_ADDR", metricsAddr)
	t.Setenv("EDGE_ALLOW_GET", "false")
	t.Setenv("EDGE_MAX_CONNS", "64")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	base := "http://" + addr
	testbed.Eventually(t, 10*time.Second, "edge ready", func() bool { return testbed.HTTPStatus(base+"/readyz") == 200 })
	if s := testbed.HTTPStatus(base + "/v1/openid?code=edge-get-1"); s != http.StatusMethodNotAllowed {
		t.Errorf("GET with EDGE_ALLOW_GET=false: %d, want 405", s)
	}
	resp, err := http.Post(base+"/v1/openid", "text/plain", strings.NewReader("edge-post-1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("POST: %d", resp.StatusCode)
	}
	if s := testbed.HTTPStatus(base + "/metrics"); s != http.StatusNotFound {
		t.Errorf("/metrics on the public port: %d, want 404", s)
	}
	testbed.Eventually(t, 10*time.Second, "/metrics on EDGE_METRICS_ADDR", func() bool {
		return testbed.HTTPStatus("http://"+metricsAddr+"/metrics") == 200
	})
}
