// Command wxlogin runs everything in one process: an embedded NATS server
// (with JetStream; on NATS_LISTEN, clients without credentials may only
// ask for openids, users of NATS_USERS_FILE a little more), the HTTP edge
// and a worker. With WX_APPS unset it also runs a fake WeChat with a demo
// app, so a first run needs no WeChat account. Configured from the
// environment: wxlogin -h lists the variables.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/embednats"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/stack"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "wxlogin:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	// Configuration.
	var cfg config.AllInOneConfig
	if config.WantsHelp(args) {
		return config.Usage(stderr, &cfg)
	}
	if err := config.Load(&cfg); err != nil {
		return err
	}
	logger := logging.New(stderr, cfg.Level, cfg.Format)

	// The stack: embedded NATS, one worker and the edge, with the demo
	// upstream when no app is set. One registry: the edge's /metrics
	// shows the worker's figures too.
	// Clients of NATS_LISTEN without credentials may only ask for openids;
	// access holds the in-process edge's and worker's credentials.
	embedded, access, err := embeddedOptions(cfg.Embedded, cfg.SubjectPrefix)
	if err != nil {
		return err
	}
	o := stack.Options{
		Logger:       logger,
		Embedded:     embedded,
		InProcess:    true,
		EdgeNATS:     []nats.Option{access.Edge()},
		WorkerNATS:   []nats.Option{access.Worker()},
		Upstream:     cfg.APIBase,
		WeChat:       []wechat.Option{wechat.RootCAs(cfg.Worker.RootCAs())},
		Workers:      1,
		Worker:       exchange.ConfigFrom(cfg.Worker, cfg.SubjectPrefix),
		WorkerProbes: cfg.Worker.MetricsAddr,
		Edge:         &stack.EdgeOptions{Addr: cfg.Edge.Addr, Config: edge.ConfigFrom(cfg.Edge, cfg.SubjectPrefix)},
		Registry:     metrics.NewRegistry(),
	}
	if o.Worker.Tokens, err = exchange.LoadTokens(cfg.Tokens, true, cfg.StoreDir, logger); err != nil {
		return err
	}
	if len(cfg.Apps) == 0 {
		o.Upstream = "" // the stack serves the demo fake
		o.Worker.Apps = map[string]string{fakewx.DemoAppID: fakewx.DemoSecret}
		announceDemo(logger, cfg.Edge.Addr)
	}

	// Start, and stop when ctx ends or a part fails (package stack keeps
	// the order: edge, worker, demo upstream, NATS).
	g, gctx := errgroup.WithContext(ctx)
	st, err := stack.Start(gctx, o)
	if err != nil {
		return err
	}
	g.Go(st.Wait)
	g.Go(func() error { return httpserver.Debug(gctx, cfg.DebugAddr, logger) })
	err = g.Wait()
	logger.Info("wxlogin stopped")
	return err
}

// embeddedOptions is the embedded NATS server that NATS_LISTEN,
// NATS_STORE_DIR and NATS_USERS_FILE describe, with JetStream and the
// accounts of embednats.NewAccess.
func embeddedOptions(cfg config.Embedded, prefix string) (embednats.Options, *embednats.Access, error) {
	host, portStr, _ := net.SplitHostPort(cfg.Listen)
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return embednats.Options{}, nil, fmt.Errorf("NATS_LISTEN: port %q is not a number", portStr)
	}
	users := map[string]string{}
	for name, pw := range cfg.Users() {
		users[name] = string(pw)
	}
	access, err := embednats.NewAccess(prefix, users)
	if err != nil {
		return embednats.Options{}, nil, err
	}
	return embednats.Options{Name: "wxlogin", Host: host, Port: port, JetStream: true, StoreDir: cfg.StoreDir, Access: access}, access, nil
}

// announceDemo says loudly that answers are fake, and how to get one.
func announceDemo(logger *slog.Logger, edgeAddr string) {
	host, port, _ := net.SplitHostPort(edgeAddr)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	base := "http://" + net.JoinHostPort(host, port)
	logger.Warn("DEMO MODE: WX_APPS is not set, so codes are exchanged with an in-process FAKE WeChat, not the real one")
	logger.Warn("DEMO MODE: demo app " + fakewx.DemoAppID + "; every code works once; set WX_APPS=appid:secret for real use")
	logger.Warn("DEMO MODE: try  curl '" + base + "/v1/openid?code=demo-code-1'")
}
