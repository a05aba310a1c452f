package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/discovery"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// ProbeOptions tune how Workers probes; zero values mean the defaults.
type ProbeOptions struct {
	// Interval is the time between probes while workers answer. While
	// none does, probes come four times as often, so that the edge is
	// ready soon after the first worker starts. Default 2s.
	Interval time.Duration
	// Window is how long one probe gathers answers. Default 500ms.
	Window time.Duration
	// MaxAge is how long a worker's answer keeps the edge ready, so that
	// one lost probe does not flap readiness. Default 3×Interval.
	MaxAge time.Duration
}

func (o ProbeOptions) withDefaults() ProbeOptions {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.Window <= 0 {
		o.Window = 500 * time.Millisecond
	}
	if o.MaxAge <= 0 {
		o.MaxAge = 3 * o.Interval
	}
	return o
}

// Workers follows whether any worker serves the edge's subject, by asking
// NATS micro discovery (package discovery) every few seconds, for the
// edge's /readyz. An edge without workers can only answer 503, so it
// should not get traffic.
type Workers struct {
	nc      *nats.Conn
	subject string
	opts    ProbeOptions
	log     *slog.Logger

	mu       sync.Mutex
	lastSeen time.Time // when a worker serving subject last answered
	count    int       // how many answered the last complete probe
	why      string    // why the last probe found none
}

// NewWorkers returns a prober for workers serving subjectPrefix's
// exchange subject over nc. It probes once Run is called.
func NewWorkers(nc *nats.Conn, subjectPrefix string, opts ProbeOptions, logger *slog.Logger) *Workers {
	if subjectPrefix == "" {
		subjectPrefix = protocol.DefaultSubjectPrefix
	}
	return &Workers{
		nc: nc, subject: protocol.Subject(subjectPrefix), opts: opts.withDefaults(), log: logger,
		why: "no worker has answered discovery yet",
	}
}

// Run probes until ctx ends.
func (w *Workers) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := w.opts.Interval
		if w.probe(ctx) == 0 {
			next /= 4
		}
		t.Reset(next)
	}
}

// probe asks every worker for its info once, gathers the answers for the
// window, and returns how many serve our subject.
func (w *Workers) probe(ctx context.Context) int {
	// w.seen: ready as soon as one answers, not at the end of the window.
	res, err := discovery.Probe(ctx, w.nc, w.subject, w.opts.Window, w.seen)
	switch {
	case errors.Is(err, nats.ErrDisconnected):
		w.finish(0, "nats not connected", false)
		return 0
	case err != nil:
		w.finish(0, "discovery failed: "+err.Error(), false)
		return 0
	}
	if res.Bad > 0 {
		w.log.Debug("discovery: answers that are not micro info", "count", res.Bad)
	}
	why := "no worker answered discovery"
	switch {
	case res.NoResponders:
		why = "no worker is subscribed"
	case res.Others > 0:
		why = "workers answered discovery, but none serves " + w.subject
	}
	w.finish(res.Serving, why, res.NoResponders)
	return res.Serving
}

func (w *Workers) seen(n int) {
	w.mu.Lock()
	w.lastSeen = time.Now()
	w.count = max(w.count, n) // finish sets the probe's own count
	w.mu.Unlock()
}

// finish records a probe's result. gone says the server told us that no
// worker is there at all.
func (w *Workers) finish(n int, why string, gone bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.count = n
	if n > 0 {
		return
	}
	w.why = why
	if gone {
		// Definite: the last worker has left. Waiting out MaxAge would
		// only send traffic to an edge that can answer nothing but 503.
		w.lastSeen = time.Time{}
	}
}

// Ready reports whether a worker answered within MaxAge and, if not, why.
func (w *Workers) Ready() (bool, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.lastSeen.IsZero() && time.Since(w.lastSeen) <= w.opts.MaxAge {
		return true, fmt.Sprintf("%d worker(s) answered discovery %v ago", w.count, time.Since(w.lastSeen).Round(time.Millisecond))
	}
	if w.lastSeen.IsZero() {
		return false, w.why
	}
	return false, fmt.Sprintf("%s; the last answer was %v ago", w.why, time.Since(w.lastSeen).Round(time.Second))
}

// An Option adjusts the handler NewServer returns.
type Option func(*options)

type options struct {
	workers *Workers
}

// WithWorkers makes /readyz require, besides NATS, a worker that answered
// discovery recently. The caller runs w.
func WithWorkers(w *Workers) Option {
	return func(o *options) { o.workers = w }
}

// handleReady serves /readyz: 200 while connected to NATS and, when
// workers is set, while a worker answers discovery; otherwise 503 with
// the reason in the body.
func handleReady(nc *nats.Conn, workers *Workers) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !nc.IsConnected() {
			http.Error(w, "not ready: nats not connected", http.StatusServiceUnavailable)
			return
		}
		if workers == nil {
			w.Write([]byte("ready\n"))
			return
		}
		ok, why := workers.Ready()
		if !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready: " + why + "\n"))
	})
}
