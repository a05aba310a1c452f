// Package stack assembles wxlogin in one process: a NATS server (embedded,
// or one already running), the fake WeChat when no real one is given,
// workers and the HTTP edge. The all-in-one binary, the benchmark, the
// soak and the test beds all build their stacks here, so that they run
// the same pieces wired the same way and differ only in their Options.
//
// Parts stop in the reverse order of their dependencies: the edge first
// (it answers what it has in flight while the workers still run), then
// the workers (they finish their exchanges while WeChat, or its fake,
// still answers), then the fake upstream, then NATS.
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/embednats"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/natsconn"
	"github.com/wxlogin/wxlogin/internal/version"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

// Options say what to run. The zero value, with a Logger, is an embedded
// NATS server on a random port and nothing else; parts can be added later
// with StartWorker and StartEdge.
type Options struct {
	Logger *slog.Logger // required

	// NATSURL is the server (or a comma-separated cluster) to use. When
	// empty, the stack starts an embedded server with Embedded; one with
	// JetStream and no StoreDir stores in a temporary directory that Stop
	// removes.
	NATSURL  string
	Embedded embednats.Options
	// InProcess connects edge and workers to the embedded server inside
	// the process rather than over its TCP listener, as the all-in-one
	// does. Other clients still use the listener.
	InProcess bool
	// EdgeNATS and WorkerNATS are added to the options of the edge's and
	// the workers' connections, such as credentials.
	EdgeNATS, WorkerNATS []nats.Option

	// Upstream is WeChat's API base URL. When empty, the stack serves Fake
	// (a fake with the demo app when nil) on a loopback port.
	Upstream string
	Fake     *fakewx.Server
	WeChat   []wechat.Option // for every worker's client, such as wechat.RootCAs

	// Workers is how many workers Start runs with Worker, each on a NATS
	// connection of its own. WorkerProbes, when set, is where the first
	// one serves /healthz, /readyz and /metrics.
	Workers      int
	Worker       exchange.Config
	WorkerProbes string

	// Edge, when not nil, is served by Start.
	Edge *EdgeOptions

	// Registry, when set, receives the metrics of the edge and of every
	// worker that Start runs, so that one /metrics shows them all.
	Registry *prometheus.Registry
}

// EdgeOptions say how to serve an edge.
type EdgeOptions struct {
	Addr   string // where to listen; 127.0.0.1:0 picks a free port
	Config edge.Config
	Probe  edge.ProbeOptions // how /readyz follows the workers; zero: the defaults
}

// Stack is a running stack. Its methods may be called from any goroutine.
type Stack struct {
	log      *slog.Logger
	opts     Options
	runCtx   context.Context // Start's: Wait stops the stack when it ends
	ctx      context.Context // parent of every part's context: Stop ends them, in order
	ns       *server.Server  // nil with Options.NATSURL
	natsURL  string
	storeDir string // removed at Stop when the stack made it
	upstream string
	fake     *served // nil unless the stack serves the fake

	failed chan error // a part that stopped on its own

	mu      sync.Mutex
	edges   []*Edge
	workers []*Worker
	stopped bool
}

// errStopped refuses a part added to a stack that was stopped, which
// nothing would stop.
var errStopped = errors.New("stack: already stopped")

// Run starts a stack with o and runs it until ctx ends or a part fails,
// then stops it.
func Run(ctx context.Context, o Options) error {
	s, err := Start(ctx, o)
	if err != nil {
		return err
	}
	return s.Wait()
}

// Start starts NATS, the fake upstream when there is no other, o.Workers
// workers and the edge, in that order. On an error it stops what it
// started. The parts run until Stop, or until ctx ends and Wait stops
// them.
func Start(ctx context.Context, o Options) (*Stack, error) {
	if o.Logger == nil {
		return nil, errors.New("stack: no logger")
	}
	s := &Stack{log: o.Logger, opts: o, runCtx: ctx, ctx: context.WithoutCancel(ctx), failed: make(chan error, 1)}
	if err := s.startNATS(); err != nil {
		return nil, err
	}
	if err := s.startUpstream(); err != nil {
		s.Stop()
		return nil, err
	}
	cfg := o.Worker
	if o.Registry != nil {
		cfg.Registry = o.Registry
	}
	for i := range o.Workers {
		probes := ""
		if i == 0 {
			probes = o.WorkerProbes
		}
		if _, err := s.startWorker(cfg, nil, probes); err != nil {
			s.Stop()
			return nil, err
		}
	}
	if o.Edge != nil {
		eo := *o.Edge
		if o.Registry != nil {
			eo.Config.Registry = o.Registry
		}
		if _, err := s.StartEdge(eo, nil); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

// startNATS starts the embedded server, unless the stack uses another.
func (s *Stack) startNATS() error {
	if s.opts.NATSURL != "" {
		s.natsURL = s.opts.NATSURL
		return nil
	}
	eo := s.opts.Embedded
	if eo.JetStream && eo.StoreDir == "" {
		dir, err := os.MkdirTemp("", "wxlogin-nats-")
		if err != nil {
			return fmt.Errorf("making a JetStream store dir: %w", err)
		}
		eo.StoreDir, s.storeDir = dir, dir
	}
	ns, err := embednats.Start(eo, s.log)
	if err != nil {
		s.removeStore()
		return err // it names the embedded server and its address
	}
	s.ns, s.natsURL = ns, ns.ClientURL()
	s.log.Info("embedded nats listening", "url", s.natsURL, "jetstream", eo.StoreDir)
	return nil
}

// connect opens a connection for one of the stack's parts: resilient, as
// the binaries' are, and in process when asked.
func (s *Stack) connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := natsconn.Resilient(name, s.log)
	if s.opts.InProcess && s.ns != nil {
		opts = append(opts, nats.InProcessServer(s.ns))
	}
	nc, err := nats.Connect(s.natsURL, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connecting %s to nats: %w", name, err)
	}
	return nc, nil
}

// Connect opens a connection to the stack's NATS server as a client of
// the pool would, over the network. The caller closes it.
func (s *Stack) Connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(s.natsURL, append(natsconn.Resilient(name, s.log), extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connecting %s to nats: %w", name, err)
	}
	return nc, nil
}

// startUpstream serves the fake WeChat unless Options.Upstream names one.
func (s *Stack) startUpstream() error {
	if s.opts.Upstream != "" {
		s.upstream = s.opts.Upstream
		return nil
	}
	fake := s.opts.Fake
	if fake == nil {
		fake = fakewx.New(fakewx.Config{Apps: []fakewx.App{fakewx.DemoApp()}})
	}
	srv, err := serve(s.ctx, "127.0.0.1:0", func(ctx context.Context, ln net.Listener) error {
		return httpserver.Serve(ctx, httpserver.New(fake, 30*time.Second, s.log), ln, time.Second,
			s.log.With("server", "fake-upstream"))
	})
	if err != nil {
		return fmt.Errorf("starting the fake upstream: %w", err)
	}
	s.fake, s.upstream = srv, "http://"+srv.addr
	return nil
}

// Worker is one of the stack's workers.
type Worker struct {
	*exchange.Worker
	NC *nats.Conn // its connection, for tests that cut it

	probes *served
	once   sync.Once
	err    error
}

// Stop shuts the worker down gracefully: it answers every request it
// accepted, then closes its connection. Later calls return the first
// call's result.
func (w *Worker) Stop() error {
	w.once.Do(func() {
		w.err = w.Shutdown()
		if w.probes != nil {
			w.err = errors.Join(w.err, w.probes.stop())
		}
	})
	return w.err
}

// StartWorker runs a worker with cfg on nc, or on a connection of its own
// when nc is nil. The worker owns nc and closes it when it stops.
func (s *Stack) StartWorker(cfg exchange.Config, nc *nats.Conn) (*Worker, error) {
	return s.startWorker(cfg, nc, "")
}

func (s *Stack) startWorker(cfg exchange.Config, nc *nats.Conn, probesAddr string) (*Worker, error) {
	if probesAddr != "" && cfg.Registry == nil {
		cfg.Registry = metrics.NewRegistry() // for the probes' /metrics
	}
	// The connection pool sized for the exchanges the worker runs at once.
	client, err := wechat.New(s.upstream, append([]wechat.Option{wechat.IdleConns(cfg.Concurrency)}, s.opts.WeChat...)...)
	if err != nil {
		return nil, fmt.Errorf("WeChat API base: %w", err)
	}
	ew, err := exchange.New(cfg, client, s.log)
	if err != nil {
		return nil, err
	}
	if nc == nil {
		if nc, err = s.connect("wxlogin-worker", s.opts.WorkerNATS...); err != nil {
			return nil, err
		}
	}
	if err := ew.Start(nc, version.Version()); err != nil {
		nc.Close()
		return nil, fmt.Errorf("starting a worker: %w", err)
	}
	w := &Worker{Worker: ew, NC: nc}
	if probesAddr != "" {
		w.probes, err = serve(s.ctx, probesAddr, func(ctx context.Context, ln net.Listener) error {
			srv := httpserver.New(ew.HealthHandler(), 10*time.Second, s.log)
			return httpserver.Serve(ctx, srv, ln, time.Second, s.log.With("server", "worker-probes"))
		})
		if err != nil {
			w.Stop()
			return nil, fmt.Errorf("worker probes: %w", err)
		}
		go s.watch(w.probes)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		w.Stop()
		return nil, errStopped
	}
	s.workers = append(s.workers, w)
	return w, nil
}

// Edge is one of the stack's edges.
type Edge struct {
	URL string // http://host:port
	srv *served
}

// Stop stops the edge once the requests in flight are answered (or its
// grace, EDGE_TIMEOUT plus a second, is over).
func (e *Edge) Stop() error { return e.srv.stop() }

// StartEdge serves an edge as eo says, asking the workers through nc, or
// through a connection of its own when nc is nil. The edge owns nc.
func (s *Stack) StartEdge(eo EdgeOptions, nc *nats.Conn) (*Edge, error) {
	if nc == nil {
		// No reconnect buffer: during an outage a request gets 503 at
		// once instead of waiting in a buffer for its budget.
		var err error
		extra := append([]nats.Option{nats.ReconnectBufSize(-1)}, s.opts.EdgeNATS...)
		if nc, err = s.connect("wxlogin-edge", extra...); err != nil {
			return nil, err
		}
	}
	srv, err := serve(s.ctx, eo.Addr, func(ctx context.Context, ln net.Listener) error {
		return edge.ServeListener(ctx, eo.Config, ln, nc, s.log, eo.Probe)
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("edge: %w", err)
	}
	go s.watch(srv)
	e := &Edge{URL: "http://" + srv.addr, srv: srv}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		e.Stop()
		return nil, errStopped
	}
	s.edges = append(s.edges, e)
	return e, nil
}

// NATS is the embedded server, or nil when the stack uses another.
func (s *Stack) NATS() *server.Server { return s.ns }

// NATSURL is the URL clients of the stack's NATS server connect to.
func (s *Stack) NATSURL() string { return s.natsURL }

// Upstream is the base URL of the WeChat API the workers call.
func (s *Stack) Upstream() string { return s.upstream }

// EdgeURL is the URL of the first edge, or "" without one.
func (s *Stack) EdgeURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.edges) == 0 {
		return ""
	}
	return s.edges[0].URL
}

// Workers are the workers started so far, stopped ones included.
func (s *Stack) Workers() []*Worker {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Worker(nil), s.workers...)
}

// Wait runs until the context Start was given ends or a part fails, then
// stops the stack. It returns the part's failure, or Stop's error.
func (s *Stack) Wait() error {
	var failure error
	select {
	case <-s.runCtx.Done():
	case failure = <-s.failed:
	}
	return errors.Join(failure, s.Stop())
}

// Stop stops every part, in order: edges, workers, the fake upstream,
// then NATS. Calls after the first return nil.
func (s *Stack) Stop() error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	edges, workers := s.edges, s.workers
	s.mu.Unlock()

	var errs []error
	for _, e := range edges {
		errs = append(errs, e.Stop())
	}
	var wg sync.WaitGroup
	werrs := make([]error, len(workers))
	for i, w := range workers {
		wg.Go(func() { werrs[i] = w.Stop() })
	}
	wg.Wait()
	errs = append(errs, werrs...)
	if s.fake != nil {
		errs = append(errs, s.fake.stop())
	}
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	s.removeStore()
	return errors.Join(errs...)
}

func (s *Stack) removeStore() {
	if s.storeDir != "" {
		os.RemoveAll(s.storeDir)
	}
}

// watch reports a part that stops before it was told to.
func (s *Stack) watch(p *served) {
	<-p.done
	if p.stopping() {
		return
	}
	err := p.err
	if err == nil {
		err = fmt.Errorf("%s stopped", p.addr)
	}
	select {
	case s.failed <- err:
	default:
	}
}

// served is an HTTP server of the stack, run by fn on a listener of its
// own until stop.
type served struct {
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
	err    error

	mu      sync.Mutex
	stopped bool
}

// stop ends the server and returns how it ended.
func (p *served) stop() error {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.cancel()
	<-p.done
	return p.err
}

func (p *served) stopping() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped
}

// serve listens on addr, so that a bad address fails at once, and runs fn
// on the listener in a goroutine until stop.
func serve(ctx context.Context, addr string, fn func(context.Context, net.Listener) error) (*served, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &served{addr: ln.Addr().String(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = fn(ctx, ln)
	}()
	return p, nil
}
