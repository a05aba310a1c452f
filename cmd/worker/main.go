// Command worker is the exchange worker: a NATS micro service ("wxlogin")
// that holds the AppSecrets and turns login codes into openids. Run as
// many as you need; they share one queue group. Configured from the
// environment: worker -h lists the variables.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/natsconn"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	var cfg config.WorkerConfig
	if config.WantsHelp(args) {
		return config.Usage(stderr, &cfg)
	}
	if err := config.Load(&cfg); err != nil {
		return err
	}
	logger := logging.New(stderr, cfg.Level, cfg.Format)
	logger.Info("worker starting", "apps", cfg.Apps, "api", cfg.APIBase, "ca_file", cfg.CAFile, "nats", natsconn.Redact(cfg.URL))

	tokens, err := exchange.LoadTokens(cfg.Tokens, false, "", logger)
	if err != nil {
		return err
	}
	wcfg := exchange.ConfigFrom(cfg.Worker, cfg.SubjectPrefix)
	wcfg.Tokens = tokens

	nc, err := natsconn.Connect(cfg.NATS, "wxlogin-worker", logger)
	if err != nil {
		return err
	}
	// WX_CA_FILE's roots, or nil for the system's.
	roots := wechat.RootCAs(cfg.RootCAs())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return httpserver.Debug(gctx, cfg.DebugAddr, logger) })
	g.Go(func() error {
		return exchange.Serve(gctx, wcfg, cfg.APIBase, cfg.MetricsAddr, nc, logger, roots)
	})
	return g.Wait()
}
