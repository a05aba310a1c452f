// Package ratelimit keeps the calls the whole worker pool makes to WeChat
// at or under WX_RATE per appid, however many workers run: in any
// one-second window the calls that reach WeChat for an appid stay at or
// under WX_RATE + WX_BURST, with one worker or with eight, while workers
// join, leave and crash.
//
// # How
//
// Time is cut into blocks (at most 200ms, and never holding more than
// WX_BURST slots). Each block of each appid carries Rate×block call
// slots, evenly spaced. A worker that needs a slot claims the next free
// block with a key-value Create in the JetStream bucket
// <NATS_SUBJECT_PREFIX>_ratelimit, which succeeds for exactly one worker,
// and then spends that block's slots only at their times. Every slot of
// the pool therefore has exactly one owner and one time, so any one-second
// window holds at most Rate plus one block's slots. One exchange per
// appid and worker claims at a time, without holding the app's lock over
// the round trips; the others wait for its blocks.
//
// # Why this design
//
// There is no leader to elect or lose, and nobody hands out shares. Idle
// workers claim nothing, so a busy worker may use the pool's whole rate.
// A worker that dies loses only the blocks it had claimed ahead, at most
// MaxQueue worth (2s by default), so the others are back at the full rate
// within about that long.
//
// A request waits for a slot only as long as its deadline allows and
// never more than MaxQueue; otherwise it fails at once with rate_limited
// and the wait a retry faces. Each appid has its own blocks, so one app's
// flood does not spend another's slots.
//
// # Adaptive rate
//
// A 45011 (frequency limit), or three -1 (busy) answers in a row, halves
// the pool's effective rate, at most once a second and never below 5% of
// Rate. After 2s without pushback the rate climbs back by a tenth of Rate
// per second. The effective rate is stored in the same bucket, so the
// whole pool backs off together; each change is logged as "pool rate
// changed". The rule is one function (nextRate), used pool-wide and in the
// fallback alike.
//
// # What is trusted
//
// The stored effective rate is MAC'd with the app's rate-limit key
// (package seal), bound to the bucket and key, and checked on read. A
// value that fails the check, does not parse or is out of range (a rate
// outside [floor, Rate], a time more than maxSkew ahead) is treated as
// absent, that is as the full rate, counted in
// wxlogin_store_rejected_total and logged at most once a minute; the next
// change overwrites it. Slot counts are bounded by the configured rate,
// whatever the bucket holds. Someone who can write the bucket can still
// take blocks (their existence, not their content, is the claim) and so
// slow logins down for as long as they keep writing; they can no longer
// stop them for good or crash a worker.
//
// # Failure modes
//
//   - When the bucket cannot be reached (no JetStream, a store outage) or
//     is full (WORKER_RATE_KV_MAX_BYTES, apart from the answers' limit so
//     that answers cannot starve it), each worker falls back to a local
//     limiter at the effective rate divided by the last known number of
//     workers; the refused records are counted in
//     wxlogin_store_unstored_total and logged at most once a minute. While
//     workers join, their counts lag, and the pool may briefly exceed the
//     rate in this fallback, never in shared mode.
//   - A worker binds the bucket in the background after it starts
//     serving, so its first calls may go through the local limiter, which
//     the pool's schedule does not count: at most WX_BURST plus WX_RATE per
//     second it took to bind.
//   - Slot times come from each worker's clock, so clock skew between
//     hosts eats into WX_BURST.
package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/wxlogin/wxlogin/internal/bucket"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/seal"
)

// Options configure a Limiter.
type Options struct {
	Rate  float64 // calls per second per appid for the whole pool; 0 = unlimited
	Burst int     // calls allowed at once above Rate (bounds the block size)
	// MaxQueue is the longest a request may wait for its slot; beyond it
	// the request is shed with 429 at once. Default 2s.
	MaxQueue time.Duration
	Bucket   string // KV bucket name
	Replicas int
	MaxBytes int64 // the bucket's byte limit; 0: 8 MiB
	// Keys are each appid's rate-limit MAC (seal.Keys.RateLimit), the same
	// on every worker. An appid without one gets a key of this process's
	// own: then no other worker can read its stored rate.
	Keys map[string]*seal.MAC
	// Metrics counts rejected and unstored records; nil counts nothing.
	Metrics *metrics.Stores
	// MinAttempt is the least time worth starting an upstream call with:
	// a slot later than the deadline minus this is refused.
	MinAttempt time.Duration
}

// Limiter is one worker's view of the pool-wide limit.
type Limiter struct {
	opts  Options
	block time.Duration // one block's length
	log   *slog.Logger
	apps  map[string]*app // fixed at New: no lock needed

	kv    atomic.Pointer[jetstream.KeyValue]
	peers atomic.Int64 // last known number of workers, ≥ 1
	rep   *bucket.Reporter

	missed atomic.Int64 // slots let go because the caller woke too late
}

// New returns a limiter for appids. Until Bind succeeds it limits locally.
func New(opts Options, appids []string, logger *slog.Logger) *Limiter {
	if opts.MaxQueue <= 0 {
		opts.MaxQueue = 2 * time.Second
	}
	if opts.Replicas < 1 {
		opts.Replicas = 1
	}
	if opts.Burst <= 0 {
		opts.Burst = max(1, int(math.Ceil(opts.Rate)))
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 8 << 20
	}
	l := &Limiter{opts: opts, log: logger, apps: map[string]*app{}, rep: bucket.NewReporter(opts.Bucket, logger, opts.Metrics)}
	if opts.Rate > 0 {
		// A block holds at most Burst slots, so the pool never exceeds
		// Rate+Burst in a window; it is at most 200ms so that a dead
		// worker's claimed blocks and the pool's sharing stay fine-grained.
		l.block = time.Duration(float64(time.Second) * float64(opts.Burst) / opts.Rate)
		l.block = max(min(l.block, 200*time.Millisecond), time.Duration(float64(time.Second)/opts.Rate), time.Millisecond)
	}
	l.peers.Store(1)
	for _, id := range appids {
		mac := opts.Keys[id]
		if mac == nil {
			var k [32]byte
			rand.Read(k[:])
			mac = seal.NewMAC(k[:])
		}
		l.apps[id] = &app{
			id:    id,
			mac:   mac,
			keyID: hex.EncodeToString([]byte(id)),
			eff:   opts.Rate,
			burst: opts.Burst,
			local: rate.NewLimiter(rate.Limit(opts.Rate), opts.Burst),
		}
	}
	return l
}

// BucketName is the rate-limit bucket for a subject prefix.
func BucketName(subjectPrefix string) string { return bucket.Name(subjectPrefix, "ratelimit") }

// Bind creates (or opens) the bucket and turns pool-wide limiting on. It
// returns bucket.ErrNoJetStream when the server has no JetStream.
func (l *Limiter) Bind(ctx context.Context, nc *nats.Conn) error {
	if l.opts.Rate <= 0 {
		return nil
	}
	kv, err := bucket.Open(ctx, nc, jetstream.KeyValueConfig{
		Bucket:      l.opts.Bucket,
		Description: "wxlogin: pool-wide rate limit (claimed time blocks, effective rates)",
		// Blocks matter for seconds; the effective rate is rewritten
		// every second while it recovers, and a missing one means "full".
		TTL:      time.Minute,
		History:  1,
		MaxBytes: l.opts.MaxBytes,
		Storage:  jetstream.MemoryStorage,
		Replicas: l.opts.Replicas,
	})
	if err != nil {
		return err
	}
	l.kv.Store(&kv)
	return nil
}

// Shared reports whether the limit holds pool-wide (the bucket is bound).
func (l *Limiter) Shared() bool { return l.kv.Load() != nil }

// SetPeers records how many workers the pool has, for the local fallback.
func (l *Limiter) SetPeers(n int) {
	n = max(n, 1)
	if int64(n) == l.peers.Swap(int64(n)) {
		return
	}
	for _, a := range l.apps {
		a.mu.Lock()
		a.setLocal(n)
		a.mu.Unlock()
	}
}

// Missed returns how many slots were let go because their caller woke
// too late to use them.
func (l *Limiter) Missed() int64 { return l.missed.Load() }

// Peers returns the last known number of workers.
func (l *Limiter) Peers() int { return int(l.peers.Load()) }

// Rates returns each appid's current effective rate (pool-wide).
func (l *Limiter) Rates() map[string]float64 {
	out := make(map[string]float64, len(l.apps))
	for id, a := range l.apps {
		a.mu.Lock()
		out[id] = a.eff
		a.mu.Unlock()
	}
	return out
}

// Wait returns when the caller may call WeChat for appid, or at once with
// rate_limited (and the wait a retry faces) when its deadline or the
// queue bound does not allow waiting for a slot.
func (l *Limiter) Wait(ctx context.Context, appid string) *protocol.Error {
	a := l.apps[appid]
	if a == nil || l.opts.Rate <= 0 {
		return nil
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(l.opts.MaxQueue)
	}
	latest := deadline.Add(-l.opts.MinAttempt)
	if q := time.Now().Add(l.opts.MaxQueue); q.Before(latest) {
		latest = q
	}

	l.refreshRate(ctx, a)
	for {
		at, shared, e := l.take(ctx, a, latest)
		if e != nil {
			return e
		}
		if d := time.Until(at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return protocol.New(protocol.KindTimeout, "the deadline passed while waiting for the rate limit")
			}
		}
		// A slot is a moment, not a voucher: woken too late (a stalled
		// process), calling now would crowd the next slots' calls into
		// the same second. Let the moment go and take another slot.
		if !shared || time.Since(at) <= lateTolerance {
			return nil
		}
		l.missed.Add(1)
	}
}

// lateTolerance is how late a call may start after its slot. It bounds
// how far calls can drift into the next second: Rate × lateTolerance.
const lateTolerance = 10 * time.Millisecond

// take returns the time of the caller's slot, and whether it is a
// pool-wide one.
func (l *Limiter) take(ctx context.Context, a *app, latest time.Time) (time.Time, bool, *protocol.Error) {
	if kvp := l.kv.Load(); kvp != nil {
		at, e, err := l.takeShared(ctx, *kvp, a, latest)
		if err == nil {
			return at, true, e
		}
		if ctx.Err() != nil {
			return time.Time{}, true, protocol.Wrap(err, protocol.KindTimeout, "the deadline passed while waiting for the rate limit")
		}
		l.rep.Unstored("claiming a rate-limit block failed; limiting per worker", err)
	}
	at, e := l.takeLocal(a, latest)
	return at, false, e
}

// Feedback tells the limiter how WeChat answered an appid's call: 45011
// or a run of -1 (busy) lowers the pool's rate.
func (l *Limiter) Feedback(ctx context.Context, appid string, errcode int) {
	a := l.apps[appid]
	if a == nil || l.opts.Rate <= 0 {
		return
	}
	a.mu.Lock()
	pushback := false
	switch errcode {
	case 0:
		a.busyRun = 0
	case -1:
		a.busyRun++
		pushback = a.busyRun >= busyRunPushback
	case 45011:
		pushback = true
	}
	if pushback {
		a.busyRun = 0
		a.lastPushback = time.Now()
	}
	a.mu.Unlock()
	if pushback {
		l.adjust(ctx, a, true)
	}
}

// busyRunPushback is how many -1 answers in a row count as WeChat pushing
// back; a single -1 is ordinary noise.
const busyRunPushback = 3

// app is the per-appid state of one worker.
type app struct {
	id, keyID string
	mac       *seal.MAC

	mu           sync.Mutex
	slots        []time.Time // owned, unused slot times, ascending
	nextBlock    int64       // the next block worth trying to claim
	eff          float64     // effective pool-wide rate
	effRev       uint64      // its revision in the bucket (0: not stored)
	effChanged   time.Time   // when it last changed, as stored
	effRead      time.Time   // when this worker last read it
	busyRun      int
	lastPushback time.Time
	burst        int
	local        *rate.Limiter // fallback: eff / peers
	// claiming is closed when this worker's claim of blocks for the app,
	// under way, ends; nil when none is.
	claiming chan struct{}
}

// setLocal sizes the fallback limiter as this worker's share of the pool.
func (a *app) setLocal(peers int) {
	a.local.SetLimit(rate.Limit(a.eff / float64(peers)))
	a.local.SetBurst(max(1, a.burst/peers))
}

func (l *Limiter) takeLocal(a *app, latest time.Time) (time.Time, *protocol.Error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	r := a.local.ReserveN(now, 1)
	at := now.Add(r.DelayFrom(now))
	if !r.OK() || at.After(latest) {
		r.CancelAt(now)
		return time.Time{}, limited(at.Sub(now))
	}
	return at, nil
}

// takeShared returns the time of a slot this worker owns: one already
// claimed, or one of a block it claims now. One caller per app claims at
// a time, with the app's lock released over the round trips; the others
// wait for its blocks (or their deadline).
func (l *Limiter) takeShared(ctx context.Context, kv jetstream.KeyValue, a *app, latest time.Time) (time.Time, *protocol.Error, error) {
	for claimed := false; ; {
		a.mu.Lock()
		now := time.Now()
		// Slots in the past are gone: spending them now would bunch calls.
		i := 0
		for i < len(a.slots) && a.slots[i].Before(now.Add(-time.Millisecond)) {
			i++
		}
		a.slots = a.slots[i:]
		switch {
		case len(a.slots) > 0 && a.slots[0].After(latest):
			wait := a.slots[0].Sub(now)
			a.mu.Unlock()
			return time.Time{}, limited(wait), nil
		case len(a.slots) > 0:
			at := a.slots[0]
			a.slots = a.slots[1:]
			a.mu.Unlock()
			return at, nil, nil
		case claimed:
			// Our own claim found nothing by latest.
			wait := l.opts.MaxQueue
			if a.nextBlock > 0 {
				wait = l.blockStart(a.nextBlock).Sub(now)
			}
			a.mu.Unlock()
			return time.Time{}, limited(wait), nil
		case a.claiming != nil:
			ch := a.claiming
			a.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return time.Time{}, nil, ctx.Err()
			}
		}
		ch := make(chan struct{})
		a.claiming = ch
		from, eff := max(l.blockOf(now), a.nextBlock), a.eff
		a.mu.Unlock()

		slots, next, err := l.claim(ctx, kv, a.keyID, from, eff, now, latest)

		a.mu.Lock()
		a.claiming = nil
		close(ch)
		a.nextBlock = max(a.nextBlock, next)
		a.slots = append(a.slots, slots...) // later than any slot left: the list stays sorted
		a.mu.Unlock()
		if err != nil {
			return time.Time{}, nil, err
		}
		claimed = true
	}
}

// claim claims the first free block from block from on that starts by
// latest, and returns its slots and the next block worth trying.
func (l *Limiter) claim(ctx context.Context, kv jetstream.KeyValue, keyID string, from int64, eff float64, now, latest time.Time) ([]time.Time, int64, error) {
	k := from
	for tries := 0; tries < 64; tries++ {
		if l.blockStart(k).After(latest) {
			return nil, k, nil
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := kv.Create(cctx, "b."+keyID+"."+strconv.FormatInt(k, 10), nil)
		cancel()
		switch {
		case err == nil:
			if slots := l.slotsOf(k, eff, now); len(slots) > 0 {
				return slots, k + 1, nil
			}
		case errors.Is(err, jetstream.ErrKeyExists):
		default:
			return nil, k, err
		}
		k++
	}
	return nil, k, nil
}

// slotsOf returns block k's slot times from now on. The slots of
// consecutive blocks follow one schedule of Rate per second, so fractions
// carry over from block to block. However eff came to be, a block holds
// no more slots than the configured rate gives it.
func (l *Limiter) slotsOf(k int64, eff float64, now time.Time) []time.Time {
	if !(eff > 0) || eff > l.opts.Rate {
		eff = l.opts.Rate
	}
	perBlock := eff * l.block.Seconds()
	n := int(math.Floor(float64(k+1)*perBlock) - math.Floor(float64(k)*perBlock))
	n = max(0, min(n, int(math.Ceil(l.opts.Rate*l.block.Seconds()))+1))
	start := l.blockStart(k)
	out := make([]time.Time, 0, n)
	for i := range n {
		t := start.Add(time.Duration(i) * l.block / time.Duration(n))
		if !t.Before(now.Add(-time.Millisecond)) {
			out = append(out, t)
		}
	}
	return out
}

func (l *Limiter) blockOf(t time.Time) int64 { return t.UnixNano() / int64(l.block) }

func (l *Limiter) blockStart(k int64) time.Time { return time.Unix(0, k*int64(l.block)) }

func limited(wait time.Duration) *protocol.Error {
	return protocol.Make(protocol.KindRateLimited, "too many logins for this app right now",
		protocol.RetryAfter(max(wait, time.Second)))
}

// effective is the bucket's record of an appid's effective rate (inside
// the MAC).
type effective struct {
	Rate float64 `json:"rate"`
	At   int64   `json:"at"` // unix nanos of the change
}

// maxSkew is how far ahead of this worker's clock a stored change may
// lie: workers' clocks differ by milliseconds under NTP.
const maxSkew = 5 * time.Second

// maxEffective bounds a stored record's size.
const maxEffective = 128

// decodeEffective reads a stored record, checked against the app's key;
// ok is false for anything not written by a worker of this pool or out
// of range: a rate outside [floor, Rate], a time before 1970 or more than
// maxSkew ahead of now.
//
// Whatever the bytes, it does not panic: should it ever, the record
// counts as absent and the worker carries on.
func (l *Limiter) decodeEffective(a *app, key string, stored []byte, now time.Time) (v effective, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			v, ok = effective{}, false
		}
	}()
	b, err := a.mac.Verify(l.opts.Bucket, key, stored)
	if err != nil || len(b) > maxEffective {
		return effective{}, false
	}
	if json.Unmarshal(b, &v) != nil || !(v.Rate >= l.floor() && v.Rate <= l.opts.Rate) ||
		v.At < 0 || v.At > now.Add(maxSkew).UnixNano() {
		return effective{}, false
	}
	return v, true
}

// rateRefresh is how often a worker re-reads the pool's effective rate.
const rateRefresh = 250 * time.Millisecond

// refreshRate re-reads the effective rate at most every rateRefresh, and
// raises it when WeChat has been healthy for a second since the last change.
func (l *Limiter) refreshRate(ctx context.Context, a *app) {
	a.mu.Lock()
	stale := time.Since(a.effRead) >= rateRefresh
	a.mu.Unlock()
	if !stale {
		return
	}
	l.adjust(ctx, a, false)
}

// nextRate is the adaptive rule: with pushback, halve the rate, at most
// once a second and not below the floor; without, once pushback has been
// quiet for 2s, raise it by a tenth of Rate once a second.
func (l *Limiter) nextRate(cur float64, sinceChange, sincePushback time.Duration, pushback bool) float64 {
	switch {
	case pushback && sinceChange > time.Second:
		return math.Max(cur/2, l.floor())
	case !pushback && sincePushback > 2*time.Second && cur < l.opts.Rate && sinceChange >= time.Second:
		return math.Min(cur+l.opts.Rate/10, l.opts.Rate)
	}
	return cur
}

// adjust reads the effective rate and applies nextRate, by compare-and-set
// so that workers seeing the same event change it once.
func (l *Limiter) adjust(ctx context.Context, a *app, pushback bool) {
	kvp := l.kv.Load()
	if kvp == nil {
		l.adjustLocal(a, pushback)
		return
	}
	kv := *kvp
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	key := "r." + a.keyID
	now := time.Now()
	cur, rev := effective{Rate: l.opts.Rate}, uint64(0)
	if e, err := kv.Get(cctx, key); err == nil {
		// A record that fails its check counts as absent (the full rate),
		// but its revision is kept: the next change overwrites it.
		if v, ok := l.decodeEffective(a, key, e.Value(), now); ok {
			cur = v
		} else {
			l.rep.Rejected("not a valid effective rate")
		}
		rev = e.Revision()
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
		return
	}
	a.mu.Lock()
	sincePushback := now.Sub(a.lastPushback)
	a.mu.Unlock()
	next := l.nextRate(cur.Rate, now.Sub(time.Unix(0, cur.At)), sincePushback, pushback)
	if next != cur.Rate {
		val, _ := json.Marshal(effective{Rate: next, At: now.UnixNano()})
		val = a.mac.Sign(l.opts.Bucket, key, val)
		var err error
		if rev == 0 {
			_, err = kv.Create(cctx, key, val)
		} else {
			_, err = kv.Update(cctx, key, val, rev)
		}
		switch {
		case err == nil:
			l.log.Warn("pool rate changed", "appid", a.id, "from", round(cur.Rate), "to", round(next), "configured", l.opts.Rate)
			cur = effective{Rate: next, At: now.UnixNano()}
		case errors.Is(err, jetstream.ErrKeyExists):
			// Another worker changed it first: its value counts.
		default:
			l.rep.Unstored("storing the pool's effective rate failed", err)
		}
	}
	a.mu.Lock()
	a.eff, a.effRead = cur.Rate, now
	a.setLocal(int(l.peers.Load()))
	a.mu.Unlock()
}

// adjustLocal is adjust's fallback without the bucket: this worker backs
// off on its own.
func (l *Limiter) adjustLocal(a *app, pushback bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	next := l.nextRate(a.eff, now.Sub(a.effChanged), now.Sub(a.lastPushback), pushback)
	if next != a.eff {
		l.log.Warn("worker rate changed (pool bucket unreachable)", "appid", a.id, "from", round(a.eff), "to", round(next))
		a.eff, a.effChanged = next, now
		a.setLocal(int(l.peers.Load()))
	}
	a.effRead = now
}

// floor is the least effective rate: backing off to nothing would stop
// logins altogether.
func (l *Limiter) floor() float64 { return math.Max(l.opts.Rate/20, math.Min(1, l.opts.Rate)) }

func round(r float64) float64 { return math.Round(r*100) / 100 }
