package ratelimit

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/dev/natstest"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/metrics"
)

// boundLimiter returns a limiter at 50/s bound to a fresh bucket, and the
// bucket as anyone with write rights sees it.
func boundLimiter(t *testing.T, opts Options) (*Limiter, jetstream.KeyValue) {
	t.Helper()
	ns := natstest.Start(t, false)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	opts.Rate, opts.Burst, opts.Bucket = 50, 5, "rl"
	l := New(opts, []string{"wxa"}, logging.Discard())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Bind(ctx, nc); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, "rl")
	if err != nil {
		t.Fatal(err)
	}
	return l, kv
}

// Rate state written into the bucket by an attacker neither crashes a
// worker nor stops its logins: before, the first value panicked with
// makeslice on the next call, and the second made every call 429 for good.
func TestPlantedRateStateIsHarmless(t *testing.T) {
	for _, planted := range []string{
		`{"rate":1e300,"at":0}`,
		`{"rate":1e-9,"at":9e18}`,
		`{"rate":1e-9,"at":9000000000000000000}`, // the same, as an integer
		`{"rate":-1,"at":-9e18}`,
		`not json`,
	} {
		t.Run(planted, func(t *testing.T) {
			l, kv := boundLimiter(t, Options{})
			if _, err := kv.Put(context.Background(), "r."+hex.EncodeToString([]byte("wxa")), []byte(planted)); err != nil {
				t.Fatal(err)
			}
			// 10 calls at 50/s take 0.2s; a second is plenty.
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			for i := range 10 {
				if e := l.Wait(ctx, "wxa"); e != nil {
					t.Fatalf("call %d after %s was planted: %v", i, planted, e)
				}
			}
			if r := l.Rates()["wxa"]; r != 50 {
				t.Errorf("effective rate %v after %s was planted, want the full 50", r, planted)
			}
			// The planted value does not stop the pool from backing off:
			// the change overwrites it.
			l.Feedback(ctx, "wxa", 45011)
			if r := l.Rates()["wxa"]; r != 25 {
				t.Errorf("effective rate %v after a 45011, want 25", r)
			}
		})
	}
}

// Values that carry a valid MAC are still checked for range: only what a
// worker of this pool could have written is taken.
func TestStoredRateIsClamped(t *testing.T) {
	l := New(Options{Rate: 50, Burst: 5, Bucket: "rl"}, []string{"wxa"}, logging.Discard())
	a := l.apps["wxa"]
	now := time.Unix(1_800_000_000, 0)
	for _, c := range []struct {
		value string
		ok    bool
	}{
		{`{"rate":25,"at":1800000000000000000}`, true},
		{`{"rate":50,"at":1800000004000000000}`, true},  // a little ahead: clock skew
		{`{"rate":2.5,"at":0}`, true},                   // the floor
		{`{"rate":2.4,"at":0}`, false},                  // below the floor
		{`{"rate":50.1,"at":0}`, false},                 // above WX_RATE
		{`{"rate":1e300,"at":0}`, false},                // makeslice, before
		{`{"rate":25,"at":1800000060000000000}`, false}, // a minute ahead: never raised again
		{`{"rate":25,"at":-1}`, false},
		{`{"rate":"25"}`, false},
		{`{"rate":25,"at":0,"pad":"` + strings.Repeat("x", 200) + `"}`, false},
	} {
		_, ok := l.decodeEffective(a, "r.x", a.mac.Sign("rl", "r.x", []byte(c.value)), now)
		if ok != c.ok {
			t.Errorf("%s: taken %v, want %v", c.value, ok, c.ok)
		}
	}
	if _, ok := l.decodeEffective(a, "r.y", a.mac.Sign("rl", "r.x", []byte(`{"rate":25,"at":0}`)), now); ok {
		t.Error("a record moved to another key was taken")
	}
}

// FuzzDecodeEffective feeds arbitrary bytes to the decoder of stored rate
// state, raw and under a valid MAC: no panic, and what it takes is within
// range; slotsOf stays bounded whatever rate it is handed.
func FuzzDecodeEffective(f *testing.F) {
	for _, seed := range []string{`{"rate":1e300,"at":0}`, `{"rate":1e-9,"at":9e18}`, `{"rate":25,"at":1}`, `null`, ``, `{"rate":NaN}`} {
		f.Add([]byte(seed))
	}
	l := New(Options{Rate: 50, Burst: 5, Bucket: "rl"}, []string{"wxa"}, logging.Discard())
	a := l.apps["wxa"]
	now := time.Now()
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, ok := l.decodeEffective(a, "r.x", b, now); ok {
			t.Fatalf("took unsigned %q", b)
		}
		v, ok := l.decodeEffective(a, "r.x", a.mac.Sign("rl", "r.x", b), now)
		if ok && (v.Rate < l.floor() || v.Rate > 50 || v.At > now.Add(maxSkew).UnixNano()) {
			t.Fatalf("took %q as %+v", b, v)
		}
		var rate float64
		if len(b) >= 8 {
			rate = math.Float64frombits(binary.LittleEndian.Uint64(b))
		}
		if n := len(l.slotsOf(int64(len(b))<<20, rate, time.Unix(0, 0))); n > 6 {
			t.Fatalf("rate %v: %d slots in a block of at most 5", rate, n)
		}
	})
}

// A full rate-limit bucket does not stop logins: the worker limits on its
// own and counts what the bucket refused.
func TestFullRateBucketFallsBack(t *testing.T) {
	reg := prometheus.NewRegistry()
	l, kv := boundLimiter(t, Options{MaxBytes: 1 << 16, Metrics: metrics.NewStores(reg)})
	for i := 0; ; i++ {
		if _, err := kv.Put(context.Background(), "fill."+strconv.Itoa(i), make([]byte, 512)); err != nil {
			break
		}
		if i > 10_000 {
			t.Fatal("the bucket has no byte limit")
		}
	}
	for i := 0; ; i++ { // down to the last bytes
		if _, err := kv.Put(context.Background(), "f."+strconv.Itoa(i), nil); err != nil {
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if e := l.Wait(ctx, "wxa"); e != nil {
		t.Fatalf("with the bucket full: %v", e)
	}
	if n := unstoredTotal(t, reg); n < 1 {
		t.Errorf("%v unstored records counted", n)
	}
}

func unstoredTotal(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() == "wxlogin_store_unstored_total" {
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}
