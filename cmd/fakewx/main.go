// Command fakewx is a standalone fake of WeChat's code2Session endpoint for
// development, demos and benchmarks: point a worker's WX_API_BASE at it.
// Every code works once; codes of the form fx-<directive>-… misbehave on
// purpose (see package internal/fakewx). Configured from the environment:
// fakewx -h lists the variables.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fakewx:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	var cfg config.FakeWXConfig
	if config.WantsHelp(args) {
		return config.Usage(stderr, &cfg)
	}
	if err := config.Load(&cfg); err != nil {
		return err
	}
	logger := logging.New(stderr, cfg.Level, cfg.Format)

	apps := []fakewx.App{fakewx.DemoApp()}
	if len(cfg.Apps) > 0 {
		apps = apps[:0]
		for _, id := range cfg.Apps.IDs() {
			apps = append(apps, fakewx.App{AppID: id, Secret: string(cfg.Apps[id]), UnionID: true})
		}
	}
	fake := fakewx.New(fakewx.Config{Apps: apps, Latency: cfg.Latency})
	logger.Warn("FAKE WeChat: answers are made up; never point production at this", "apps", cfg.Apps.String(), "latency", cfg.Latency)
	if len(cfg.Apps) == 0 {
		logger.Info("serving the demo app; its secret is fakewx.DemoSecret (see the README)", "appid", fakewx.DemoAppID)
	}
	srv := httpserver.New(fake, time.Minute, logger)
	return httpserver.Run(ctx, srv, cfg.Addr, time.Second, logger)
}
