package edge

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/metrics"
)

// Serve runs the edge on addr, asking workers through nc (which it owns
// and closes), until ctx ends and the requests in flight are answered.
// cmd/edge runs the edge through here, and package stack through
// ServeListener. /metrics serves cfg.Registry (a new one when nil), on
// cfg.MetricsAddr when set.
func Serve(ctx context.Context, cfg Config, addr string, nc *nats.Conn, logger *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		nc.Close()
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	return ServeListener(ctx, cfg, ln, nc, logger, ProbeOptions{})
}

// ServeListener is Serve on a listener the caller opened, so that the
// address is known before serving starts, with /readyz following the
// workers as probe says.
func ServeListener(ctx context.Context, cfg Config, ln net.Listener, nc *nats.Conn, logger *slog.Logger, probe ProbeOptions) error {
	defer nc.Close()
	if cfg.Registry == nil {
		cfg.Registry = metrics.NewRegistry()
	}
	maxConns, idle := cfg.MaxConns, cfg.IdleTimeout
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	// /readyz follows the workers: the prober runs as long as the server,
	// and stops before nc closes.
	workers := NewWorkers(nc, cfg.SubjectPrefix, probe, logger)
	pctx, stopProbing := context.WithCancel(ctx)
	probing := make(chan struct{})
	go func() { defer close(probing); workers.Run(pctx) }()
	defer func() { stopProbing(); <-probing }()

	g, gctx := errgroup.WithContext(ctx)
	if cfg.MetricsAddr != "" {
		g.Go(func() error {
			mux := http.NewServeMux()
			mux.Handle("GET /metrics", metrics.Handler(cfg.Registry))
			srv := httpserver.New(mux, 10*time.Second, logger)
			return httpserver.Run(gctx, srv, cfg.MetricsAddr, time.Second, logger.With("server", "edge-metrics"))
		})
	}
	srv := httpserver.New(NewServer(cfg, nc, logger, WithWorkers(workers)), cfg.Timeout+5*time.Second, logger)
	srv.IdleTimeout = idle
	// Past the cap, Accept waits for a slot and new connections queue in
	// the kernel's backlog, to be served as soon as one closes: each open
	// connection costs memory, and a pod's limit must not be reached by
	// holding many idle ones.
	g.Go(func() error {
		return httpserver.Serve(gctx, srv, netutil.LimitListener(ln, maxConns), cfg.Timeout+time.Second, logger.With("server", "edge"))
	})
	return g.Wait()
}

// ConfigFrom turns the environment's edge section into a Config.
func ConfigFrom(cfg config.Edge, subjectPrefix string) Config {
	return Config{
		Timeout: cfg.Timeout, MaxBody: cfg.MaxBody, SubjectPrefix: subjectPrefix,
		ClientLimit: ClientLimit{
			Rate: cfg.ClientRate, Burst: cfg.ClientBurst,
			TrustProxy: cfg.TrustProxy, TrustedProxies: cfg.TrustedProxies,
		},
		RefuseGet:   !cfg.AllowGet,
		MetricsAddr: cfg.MetricsAddr,
		MaxConns:    cfg.MaxConns,
		IdleTimeout: cfg.IdleTimeout,
	}
}
