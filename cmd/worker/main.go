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

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/natsconn"
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
	logger.Info("worker starting", "apps", cfg.Apps, "api", cfg.APIBase, "nats", natsconn.Redact(cfg.URL))

	nc, err := natsconn.Connect(cfg.NATS, "wxlogin-worker", logger)
	if err != nil {
		return err
	}
	return exchange.Serve(ctx, exchange.ConfigFrom(cfg.Worker, cfg.SubjectPrefix), cfg.APIBase, cfg.MetricsAddr, nc, logger)
}
