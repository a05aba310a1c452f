package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/embednats"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/natsconn"
)

// options are the soak's flags.
type options struct {
	duration  time.Duration
	rate      float64
	every     time.Duration
	warmup    time.Duration // 0: 30% of the duration
	workers   int
	latency   time.Duration // fake WeChat's latency on every answer
	timeout   time.Duration // EDGE_TIMEOUT
	resultTTL time.Duration // WX_RESULT_TTL
	codeTTL   time.Duration // how long the fake remembers a code
	maxGrowth float64       // percent
	logLevel  string
}

var errHelp = errors.New("help")

func parseFlags(args []string, stdout io.Writer) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long to drive the service")
	fs.Float64Var(&o.rate, "rate", 200, "requests per second, sent at a steady pace whatever the answers")
	fs.DurationVar(&o.every, "every", 10*time.Second, "report interval")
	fs.DurationVar(&o.warmup, "warmup", 0,
		"start of the run left out of the memory verdict; 0 means 30% of -duration, or twice the longer TTL plus 5s if that is longer")
	fs.IntVar(&o.workers, "workers", 2, "workers, each on its own NATS connection")
	fs.DurationVar(&o.latency, "latency", 20*time.Millisecond, "fake WeChat's latency on every answer")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Second, "EDGE_TIMEOUT")
	fs.DurationVar(&o.resultTTL, "result-ttl", time.Minute,
		"WX_RESULT_TTL: answers are kept this long (up to twice as long in a worker), so memory levels off only after that")
	fs.DurationVar(&o.codeTTL, "code-ttl", 30*time.Second, "how long the fake WeChat remembers a code (its memory levels off after twice that)")
	fs.Float64Var(&o.maxGrowth, "max-growth", 20, "fail if mean RSS or heap of the last third grew by more than this many percent over the first third (and by more than 8 MiB)")
	fs.StringVar(&o.logLevel, "log-level", "error", "level of the components' own log lines: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, errHelp
		}
		return o, err
	}
	var errs []error
	if o.duration <= 0 || o.every <= 0 || o.rate <= 0 || o.workers < 1 || o.timeout <= 0 || o.latency < 0 {
		errs = append(errs, errors.New("-duration, -every, -rate, -workers and -timeout must be positive, -latency not negative"))
	}
	if o.warmup == 0 {
		// Remembered answers and codes fill memory for up to twice their
		// TTL before old ones go; only after that is flat memory expected.
		o.warmup = max(o.duration*3/10, 2*max(o.resultTTL, o.codeTTL)+5*time.Second)
	}
	if o.warmup < 0 {
		errs = append(errs, errors.New("-warmup must not be negative"))
	}
	if o.resultTTL <= 0 || o.codeTTL <= 0 {
		errs = append(errs, errors.New("-result-ttl and -code-ttl must be positive"))
	}
	return o, errors.Join(errs...)
}

// stack is everything the soak runs, in this process.
type stack struct {
	edgeURL string
	cancel  context.CancelFunc
	g       *errgroup.Group
	ns      *server.Server
	store   string
	up      *http.Server
}

// startStack starts the pieces the way the binaries do: embednats,
// exchange.Serve and edge.Serve, with the fake WeChat behind an
// httpserver.
func startStack(ctx context.Context, o options) (*stack, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	logger := logging.New(os.Stderr, level, "text")

	store, err := os.MkdirTemp("", "wxlogin-soak-")
	if err != nil {
		return nil, err
	}
	ns, err := embednats.Start(embednats.Options{Name: "soak", Port: -1, JetStream: true, StoreDir: store}, logger)
	if err != nil {
		os.RemoveAll(store)
		return nil, err
	}
	st := &stack{ns: ns, store: store}

	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{fakewx.DemoApp()}, Latency: o.latency, CodeTTL: o.codeTTL})
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		st.cleanup()
		return nil, err
	}
	edgeLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		upLn.Close()
		st.cleanup()
		return nil, err
	}
	// edge.Serve listens itself: hand it the address just freed.
	edgeAddr := edgeLn.Addr().String()
	edgeLn.Close()
	st.edgeURL = "http://" + edgeAddr

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	st.cancel = cancel
	st.g = &errgroup.Group{}
	st.up = httpserver.New(fake, 30*time.Second, logger)
	st.g.Go(func() error {
		return httpserver.Serve(runCtx, st.up, upLn, time.Second, logger.With("server", "fake-wechat"))
	})
	connect := func(name string, extra ...nats.Option) (*nats.Conn, error) {
		return nats.Connect(ns.ClientURL(), append(natsconn.Resilient(name, logger), extra...)...)
	}
	wcfg := exchange.Config{
		Apps:           map[string]string{fakewx.DemoAppID: fakewx.DemoSecret},
		HTTPTimeout:    time.Second,
		MaxAttempts:    3,
		Concurrency:    1024,
		RequestTimeout: 5 * time.Second,
		ResultTTL:      o.resultTTL,
		ClaimTTL:       3 * time.Second,
		KVReplicas:     1,
	}
	for i := range o.workers {
		nc, err := connect(fmt.Sprintf("soak-worker-%d", i))
		if err != nil {
			st.stop()
			return nil, fmt.Errorf("connecting worker %d: %w", i, err)
		}
		st.g.Go(func() error { return exchange.Serve(runCtx, wcfg, "http://"+upLn.Addr().String(), "", nc, logger) })
	}
	nc, err := connect("soak-edge", nats.ReconnectBufSize(-1))
	if err != nil {
		st.stop()
		return nil, fmt.Errorf("connecting edge: %w", err)
	}
	st.g.Go(func() error {
		return edge.Serve(runCtx, edge.Config{Timeout: o.timeout, MaxBody: 4096}, edgeAddr, nc, logger)
	})

	// Ready when an exchange goes through end to end.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		resp, err := http.Get(fmt.Sprintf("%s/v1/openid?code=soak-ready-%d", st.edgeURL, i))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return st, nil
			}
		}
		if time.Now().After(deadline) {
			st.stop()
			return nil, errors.New("the stack did not answer within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the pieces down in the binaries' order (edge and workers
// first, through their contexts), then NATS.
func (st *stack) stop() error {
	st.cancel()
	err := st.g.Wait()
	st.cleanup()
	return err
}

func (st *stack) cleanup() {
	st.ns.Shutdown()
	st.ns.WaitForShutdown()
	os.RemoveAll(st.store)
}
