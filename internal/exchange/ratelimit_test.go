package exchange_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

const (
	poolRate  = 50
	poolBurst = 5
)

// callLog records when the upstream saw each call.
type callLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (c *callLog) add(call fakewx.Call) {
	c.mu.Lock()
	c.times = append(c.times, call.At)
	c.mu.Unlock()
}

func (c *callLog) snapshot() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]time.Time(nil), c.times...)
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// maxWindow is the most calls in any sliding one-second window.
func maxWindow(times []time.Time) int {
	best, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= time.Second {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

func countBetween(times []time.Time, from, to time.Time) int {
	n := 0
	for _, t := range times {
		if !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return n
}

// flood keeps far more requests than poolRate going until ctx ends; a
// rate-limited requester waits as Retry-After says (at most a second), as
// a polite client would.
func flood(ctx context.Context, b *testbed.Bed, requesters int) *sync.WaitGroup {
	nc := b.Connect("flood")
	var wg sync.WaitGroup
	var seq atomic.Int64
	for range requesters {
		wg.Go(func() {
			for ctx.Err() == nil {
				code := fmt.Sprintf("flood-%d", seq.Add(1))
				_, e := b.Request(nc, protocol.Request{Code: code}, 2*time.Second)
				if e != nil && e.Kind == protocol.KindRateLimited {
					select {
					case <-ctx.Done():
					case <-time.After(min(max(e.RetryAfter, 50*time.Millisecond), time.Second)):
					}
				}
			}
		})
	}
	return &wg
}

func rateWorkers(t testing.TB, b *testbed.Bed, n int, tune func(*exchange.Config)) []*testbed.Worker {
	t.Helper()
	var ws []*testbed.Worker
	for range n {
		cfg := b.WorkerConfig()
		cfg.Rate, cfg.Burst, cfg.NoDedup = poolRate, poolBurst, true
		if tune != nil {
			tune(&cfg)
		}
		w := b.StartWorker(cfg)
		ws = append(ws, w)
	}
	return ws
}

func waitShared(t testing.TB, ws []*testbed.Worker) {
	t.Helper()
	for _, w := range ws {
		testbed.Eventually(t, 10*time.Second, "rate limit bound", func() bool { return w.RateMode() == "shared" })
	}
}

// measurePool floods n workers for d and returns the upstream call times
// and the flood's start.
func measurePool(t testing.TB, n int, d time.Duration) ([]time.Time, time.Time) {
	log := &callLog{}
	b := testbed.New(t, testbed.Options{OnCall: log.add})
	waitShared(t, rateWorkers(t, b, n, nil))
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	flood(ctx, b, 120).Wait()
	return log.snapshot(), start
}

// TestPoolRateHolds: with 1, 2 and 4 workers the pool's calls stay within
// WX_RATE+WX_BURST in every one-second window and use ≥ 90% of WX_RATE.
func TestPoolRateHolds(t *testing.T) {
	for _, n := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("%d workers", n), func(t *testing.T) {
			times, start := measurePool(t, n, 3500*time.Millisecond)
			if w := maxWindow(times); w > poolRate+poolBurst {
				t.Errorf("max one-second window %d calls, limit %d+%d", w, poolRate, poolBurst)
			}
			// Skip the first half second: the flood is still ramping up.
			got := countBetween(times, start.Add(500*time.Millisecond), start.Add(3500*time.Millisecond))
			if got < 3*poolRate*9/10 {
				t.Errorf("%d calls in 3s, want ≥ %d (90%% of %d/s)", got, 3*poolRate*9/10, poolRate)
			}
		})
	}
}

// TestPoolRateRecoversWhenAWorkerStops: the survivors take over the dead
// worker's share within a few seconds; nothing is permanently lost.
func TestPoolRateRecoversWhenAWorkerStops(t *testing.T) {
	log := &callLog{}
	b := testbed.New(t, testbed.Options{OnCall: log.add})
	ws := rateWorkers(t, b, 2, nil)
	waitShared(t, ws)
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Second)
	defer cancel()
	wg := flood(ctx, b, 120)
	time.Sleep(2 * time.Second) // the flood runs; this is the test's timeline
	stopped := time.Now()
	go ws[0].Stop()
	wg.Wait()
	times := log.snapshot()
	// From 3s after the stop to 5s after: at least 90% of the rate.
	got := countBetween(times, stopped.Add(3*time.Second), stopped.Add(5*time.Second))
	if got < 2*poolRate*9/10 {
		t.Errorf("%d calls between 3s and 5s after a worker stopped, want ≥ %d", got, 2*poolRate*9/10)
	}
	if w := maxWindow(times); w > poolRate+poolBurst {
		t.Errorf("max window %d", w)
	}
}

// TestPoolBacksOffOnFrequencyLimit: a 45011 storm lowers the pool's
// effective rate; healthy answers bring it back.
func TestPoolBacksOffOnFrequencyLimit(t *testing.T) {
	var storm atomic.Bool
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{testbed.App}})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if storm.Load() {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(w, `{"errcode":45011,"errmsg":"api minute-quota reach limit, rid: 1-2-3"}`)
			return
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(upstream.Close)
	b := testbed.New(t, testbed.Options{Upstream: upstream})
	ws := rateWorkers(t, b, 2, func(c *exchange.Config) { c.MaxAttempts = 1 })
	waitShared(t, ws)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	wg := flood(ctx, b, 40)
	defer wg.Wait()
	defer cancel()

	rate := func() float64 { return ws[1].Stats().EffectiveRate[testbed.App.AppID] }
	go func() {
		for ctx.Err() == nil {
			t.Logf("effective rate %v, storm %v", rate(), storm.Load())
			time.Sleep(500 * time.Millisecond)
		}
	}()
	storm.Store(true)
	testbed.Eventually(t, 5*time.Second, "rate lowered during the storm", func() bool { return rate() <= poolRate/2 })
	storm.Store(false)
	testbed.Eventually(t, 12*time.Second, "rate back to WX_RATE", func() bool { return rate() == poolRate })
	if !containsLog(b, "pool rate changed") {
		t.Error("rate changes are not logged")
	}
}

// TestRateFallbackWithoutJetStream: without a bucket each worker takes
// WX_RATE divided by the workers it discovers, so the pool still holds.
func TestRateFallbackWithoutJetStream(t *testing.T) {
	log := &callLog{}
	b := testbed.New(t, testbed.Options{NoJS: true, OnCall: log.add})
	ws := rateWorkers(t, b, 2, nil)
	for _, w := range ws {
		testbed.Eventually(t, 10*time.Second, "local mode", func() bool { return w.RateMode() == "local" })
	}
	// Peers are counted every 2s; the first worker learns of the second
	// on its next round.
	testbed.Eventually(t, 10*time.Second, "both workers know of two", func() bool {
		return ws[0].Stats().WorkersKnown == 2 && ws[1].Stats().WorkersKnown == 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	flood(ctx, b, 60).Wait()
	if w := maxWindow(log.snapshot()); w > poolRate+poolBurst {
		t.Errorf("without JetStream: max window %d, limit %d+%d", w, poolRate, poolBurst)
	}
	if !containsLog(b, "rate limit is OFF") {
		t.Error("fallback not logged")
	}
}

// BenchmarkPoolRate prints the achieved upstream rate and the largest
// one-second window for 1, 2 and 4 workers at WX_RATE=50.
func BenchmarkPoolRate(b *testing.B) {
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			var achieved, worst float64
			for range b.N {
				times, start := measurePool(b, n, 4*time.Second)
				achieved = float64(countBetween(times, start.Add(time.Second), start.Add(4*time.Second))) / 3
				worst = float64(maxWindow(times))
			}
			b.ReportMetric(achieved, "calls/s")
			b.ReportMetric(worst, "max-calls/1s-window")
			b.ReportMetric(poolRate, "WX_RATE")
		})
	}
}

func containsLog(b *testbed.Bed, s string) bool { return strings.Contains(b.Logs.String(), s) }
