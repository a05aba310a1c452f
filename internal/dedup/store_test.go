package dedup

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxlogin/wxlogin/internal/dev/natstest"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/seal"
)

var testMAC = seal.NewMAC([]byte("dedup-test-key"))

func testRef(name string) Ref { return Ref{Name: name, mac: testMAC} }

// bound returns a Store bound to a fresh bucket on a fresh server, its
// metrics, and a client connection that writes the bucket as anyone with
// the rights could.
func bound(t *testing.T, opts Options) (*Store, jetstream.KeyValue, *prometheus.Registry) {
	t.Helper()
	ns := natstest.Start(t, false)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	reg := prometheus.NewRegistry()
	opts.Metrics = metrics.NewStores(reg)
	if opts.Bucket == "" {
		opts.Bucket = "answers"
	}
	s := New(opts, logging.Discard())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Bind(ctx, nc); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, opts.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return s, kv, reg
}

func counted(t *testing.T, reg *prometheus.Registry, name, bucket string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "bucket" && l.GetValue() == bucket {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// run is one exchange through the store: the answer given, and whether
// this caller had to call WeChat (which answers with upstream).
func run(t *testing.T, s *Store, ref Ref, upstream protocol.Result) (protocol.Result, *protocol.Error, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	lead, res, e, _ := s.Begin(ctx, ref)
	if lead == nil {
		return res, e, false
	}
	res, e = lead.End(ctx, upstream, nil)
	return res, e, true
}

// What someone with write access to the bucket plants is never an
// answer: a forged value, a valid answer moved to another code's key, a
// valid MAC over nonsense. Each is counted, and the code is exchanged
// for real.
func TestPlantedValuesAreNotAnswers(t *testing.T) {
	s, kv, reg := bound(t, Options{LocalMax: 1})
	ctx := context.Background()
	victim, attacker := testRef(Key("s", "wxapp", "victim-code")), testRef(Key("s", "wxapp", "attacker-code"))
	// The attacker's own login stores a valid answer for their code.
	if _, e, called := run(t, s, attacker, protocol.Result{OpenID: "o-attacker"}); e != nil || !called {
		t.Fatalf("attacker's own login: %v, called %v", e, called)
	}
	stolen, err := kv.Get(ctx, attacker.Name)
	if err != nil {
		t.Fatal(err)
	}
	for i, planted := range [][]byte{
		[]byte(`{"openid":"o-attacker"}`), // no MAC at all
		stolen.Value(),                    // valid, but for another key
		testMAC.Sign("answers", victim.Name, []byte(`{"openid":"o a\nb"}`)),              // authentic, out of range
		testMAC.Sign("answers", victim.Name, []byte(`{"kind":"timeout","message":"x"}`)), // not a terminal verdict
		testMAC.Sign("other-bucket", victim.Name, []byte(`{"openid":"o-attacker"}`)),     // another bucket's
	} {
		if _, err := kv.Put(ctx, victim.Name, planted); err != nil {
			t.Fatal(err)
		}
		s.cache = newCache(time.Minute, 2) // cold, as after a restart
		want := protocol.Result{OpenID: "o-victim"}
		res, e, called := run(t, s, victim, want)
		if e != nil || res != want || !called {
			t.Fatalf("planted value %d: got %+v %v (called WeChat: %v), want the real exchange", i, res, e, called)
		}
		if n := counted(t, reg, "wxlogin_store_rejected_total", "answers"); n != float64(i+1) {
			t.Fatalf("planted value %d: %v rejections counted", i, n)
		}
		// The real answer replaced the planted one: the next worker gets it.
		s.cache = newCache(time.Minute, 2)
		if res, e, called := run(t, s, victim, protocol.Result{OpenID: "wrong"}); e != nil || res != want || called {
			t.Fatalf("planted value %d, then a retry: %+v %v called %v", i, res, e, called)
		}
		if err := kv.Purge(ctx, victim.Name); err != nil {
			t.Fatal(err)
		}
	}
}

// A planted claim does not block a code: a claim without a valid MAC is
// taken over at once, not waited out.
func TestPlantedClaimIsTakenOver(t *testing.T) {
	s, kv, _ := bound(t, Options{ClaimTTL: time.Minute})
	ref := testRef(Key("s", "wxapp", "code"))
	if _, err := kv.Put(context.Background(), ref.Name, claimValue); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if res, e, called := run(t, s, ref, protocol.Result{OpenID: "o"}); e != nil || res.OpenID != "o" || !called {
		t.Fatalf("got %+v %v called %v", res, e, called)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("took %v behind a forged claim", took)
	}
}

// A valid claim of a live worker is waited for, and its answer given.
func TestValidClaimIsWaitedFor(t *testing.T) {
	s, kv, _ := bound(t, Options{ClaimTTL: time.Minute})
	ref := testRef(Key("s", "wxapp", "code"))
	rev, err := kv.Create(context.Background(), ref.Name, testMAC.Sign("answers", ref.Name, claimValue))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond) // the other worker's exchange
		kv.Update(context.Background(), ref.Name, testMAC.Sign("answers", ref.Name, []byte(`{"openid":"o-first"}`)), rev)
	}()
	if res, e, called := run(t, s, ref, protocol.Result{OpenID: "o-second"}); e != nil || res.OpenID != "o-first" || called {
		t.Fatalf("got %+v %v called %v, want the first worker's answer", res, e, called)
	}
}

// A full bucket does not stop logins: the code is served (per worker
// only), the record it could not store is counted, nothing hangs.
func TestFullBucketStillServes(t *testing.T) {
	const limit = 64 << 10
	s, kv, reg := bound(t, Options{MaxBytes: limit})
	ctx := context.Background()
	// An exchange under way when the bucket fills up still stores its
	// answer, in its claim's room.
	early := testRef(Key("s", "wxapp", "claimed-before-full"))
	lead, _, _, _ := s.Begin(ctx, early)
	if lead == nil || lead.kv == nil {
		t.Fatal("no claim in an empty bucket")
	}
	fill(t, kv)
	used := protocol.New(protocol.KindCodeUsed, "%s", strings.Repeat("long message ", 100))
	used.WxErrcode = 40163
	lead.End(ctx, protocol.Result{}, used)
	testbedEventually(t, "the answer replaces the claim", func() bool {
		e, err := kv.Get(ctx, early.Name)
		if err != nil {
			return false
		}
		a, ok := s.open(early, e.Value())
		return ok && a.Err != nil && a.Err.Kind == protocol.KindCodeUsed
	})
	fill(t, kv)

	ref := testRef(Key("s", "wxapp", "code-when-full"))
	start := time.Now()
	res, e, called := run(t, s, ref, protocol.Result{OpenID: "o"})
	if e != nil || res.OpenID != "o" || !called {
		t.Fatalf("full bucket: %+v %v called %v", res, e, called)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("a login took %v with the bucket full", took)
	}
	if n := counted(t, reg, "wxlogin_store_unstored_total", "answers"); n != 1 {
		t.Errorf("%v unstored records counted, want 1", n)
	}
	// The worker still remembers it.
	if res, _, called := run(t, s, ref, protocol.Result{OpenID: "wrong"}); res.OpenID != "o" || called {
		t.Errorf("a retry on the same worker: %+v called %v", res, called)
	}
}

// fill writes kv up to its last byte, as answers would.
func fill(t *testing.T, kv jetstream.KeyValue) {
	t.Helper()
	for i, size := 0, 1000; size > 0; size /= 2 {
		for ; ; i++ {
			if _, err := kv.Put(context.Background(), "fill"+strconv.Itoa(i), []byte(strings.Repeat("x", size))); err != nil {
				break
			}
			if i > 10_000 {
				t.Fatal("the bucket takes everything: no byte limit?")
			}
		}
	}
}

func testbedEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FuzzOpen feeds arbitrary bytes to the decoder of stored answers, raw
// (as a forger would write them) and under a valid MAC (as a bug or a
// stolen key could): it never panics, and whatever it takes for an
// answer is within bounds.
func FuzzOpen(f *testing.F) {
	for _, seed := range []string{
		`{"openid":"oA","unionid":"uA"}`, `{"claim":true}`, `{"kind":"code_used","message":"m","errcode":40163}`,
		`{"openid":""}`, `{"kind":"timeout"}`, `{"openid":"` + strings.Repeat("o", 200) + `"}`, `null`, `[]`, ``, `{"claim":true,"openid":"o"}`,
	} {
		f.Add([]byte(seed))
	}
	s := New(Options{Bucket: "answers"}, logging.Discard())
	ref := testRef("key")
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, ok := s.open(ref, b); ok && !strings.HasPrefix(string(b), "\x01") {
			t.Fatalf("took unsigned %q", b)
		}
		a, ok := s.open(ref, testMAC.Sign("answers", "key", b))
		if !ok {
			return
		}
		switch {
		case a.claim:
		case a.Err != nil:
			if !a.final() || len(a.Err.Message) > maxMessage {
				t.Fatalf("took %q for error %+v", b, a.Err)
			}
		default:
			if !protocol.ValidToken(a.Result.OpenID) || len(a.Result.OpenID) > maxID || len(a.Result.UnionID) > maxID {
				t.Fatalf("took %q for result %+v", b, a.Result)
			}
		}
	})
}
