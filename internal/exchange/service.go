package exchange

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"golang.org/x/sync/semaphore"

	"github.com/wxlogin/wxlogin/internal/bucket"
	"github.com/wxlogin/wxlogin/internal/discovery"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// maxBudget caps the budget a requester may ask for in its header, so a
// bogus header cannot pin an exchange slot for hours.
const maxBudget = time.Minute

// intake is the NATS side of a Worker.
type intake struct {
	// admit counts the exchanges accepted and not yet answered, running
	// or waiting for a slot: at most admitMax, past which the handler
	// blocks and NATS buffers what follows. Shutdown waits on it for
	// every accepted exchange to be answered.
	admit    *semaphore.Weighted
	admitMax int64
	// slots holds one token per exchange running, WORKER_CONCURRENCY at
	// most; its length is the in-flight figure of the stats and the
	// gauge. An exchange waits for its slot in its own goroutine, against
	// its own deadline: if the handler waited instead, the messages
	// queued behind it would start their budget clocks late and outlive
	// their requesters.
	slots chan struct{}

	mu       sync.Mutex
	stopping bool // set once; after it, exchanges run in the handler

	nc       *nats.Conn
	svc      micro.Service
	stopBind context.CancelFunc
}

// waitingPerSlot is how many accepted exchanges may wait per slot. Only
// when that many wait does the handler block, and NATS buffer the rest.
const waitingPerSlot = 8

func (in *intake) init(concurrency int) {
	in.slots = make(chan struct{}, concurrency)
	in.admitMax = int64(concurrency * (1 + waitingPerSlot))
	in.admit = semaphore.NewWeighted(in.admitMax)
}

// inFlight is how many exchanges hold a slot.
func (in *intake) inFlight() int { return len(in.slots) }

// Start registers the micro service on nc and starts taking requests.
func (w *Worker) Start(nc *nats.Conn, version string) error {
	w.mu.Lock()
	w.nc = nc
	w.mu.Unlock()
	svc, err := micro.AddService(nc, micro.Config{
		Name:        protocol.ServiceName,
		Version:     version,
		Description: "Exchanges WeChat mini-program login codes for openids (auth.code2Session)",
		QueueGroup:  protocol.QueueGroup,
		Metadata:    map[string]string{"apps": fmt.Sprint(len(w.cfg.Apps))},
		StatsHandler: func(*micro.Endpoint) any {
			return w.Stats()
		},
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			w.log.Error("nats service error", "subject", e.Subject, "error", e.Description)
		},
	})
	if err != nil {
		return fmt.Errorf("adding micro service: %w", err)
	}
	// The subscription delivers messages one at a time and the handler
	// only starts a goroutine, so the backlog stays small unless every
	// slot is busy. Then up to this many requests wait in the client; past
	// it NATS drops messages (logged as slow consumer) and their
	// requesters time out, instead of the worker buffering without bound.
	pendingMsgs := max(16*w.cfg.Concurrency, 65536)
	err = svc.AddEndpoint(protocol.EndpointName, micro.HandlerFunc(w.handle),
		micro.WithEndpointSubject(protocol.Subject(w.cfg.SubjectPrefix)),
		micro.WithEndpointPendingLimits(pendingMsgs, 64<<20),
	)
	if err != nil {
		_ = svc.Stop()
		return fmt.Errorf("adding endpoint %s: %w", protocol.Subject(w.cfg.SubjectPrefix), err)
	}
	if err := w.addTokenEndpoints(svc); err != nil {
		_ = svc.Stop()
		return err
	}
	// Once Start returns, the server knows the subscription: a request
	// sent now reaches this worker instead of finding no responders.
	if nc.IsConnected() {
		if err := nc.FlushTimeout(5 * time.Second); err != nil {
			w.log.Warn("nats flush after subscribing failed", logging.Err(err))
		}
	}
	if w.cfg.Registry != nil {
		metrics.NATS(w.cfg.Registry, "worker", nc)
	}
	bindCtx, stopBind := context.WithCancel(context.Background())
	w.mu.Lock()
	w.svc = svc
	w.stopBind = stopBind
	w.mu.Unlock()
	go w.keepRunning(bindCtx, "store binding", func() { w.bindStores(bindCtx, nc) })
	if w.cfg.Rate > 0 {
		go w.keepRunning(bindCtx, "peer count", func() { w.countPeers(bindCtx, nc) })
	}
	w.log.Info("worker serving", "subject", protocol.Subject(w.cfg.SubjectPrefix), "queue", protocol.QueueGroup,
		"version", version, "limits", w.String())
	return nil
}

// handle runs on the subscription's goroutine: it reads what it needs
// from the message and starts the exchange's goroutine.
func (w *Worker) handle(req micro.Request) {
	defer w.recoverLoop("request handler")
	received := time.Now()
	reply := req.Reply()
	if reply == "" {
		return // a publish, not a request: nobody to answer
	}
	budget := w.cfg.RequestTimeout
	if ms, err := strconv.Atoi(req.Headers().Get(protocol.HeaderTimeout)); err == nil && ms > 0 {
		budget = min(time.Duration(ms)*time.Millisecond, maxBudget)
	}
	j := &job{w: w, reply: reply, deadline: received.Add(budget)}
	data := req.Data()

	// Blocks while admitMax exchanges are accepted: backpressure.
	_ = w.admit.Acquire(context.Background(), 1)
	w.mu.Lock()
	stopping := w.stopping
	w.mu.Unlock()
	if stopping {
		// Shutting down: run here, so that draining the connection
		// waits for this reply instead of closing under it.
		w.admit.Release(1)
		j.run(data)
		return
	}
	go func() {
		defer w.admit.Release(1)
		j.run(data)
	}()
}

// recoverLoop, deferred, keeps a panic in a handler or a background loop
// from taking the process down: it logs it and lets the caller carry on.
func (w *Worker) recoverLoop(where string) {
	if r := recover(); r != nil {
		w.logPanic(where, r)
	}
}

// logPanic logs a recovered panic: where it happened, what kind of panic
// it was (never its value, which might quote data) and the stack (whose
// arguments are bare machine words, never string contents).
func (w *Worker) logPanic(where string, r any) {
	w.log.Error("panic recovered; carrying on", "in", where, "panic", panicText(r), "stack", string(debug.Stack()))
}

// panicText describes a recovered panic without data it may carry: the
// runtime's own errors say only what went wrong (an index out of range,
// a nil map), anything else is named by its type.
func panicText(r any) string {
	if err, ok := r.(runtime.Error); ok {
		return err.Error()
	}
	return fmt.Sprintf("panic(%T)", r)
}

// keepRunning runs loop, and again after a pause whenever it panics,
// until it returns or ctx ends.
func (w *Worker) keepRunning(ctx context.Context, name string, loop func()) {
	for w.panics(name, loop) && sleep(ctx, time.Second) {
	}
}

// panics runs f and reports whether it panicked; the panic is logged.
func (w *Worker) panics(name string, f func()) (panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			w.logPanic(name, r)
			panicked = true
		}
	}()
	f()
	return false
}

// bindStores turns on the pool-wide pieces once JetStream answers:
// de-duplication and the rate limit. Until then, and for good when the
// server has no JetStream, both work per worker.
func (w *Worker) bindStores(ctx context.Context, nc *nats.Conn) {
	type store struct {
		name string
		bind func(context.Context, *nats.Conn) error
	}
	var todo []store
	if w.dedup != nil {
		todo = append(todo, store{"de-duplication", w.dedup.Bind})
	}
	if w.cfg.Rate > 0 {
		todo = append(todo, store{"rate limit", w.limit.Bind})
	}
	pause := 250 * time.Millisecond
	for len(todo) > 0 {
		s := todo[0]
		bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.bind(bctx, nc)
		cancel()
		switch {
		case err == nil:
			w.log.Info("pool-wide "+s.name+" on", "jetstream", true)
			todo = todo[1:]
			continue
		case errors.Is(err, bucket.ErrNoJetStream):
			w.log.Warn("cross-worker " + s.name + " is OFF: the NATS server has no JetStream; " +
				"it holds per worker only (de-duplication: duplicates collapse on one worker; rate: WX_RATE ÷ workers)")
			todo = todo[1:]
			continue
		case ctx.Err() != nil:
			return
		}
		w.log.Debug(s.name+" bucket not bound yet; retrying", logging.Err(err))
		if !sleep(ctx, pause) {
			return
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// countPeers keeps the rate limiter's idea of the pool size current, for
// its per-worker fallback: every few seconds it asks micro discovery how
// many workers serve this worker's subject.
func (w *Worker) countPeers(ctx context.Context, nc *nats.Conn) {
	subject := protocol.Subject(w.cfg.SubjectPrefix)
	for {
		if res, err := discovery.Probe(ctx, nc, subject, 250*time.Millisecond, nil); err == nil && res.Serving > 0 {
			w.limit.SetPeers(res.Serving)
		}
		if !sleep(ctx, 2*time.Second) {
			return
		}
	}
}

// DedupMode says how far de-duplication reaches: "shared" (the pool, via
// JetStream), "local" (this worker), or "off".
func (w *Worker) DedupMode() string {
	switch {
	case w.dedup == nil:
		return "off"
	case w.dedup.Shared():
		return "shared"
	}
	return "local"
}

// RateMode says how far the rate limit reaches: "shared" (the pool),
// "local" (a per-worker share), or "off" (WX_RATE=0).
func (w *Worker) RateMode() string {
	switch {
	case w.cfg.Rate <= 0:
		return "off"
	case w.limit.Shared():
		return "shared"
	}
	return "local"
}

// Ready reports whether the worker takes requests: connected and not
// shutting down.
func (w *Worker) Ready() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.stopping && w.svc != nil && w.nc.IsConnected()
}

// Run serves on nc until ctx ends, then shuts down in the only order that
// loses nothing: stop intake, let exchanges in flight finish and reply,
// then drain the connection. Run owns nc: it is closed when Run returns.
func (w *Worker) Run(ctx context.Context, nc *nats.Conn, version string) error {
	if err := w.Start(nc, version); err != nil {
		nc.Close()
		return err
	}
	<-ctx.Done()
	return w.Shutdown()
}

// Shutdown stops the worker started with Start and closes its connection.
// It returns once every request it accepted has been answered; that takes
// at most the longest remaining request budget.
func (w *Worker) Shutdown() error {
	w.mu.Lock()
	w.stopping = true
	started := w.svc != nil
	w.mu.Unlock()
	if !started {
		return nil
	}
	w.stopBind()
	w.log.Info("worker stopping: no new requests; finishing those in flight", "in_flight", w.inFlight())

	// Stop drains the endpoint's subscription: the server sends no more,
	// and what already arrived is still handled (in the handler, see handle).
	var errs []error
	if err := w.svc.Stop(); err != nil {
		errs = append(errs, fmt.Errorf("stopping micro service: %w", err))
	}
	// Every accepted exchange answered: the whole weight is free. Given
	// back at once, for a message still on its way through handle.
	_ = w.admit.Acquire(context.Background(), w.admitMax)
	w.admit.Release(w.admitMax)

	closed := make(chan struct{})
	w.nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := w.nc.Drain(); err != nil {
		// Closed or reconnecting: there is nothing to drain to.
		if !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrConnectionReconnecting) {
			errs = append(errs, fmt.Errorf("draining nats: %w", err))
		}
		w.nc.Close()
	} else {
		<-closed // Drain ends in Close, after its own DrainTimeout at worst
	}
	w.log.Info("worker stopped")
	return errors.Join(errs...)
}

// HealthHandler serves the worker's probes: /healthz while the process
// runs, /readyz while it takes requests, and /metrics when the worker has
// a registry.
func (w *Worker) HealthHandler() http.Handler {
	mux := http.NewServeMux()
	if w.cfg.Registry != nil {
		mux.Handle("GET /metrics", metrics.Handler(w.cfg.Registry))
	}
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) {
		if !w.Ready() {
			http.Error(rw, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(rw, "ready (de-duplication: %s)\n", w.DedupMode())
	})
	return mux
}
