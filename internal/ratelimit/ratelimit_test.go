package ratelimit

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// TestBlockSizeBoundsTheWindow: a block never holds more than Burst slots,
// which is what keeps any window within Rate+Burst.
func TestBlockSizeBoundsTheWindow(t *testing.T) {
	for _, c := range []struct {
		rate  float64
		burst int
	}{{50, 5}, {50, 1}, {50, 0}, {1000, 1000}, {2, 1}, {0.5, 1}} {
		l := New(Options{Rate: c.rate, Burst: c.burst}, []string{"wxa"}, logging.Discard())
		burst := l.opts.Burst
		var total int
		now := time.Unix(0, 0)
		for k := range int64(1000) {
			n := len(l.slotsOf(k, c.rate, now))
			if n > burst {
				t.Errorf("rate %v burst %d: block %d holds %d slots", c.rate, c.burst, k, n)
			}
			total += n
		}
		if want := c.rate * 1000 * l.block.Seconds(); float64(total) < want-1 || float64(total) > want+1 {
			t.Errorf("rate %v: 1000 blocks hold %d slots, want %.0f", c.rate, total, want)
		}
	}
}

// TestSlotsAreEvenlySpaced: within a block, slots keep the rate's spacing,
// so a worker never bunches its block's calls.
func TestSlotsAreEvenlySpaced(t *testing.T) {
	l := New(Options{Rate: 50, Burst: 5}, []string{"wxa"}, logging.Discard())
	slots := l.slotsOf(10, 50, time.Unix(0, 0))
	for i := 1; i < len(slots); i++ {
		if gap := slots[i].Sub(slots[i-1]); gap != 20*time.Millisecond {
			t.Errorf("gap %v, want 20ms", gap)
		}
	}
	// Slots already past are not handed out.
	if got := l.slotsOf(10, 50, l.blockStart(10).Add(50*time.Millisecond)); len(got) != 2 {
		t.Errorf("%d slots left half way through the block, want 2", len(got))
	}
}

// TestLocalFallbackSharesTheRate: without the bucket, a worker that knows
// of 4 workers allows a quarter of the rate, and sheds at once (with a
// Retry-After) what its deadline cannot wait for.
func TestLocalFallbackSharesTheRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(Options{Rate: 40, Burst: 4, MaxQueue: time.Second, MinAttempt: 10 * time.Millisecond}, []string{"wxa"}, logging.Discard())
		l.SetPeers(4)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		ok, shed := 0, 0
		for range 20 {
			switch e := l.Wait(ctx, "wxa"); {
			case e == nil:
				ok++
			case e.Kind == protocol.KindRateLimited && e.RetryAfter > 0:
				shed++
			default:
				t.Fatalf("unexpected %v", e)
			}
		}
		// 10/s with a burst of 1 over 300ms: the first at once, then
		// one every 100ms while the deadline allows waiting for it.
		if ok != 3 || shed == 0 {
			t.Errorf("%d allowed, %d shed in 300ms at 10/s; want 3 allowed", ok, shed)
		}
		if l.Wait(ctx, "not-an-app") != nil {
			t.Error("unknown appids are for the caller to refuse, not the limiter")
		}
	})
}

// TestAdaptiveRule: halve on pushback at most once a second, not below
// the floor; climb by a tenth of Rate a second once pushback has been
// quiet for 2s; never above Rate.
func TestAdaptiveRule(t *testing.T) {
	l := New(Options{Rate: 40}, []string{"wxa"}, logging.Discard())
	for _, c := range []struct {
		cur                        float64
		sinceChange, sincePushback time.Duration
		pushback                   bool
		want                       float64
	}{
		{40, time.Hour, 0, true, 20},
		{20, 500 * time.Millisecond, 0, true, 20}, // halved just now
		{2.5, time.Hour, 0, true, 2},              // the floor: 5% of 40
		{2, time.Hour, 0, true, 2},
		{20, time.Hour, 3 * time.Second, false, 24},
		{20, time.Hour, time.Second, false, 20}, // pushback too recent
		{20, 999 * time.Millisecond, time.Hour, false, 20},
		{39, time.Hour, time.Hour, false, 40},
		{40, time.Hour, time.Hour, false, 40},
	} {
		if got := l.nextRate(c.cur, c.sinceChange, c.sincePushback, c.pushback); got != c.want {
			t.Errorf("%+v: got %v", c, got)
		}
	}
	// The per-worker fallback follows the same rule, on the clock.
	synctest.Test(t, func(t *testing.T) {
		l := New(Options{Rate: 40}, []string{"wxa"}, logging.Discard())
		ctx := context.Background()
		time.Sleep(2 * time.Second)
		l.Feedback(ctx, "wxa", 45011)
		if r := l.Rates()["wxa"]; r != 20 {
			t.Fatalf("after a 45011: %v, want 20", r)
		}
		l.Feedback(ctx, "wxa", 45011)
		if r := l.Rates()["wxa"]; r != 20 {
			t.Fatalf("a second 45011 at once: %v, want 20", r)
		}
		time.Sleep(3 * time.Second)
		l.Wait(ctx, "wxa")
		if r := l.Rates()["wxa"]; r != 24 {
			t.Fatalf("3s later: %v, want 24", r)
		}
	})
}

// Concurrent callers on one worker share its claims: one claims while
// the others wait for its block's slots, so the worker does not take a
// block per caller (slots it would leave unused, and the pool short).
func TestConcurrentCallersShareClaims(t *testing.T) {
	l, kv := boundLimiter(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	const callers = 20
	errs := make(chan error, callers)
	for range callers {
		go func() {
			if e := l.Wait(ctx, "wxa"); e != nil {
				errs <- e
				return
			}
			errs <- nil
		}()
	}
	for range callers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	blocks := 0
	for k := range keys.Keys() {
		if strings.HasPrefix(k, "b.") {
			blocks++
		}
	}
	// 20 calls at 5 slots a block: 4 blocks, one more for a block
	// claimed part-way through.
	if blocks > callers/5+1 {
		t.Errorf("%d blocks claimed for %d calls of 5 slots a block", blocks, callers)
	}
}
