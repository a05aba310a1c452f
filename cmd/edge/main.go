// Command edge is wxlogin's HTTP front: it validates login codes and asks
// the worker pool for openids over NATS. It holds no WeChat secret.
// Configured from the environment: edge -h lists the variables.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/natsconn"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "edge:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	var cfg config.EdgeConfig
	if config.WantsHelp(args) {
		return config.Usage(stderr, &cfg)
	}
	if err := config.Load(&cfg); err != nil {
		return err
	}
	logger := logging.New(stderr, cfg.Level, cfg.Format)
	logger.Info("edge starting", "addr", cfg.Addr, "timeout", cfg.Timeout, "nats", natsconn.Redact(cfg.URL))

	// No reconnect buffer: while NATS is away, requests fail fast with 503
	// instead of waiting in a buffer for the deadline.
	nc, err := natsconn.Connect(cfg.NATS, "wxlogin-edge", logger, nats.ReconnectBufSize(-1))
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return httpserver.Debug(gctx, cfg.DebugAddr, logger) })
	g.Go(func() error {
		return edge.Serve(gctx, edge.ConfigFrom(cfg.Edge, cfg.SubjectPrefix), cfg.Addr, nc, logger)
	})
	return g.Wait()
}
