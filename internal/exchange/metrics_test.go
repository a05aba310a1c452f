package exchange_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// TestWorkerMetrics: /metrics on the probes' address carries the worker's
// figures with bounded labels, and never a code.
func TestWorkerMetrics(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	cfg := b.WorkerConfig()
	cfg.Registry = metrics.NewRegistry()
	cfg.Rate = 100
	w := b.StartWorker(cfg)
	testbed.Eventually(t, 10*time.Second, "buckets bound", func() bool { return w.DedupMode() == "shared" && w.RateMode() == "shared" })
	nc := b.Connect("client")
	codes := []string{"metrics-ok-CODE", "fx-invalid-CODE", "fx-busy1-CODE"}
	for _, c := range codes {
		b.Request(nc, protocol.Request{Code: c}, 2*time.Second)
	}
	b.Request(nc, protocol.Request{AppID: "wxattacker-chosen-label", Code: "x-CODE"}, time.Second)
	b.Request(nc, protocol.Request{Code: "metrics-ok-CODE"}, time.Second) // answered without WeChat

	probes := httptest.NewServer(w.HealthHandler())
	defer probes.Close()
	body := getBody(t, probes.URL+"/metrics")
	app := testbed.App.AppID
	for _, want := range []string{
		`wxlogin_worker_requests_total{appid="` + app + `",outcome="ok"} 3`,
		`wxlogin_worker_requests_total{appid="` + app + `",outcome="invalid_code"} 1`,
		`wxlogin_worker_requests_total{appid="other",outcome="unknown_app"} 1`,
		`wxlogin_upstream_calls_total{appid="` + app + `",errcode="-1"} 1`,
		`wxlogin_upstream_calls_total{appid="` + app + `",errcode="40029"} 1`,
		`wxlogin_upstream_calls_total{appid="` + app + `",errcode="0"} 2`,
		`wxlogin_upstream_retries_total{appid="` + app + `"} 1`,
		`wxlogin_dedup_answers_total{source="worker_cache"} 1`,
		`wxlogin_ratelimit_effective_rate{appid="` + app + `"} 100`,
		`wxlogin_worker_in_flight 0`,
		`wxlogin_nats_connected{component="worker"} 1`,
		`wxlogin_dedup_shared 1`,
		`wxlogin_ratelimit_shared 1`,
		`wxlogin_upstream_attempt_duration_seconds_count{appid="` + app + `"} 4`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, leak := range []string{"CODE", "wxattacker", testbed.App.Secret} {
		if strings.Contains(body, leak) {
			t.Errorf("metrics contain %q", leak)
		}
	}
}
