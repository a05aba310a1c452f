package exchange

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/version"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

// ConfigFrom turns the environment's worker section into a Config.
func ConfigFrom(cfg config.Worker, subjectPrefix string) Config {
	apps := make(map[string]string, len(cfg.Apps))
	for id, secret := range cfg.Apps {
		apps[id] = string(secret)
	}
	return Config{
		Apps:           apps,
		SubjectPrefix:  subjectPrefix,
		HTTPTimeout:    cfg.HTTPTimeout,
		MaxAttempts:    cfg.MaxAttempts,
		Rate:           cfg.Rate,
		Burst:          cfg.Burst,
		Concurrency:    cfg.Concurrency,
		RequestTimeout: cfg.RequestTimeout,
		ResultTTL:      cfg.ResultTTL,
		ClaimTTL:       cfg.ClaimTTL,
		KVReplicas:     cfg.KVReplicas,
		ProbesMayMove:  cfg.MetricsAddrIsDefault(),
		KVMaxBytes:     cfg.KVMaxBytes,
		RateKVMaxBytes: cfg.RateKVMaxBytes,
		StoreKey:       cfg.StoreKeySecret(),
	}
}

// Serve runs a worker on nc (which it owns and closes) against the
// WeChat API at apiBase, with its probes on metricsAddr unless empty,
// until ctx ends and every accepted request has been answered. cmd/worker
// and the all-in-one binary both run the worker through here. The probes
// serve /metrics from cfg.Registry (a new one when nil). opts adjust the
// WeChat client, such as wechat.RootCAs for WX_CA_FILE.
func Serve(ctx context.Context, cfg Config, apiBase, metricsAddr string, nc *nats.Conn, logger *slog.Logger, opts ...wechat.Option) error {
	if cfg.Registry == nil && metricsAddr != "" {
		cfg.Registry = metrics.NewRegistry()
	}
	client, err := wechat.New(apiBase, append([]wechat.Option{wechat.IdleConns(cfg.Concurrency)}, opts...)...)
	if err != nil {
		nc.Close()
		return fmt.Errorf("WX_API_BASE: %w", err)
	}
	w, err := New(cfg, client, logger)
	if err != nil {
		nc.Close()
		return err
	}
	// The probes listen before the worker joins the pool, so that a
	// taken address the operator chose stops it at start.
	var probes net.Listener
	if metricsAddr != "" {
		if probes, err = httpserver.Listen(metricsAddr, cfg.ProbesMayMove, logger); err != nil {
			nc.Close()
			return fmt.Errorf("WORKER_METRICS_ADDR: %w", err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.Run(gctx, nc, version.Version()) })
	if probes != nil {
		g.Go(func() error {
			srv := httpserver.New(w.HealthHandler(), 10*time.Second, logger)
			return httpserver.Serve(gctx, srv, probes, time.Second, logger.With("server", "worker-probes"))
		})
	}
	return g.Wait()
}
