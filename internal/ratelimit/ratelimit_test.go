package ratelimit

import (
	"context"
	"testing"
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
	l := New(Options{Rate: 40, Burst: 4, MaxQueue: time.Second}, []string{"wxa"}, logging.Discard())
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
	// 10/s with a burst of 1 over 300ms: the first at once, then ~3 more.
	if ok < 2 || ok > 5 || shed == 0 {
		t.Errorf("%d allowed, %d shed in 300ms at 10/s", ok, shed)
	}
	if l.Wait(ctx, "not-an-app") != nil {
		t.Error("unknown appids are for the caller to refuse, not the limiter")
	}
}
