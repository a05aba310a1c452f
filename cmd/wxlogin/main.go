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
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
	"github.com/wxlogin/wxlogin/internal/natsconn"
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

	// Dependencies: the NATS server, and the demo upstream when no app is set.
	ns, access, cleanup, err := startNATS(cfg.Embedded, cfg.SubjectPrefix, logger)
	if err != nil {
		return err
	}
	defer cleanup()

	// One registry: the edge's /metrics shows the worker's figures too.
	reg := metrics.NewRegistry()
	wcfg := exchange.ConfigFrom(cfg.Worker, cfg.SubjectPrefix)
	wcfg.Registry = reg
	if wcfg.Tokens, err = exchange.LoadTokens(cfg.Tokens, true, cfg.StoreDir, logger); err != nil {
		return err
	}
	ecfg := edge.ConfigFrom(cfg.Edge, cfg.SubjectPrefix)
	ecfg.Registry = reg
	apiBase := cfg.APIBase
	var demo *demoUpstream
	if len(cfg.Apps) == 0 {
		if demo, err = startDemo(logger); err != nil {
			return err
		}
		apiBase = demo.url
		wcfg.Apps = map[string]string{fakewx.DemoAppID: fakewx.DemoSecret}
		announceDemo(logger, cfg.Edge.Addr)
	}

	// Start: edge, worker and demo upstream, stopped in that order so
	// that each finishes its requests while what it depends on still runs.
	edgeNC, err := nats.Connect(ns.ClientURL(), append(natsconn.Resilient("wxlogin-edge", logger),
		nats.InProcessServer(ns), nats.ReconnectBufSize(-1), access.Edge())...)
	if err != nil {
		return fmt.Errorf("connecting edge to embedded nats: %w", err)
	}
	workerNC, err := nats.Connect(ns.ClientURL(), append(natsconn.Resilient("wxlogin-worker", logger),
		nats.InProcessServer(ns), access.Worker())...)
	if err != nil {
		edgeNC.Close()
		return fmt.Errorf("connecting worker to embedded nats: %w", err)
	}
	// A failure anywhere cancels gctx, which stops the edge, which stops
	// the worker, which stops the demo upstream: the same order as a signal.
	g, gctx := errgroup.WithContext(ctx)
	workerCtx, stopWorker := context.WithCancel(context.WithoutCancel(ctx))
	demoCtx, stopDemo := context.WithCancel(context.WithoutCancel(ctx))
	g.Go(func() error {
		defer stopWorker()
		return edge.Serve(gctx, ecfg, cfg.Edge.Addr, edgeNC, logger)
	})
	g.Go(func() error {
		defer stopDemo()
		return exchange.Serve(workerCtx, wcfg, apiBase, cfg.Worker.MetricsAddr, workerNC, logger,
			wechat.RootCAs(cfg.Worker.RootCAs()))
	})
	g.Go(func() error {
		if demo == nil {
			return nil
		}
		return demo.serve(demoCtx, logger)
	})
	g.Go(func() error { return httpserver.Debug(gctx, cfg.DebugAddr, logger) })

	// Shutdown: wait for all three, then the deferred NATS shutdown.
	err = g.Wait()
	logger.Info("wxlogin stopped")
	return err
}

// startNATS runs the embedded server with JetStream. Clients of its
// listener without credentials may only ask for openids; access holds
// the in-process edge's and worker's credentials. cleanup shuts it down
// and removes a store directory it made itself.
func startNATS(cfg config.Embedded, prefix string, logger *slog.Logger) (*server.Server, *embednats.Access, func(), error) {
	host, portStr, _ := net.SplitHostPort(cfg.Listen)
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("NATS_LISTEN: port %q is not a number", portStr)
	}
	users := map[string]string{}
	for name, pw := range cfg.Users() {
		users[name] = string(pw)
	}
	access, err := embednats.NewAccess(prefix, users)
	if err != nil {
		return nil, nil, nil, err
	}
	storeDir, madeDir := cfg.StoreDir, false
	if storeDir == "" {
		if storeDir, err = os.MkdirTemp("", "wxlogin-nats-"); err != nil {
			return nil, nil, nil, fmt.Errorf("making a JetStream store dir: %w", err)
		}
		madeDir = true
	}
	ns, err := embednats.Start(embednats.Options{
		Name: "wxlogin", Host: host, Port: port, JetStream: true, StoreDir: storeDir, Access: access,
	}, logger)
	if err != nil {
		if madeDir {
			os.RemoveAll(storeDir)
		}
		return nil, nil, nil, fmt.Errorf("NATS_LISTEN %s: %w", cfg.Listen, err)
	}
	logger.Info("embedded nats listening", "url", ns.ClientURL(), "jetstream", storeDir, "service_users", len(users))
	return ns, access, func() {
		ns.Shutdown()
		ns.WaitForShutdown()
		if madeDir {
			os.RemoveAll(storeDir)
		}
	}, nil
}

// demoUpstream is the in-process fake WeChat of a first run.
type demoUpstream struct {
	url string
	ln  net.Listener
	srv *fakewx.Server
}

func startDemo(logger *slog.Logger) (*demoUpstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting the demo upstream: %w", err)
	}
	return &demoUpstream{
		url: "http://" + ln.Addr().String(),
		ln:  ln,
		srv: fakewx.New(fakewx.Config{Apps: []fakewx.App{fakewx.DemoApp()}}),
	}, nil
}

func (d *demoUpstream) serve(ctx context.Context, logger *slog.Logger) error {
	srv := httpserver.New(d.srv, 30*time.Second, logger)
	return httpserver.Serve(ctx, srv, d.ln, time.Second, logger.With("server", "demo-upstream"))
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
