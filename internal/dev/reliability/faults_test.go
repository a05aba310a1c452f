package reliability_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/embednats"
	"github.com/wxlogin/wxlogin/internal/exchange"
)

// TestWorkerKilledMidRequest: a worker dies (its connection closes with
// exchanges in flight, which never reply) while WeChat hangs. Every
// request still gets an answer within EDGE_TIMEOUT + slack, and with a
// second worker, new requests keep succeeding.
//
// Protection: the edge's own deadline on each request (edge.Config.Timeout
// in handleOpenID). Without it the requests held by the dead worker would
// wait until the client gave up.
func TestWorkerKilledMidRequest(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	cfg := b.WorkerConfig()
	victim := b.StartWorker(cfg)
	survivor := b.StartWorker(cfg)
	const budget = 1500 * time.Millisecond
	base := serveEdge(t, edgeConn(b), edge.Config{Timeout: budget}, b.Logger)
	c := newClient(t, 64)

	const n = 24
	replies := make(chan reply, n)
	for i := range n {
		go func() { replies <- get(c, base+"/v1/openid?code="+uniq(fmt.Sprintf("fx-hang-killed%d", i))) }()
	}
	testbed.Eventually(t, 5*time.Second, "requests in flight on both workers", func() bool {
		v, s := victim.Stats().InFlight, survivor.Stats().InFlight
		return v > 0 && s > 0 && v+s == n
	})
	held := victim.Stats().InFlight
	victim.NC.Close() // the kill: whatever it holds is never answered

	for range n {
		r := <-replies
		if r.err != nil || r.status != http.StatusGatewayTimeout || r.kind() != "timeout" {
			t.Errorf("hanging request: %v, want 504 timeout", r)
		}
		if r.took > budget+slack {
			t.Errorf("answer after %v, EDGE_TIMEOUT %v", r.took, budget)
		}
	}
	t.Logf("the dead worker held %d of %d requests", held, n)

	// Service continues on the survivor, at once: the server dropped the
	// dead worker's subscription with its connection.
	for i := range 10 {
		code := uniq(fmt.Sprintf("after-kill%d", i))
		if r := get(c, base+"/v1/openid?code="+code); !r.ok(code) {
			t.Fatalf("after the kill: %v", r)
		}
	}
}

// load sends requests with fresh codes from a few goroutines until
// stopped, and keeps every reply with the time it started.
type load struct {
	stop    atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	replies []timedReply
	label   atomic.Value // string: the phase requests started in
}

type timedReply struct {
	reply
	code  string
	at    time.Time
	phase string
}

func startLoad(c *http.Client, base string, senders int) *load {
	l := &load{}
	l.label.Store("before")
	for i := range senders {
		l.wg.Go(func() {
			for j := 0; !l.stop.Load(); j++ {
				code := uniq(fmt.Sprintf("load%d-%d", i, j))
				phase := l.label.Load().(string)
				at := time.Now()
				r := get(c, base+"/v1/openid?code="+code)
				l.mu.Lock()
				l.replies = append(l.replies, timedReply{r, code, at, phase})
				l.mu.Unlock()
				if r.status != http.StatusOK {
					// A failing service answers fast; do not spin.
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	return l
}

func (l *load) phase(p string) { l.label.Store(p) }

func (l *load) successesSince(at time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.replies {
		if r.at.After(at) && r.ok(r.code) {
			n++
		}
	}
	return n
}

func (l *load) finish() []timedReply {
	l.stop.Store(true)
	l.wg.Wait()
	return l.replies
}

// checkBounded fails on any reply that is not part of the contract, took
// longer than budget + slack, or is a 200 with someone else's openid.
func checkBounded(t *testing.T, replies []timedReply, budget time.Duration) map[string]int {
	t.Helper()
	kinds := map[string]int{}
	for _, r := range replies {
		kinds[r.phase+"/"+r.kind()]++
		switch {
		case r.err != nil:
			t.Errorf("%s: %v", r.phase, r.reply)
		case r.status == http.StatusOK && !r.ok(r.code):
			t.Errorf("%s: 200 with the wrong openid: %v", r.phase, r.reply)
		case r.status != http.StatusOK && r.status != http.StatusServiceUnavailable && r.status != http.StatusGatewayTimeout:
			t.Errorf("%s: unexpected %v", r.phase, r.reply)
		}
		if r.took > budget+slack {
			t.Errorf("%s: answer after %v, EDGE_TIMEOUT %v: %v", r.phase, r.took, budget, r.reply)
		}
	}
	return kinds
}

// TestNATSRestartUnderLoad: the NATS server goes away under load and
// comes back on the same port. During the outage the edge answers 503 at
// once; afterwards edge and worker reconnect by themselves and requests
// succeed within seconds; no request ever waits past its budget.
//
// Protections: natsconn.Resilient (reconnect for ever), the worker's
// subscription being restored on reconnect, and the edge failing fast
// while disconnected (its IsConnected check and no reconnect buffer):
// without the last, outage requests would wait for EDGE_TIMEOUT.
func TestNATSRestartUnderLoad(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	w := b.StartWorker(b.WorkerConfig())
	nc := edgeConn(b)
	const budget = 2 * time.Second
	base := serveEdge(t, nc, edge.Config{Timeout: budget}, b.Logger)
	l := startLoad(newClient(t, 16), base, 6)
	defer l.finish()

	start := time.Now()
	testbed.Eventually(t, 10*time.Second, "successes before the outage", func() bool { return l.successesSince(start) >= 20 })

	port := b.NATS.Addr().(*net.TCPAddr).Port
	b.NATS.Shutdown()
	b.NATS.WaitForShutdown()
	testbed.Eventually(t, 5*time.Second, "edge sees the outage", func() bool { return !nc.IsConnected() })
	l.phase("outage")
	outage := time.Now()
	// Let the outage last long enough for many requests to hit it.
	testbed.Eventually(t, 5*time.Second, "requests during the outage", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		n := 0
		for _, r := range l.replies {
			if r.phase == "outage" {
				n++
			}
		}
		return n >= 30
	})

	restarted, err := embednats.Start(embednats.Options{Port: port, JetStream: true, StoreDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatalf("restarting NATS on port %d: %v", port, err)
	}
	t.Cleanup(func() { restarted.Shutdown(); restarted.WaitForShutdown() })
	l.phase("after")
	back := time.Now()
	testbed.Eventually(t, 10*time.Second, "a success after the restart", func() bool { return l.successesSince(back) > 0 })
	recovered := time.Since(back)
	testbed.Eventually(t, 10*time.Second, "20 successes after the restart", func() bool { return l.successesSince(back) >= 20 })
	if !w.NC.IsConnected() {
		t.Error("worker not reconnected")
	}

	replies := l.finish()
	kinds := checkBounded(t, replies, budget)
	for _, r := range replies {
		// Requests sent while the edge knew it was disconnected must not
		// wait: 503 at once. (Those in flight when the server went away
		// get 503 at once too: internal/edge TestInFlightFailFastOnNATSLoss.)
		if r.phase == "outage" && r.at.After(outage) && r.at.Add(r.took).Before(back) {
			if r.status != http.StatusServiceUnavailable || r.took > 500*time.Millisecond {
				t.Errorf("during the outage: %v, want a fast 503", r.reply)
			}
			if r.retryAfter == "" {
				t.Errorf("503 without Retry-After: %v", r.reply)
			}
		}
	}
	t.Logf("first success %v after the restart; replies by phase and kind: %v", recovered.Round(time.Millisecond), kinds)
}

// TestWorkerDrainsOnSIGTERM: a worker asked to stop (exchange.Serve's
// context ends, as signal.NotifyContext does on SIGTERM in cmd/worker)
// with requests in flight answers every one of them, then returns within
// the longest remaining budget.
//
// Protection: the shutdown order in exchange.Worker.Shutdown (stop
// intake, wait for the exchanges in flight, then drain). Closing the
// connection first would lose every in-flight reply (504s here).
func TestWorkerDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	ctx, sigterm := context.WithCancel(context.Background())
	defer sigterm()
	served := make(chan error, 1)
	go func() {
		served <- exchange.Serve(ctx, b.WorkerConfig(), b.Upstream.URL, "", b.Connect("wxlogin-worker"), b.Logger)
	}()
	base := serveEdge(t, edgeConn(b), edge.Config{Timeout: 5 * time.Second}, b.Logger)
	c := newClient(t, 64)
	testbed.Eventually(t, 10*time.Second, "worker serving", func() bool {
		code := uniq("drain-warmup")
		return get(c, base+"/v1/openid?code="+code).ok(code)
	})

	const n, upstream = 40, 1500 * time.Millisecond
	codes := make([]string, n)
	replies := make([]reply, n)
	var wg sync.WaitGroup
	for i := range n {
		codes[i] = uniq(fmt.Sprintf("fx-slow%d-drain%d", upstream.Milliseconds(), i))
		wg.Go(func() { replies[i] = get(c, base+"/v1/openid?code="+codes[i]) })
	}
	testbed.Eventually(t, 5*time.Second, "every request at WeChat", func() bool {
		for _, code := range codes {
			if b.Fake.Calls(code) == 0 {
				return false
			}
		}
		return true
	})
	sigterm()
	stopping := time.Now()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("worker: %v", err)
		}
	case <-time.After(upstream + 5*time.Second):
		t.Fatal("worker still running 5s after its last exchange should have ended")
	}
	if took := time.Since(stopping); took > upstream+slack {
		t.Errorf("worker took %v to stop; its longest exchange had at most %v left", took, upstream)
	}
	wg.Wait()
	for i, r := range replies {
		if !r.ok(codes[i]) {
			t.Errorf("in flight at SIGTERM: %v", r)
		}
	}
	// Gone: a new request finds no worker and says so at once.
	if r := get(c, base+"/v1/openid?code="+uniq("after-stop")); r.status != http.StatusServiceUnavailable || r.took > slack {
		t.Errorf("after the worker stopped: %v, want a fast 503", r)
	}
}
