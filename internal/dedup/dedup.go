// Package dedup makes a login code's exchange happen once across the
// whole worker pool, so that a retried or duplicated request gets the
// first exchange's answer instead of WeChat's "code been used".
//
// A login code works once. When a mini-program's request times out on a
// weak network and it retries with the same code, or two services ask
// for the same code, a plain handler calls WeChat twice and the second
// call fails with 40163 although the first succeeded. The pool instead
// calls WeChat once per code and gives every request for it the same
// answer, on whichever worker it lands.
//
// # How
//
// Three layers, cheapest first:
//   - a per-worker cache of recent answers;
//   - per-worker collapsing of concurrent duplicates (singleflight): the
//     followers wait for the leader's answer within their own deadlines;
//   - across workers, the JetStream key-value bucket
//     <NATS_SUBJECT_PREFIX>_results (memory storage, WORKER_KV_REPLICAS
//     replicas, a TTL of WX_RESULT_TTL; per-key TTLs need NATS 2.11). The
//     leader claims the key with kv.Create and a key TTL of ClaimTTL, so
//     that a dead worker blocks nobody for long, calls WeChat, and then
//     writes the answer over the claim. Other workers that meet the claim
//     poll for the answer within their deadlines.
//
// Only the claim is a round trip on the request's path. The answer is
// written by a publish that waits for no acknowledgement and goes out
// before the reply on the same connection, so the server stores it before
// the requester can see the reply. The bucket allows per-key TTLs without
// the key-value client's limit markers, which would store a third message
// for every answer that expires (see bucket.OpenWithKeyTTLs).
//
// # What is stored, and what is trusted
//
// Keys are an HMAC of appid and code under the app's secret: never the
// raw code. Values hold only what a reply needs: openid and unionid, or a
// terminal error (40029, 40163, 40226); never a session_key. Transient
// failures (busy, 5xx, timeouts, rate limits) are not stored, so a retry
// can still succeed.
//
// Anyone who can write the bucket could plant an openid of their choice
// on a code's key, so every value (claims too) is MAC'd with the app's
// answers key (package seal), bound to the bucket and key. A value that
// fails the check, does not parse or is out of range is treated as
// absent: it is never an answer, and the worker removes it and claims
// the code itself. Such values are counted in wxlogin_store_rejected_total
// and logged at warn at most once a minute.
//
// An answer lives at most WX_RESULT_TTL in every layer: the bucket's TTL,
// and in the worker's cache until the stored answer's own expiry. A code
// that leaks (into an access log, say) can be replayed that long for the
// same openid; WX_RESULT_TTL may be as low as 10s.
//
// # Limits
//
//   - A worker that dies after claiming a code blocks it only until the
//     claim expires (WX_CLAIM_TTL).
//   - A worker that dies between WeChat's answer and storing it loses that
//     answer: the retry gets code_used.
//   - An attempt whose answer was lost in transit (an upstream timeout
//     after WeChat had used the code) can only be reported as code_used.
//   - If the leader of a set of duplicates runs out of time, its
//     duplicates get its timeout.
//   - An exchange that runs longer than WX_CLAIM_TTL can be started again
//     by another worker, which then gets 40163 and looks for the stored
//     answer before giving up.
//   - Changing WX_STORE_KEY, or an AppSecret without it, makes stored
//     answers fail their check: a code retried across the change gets
//     code_used (see package seal).
//
// # A full or unreachable bucket
//
// The bucket has a byte limit (WORKER_KV_MAX_BYTES). When it is full, or
// cannot be reached, a claim fails: the worker then serves the login
// anyway, de-duplicating per worker only, and counts the record it could
// not store in wxlogin_store_unstored_total (with a warning at most once a
// minute). A retry of that code on another worker gets code_used. Nothing
// waits on the full bucket and nothing returns a 500. Without JetStream at
// all the Store works per worker from the start.
package dedup

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/bucket"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/seal"
)

// Options configure a Store.
type Options struct {
	ResultTTL time.Duration // how long answers are kept, in every layer
	ClaimTTL  time.Duration // how long a claim blocks others if its worker dies; at least 1s
	// Bucket is the KV bucket's name; Replicas its replica count; MaxBytes
	// its byte limit (0: 64 MiB).
	Bucket   string
	Replicas int
	MaxBytes int64
	// LocalMax caps the per-worker cache; 0 means 100,000 answers.
	LocalMax int
	// Metrics counts rejected and unstored values; nil counts nothing.
	Metrics *metrics.Stores
}

// Source says where an answer came from, for stats.
type Source int

// The sources of an answer.
const (
	FromUpstream Source = iota // this call ran the exchange
	FromFlight                 // a concurrent duplicate on this worker ran it
	FromCache                  // this worker's recent answers
	FromStore                  // the shared bucket (another worker, or earlier)
)

func (s Source) String() string {
	switch s {
	case FromUpstream:
		return "upstream"
	case FromFlight:
		return "duplicate_in_flight"
	case FromCache:
		return "worker_cache"
	case FromStore:
		return "shared_store"
	}
	return "unknown"
}

// Store de-duplicates exchanges. Until Bind succeeds it works per worker.
type Store struct {
	opts  Options
	log   *slog.Logger
	cache *cache
	rep   *bucket.Reporter

	mu     sync.Mutex
	flight map[string]*flight // exchanges running on this worker, by key

	kv     atomic.Pointer[jetstream.KeyValue] // nil: per-worker only
	nc     *nats.Conn
	subjPx string // "$KV.<bucket>."
}

// New returns a Store that de-duplicates within this worker.
func New(opts Options, logger *slog.Logger) *Store {
	if opts.ResultTTL <= 0 {
		opts.ResultTTL = 5 * time.Minute
	}
	if opts.ClaimTTL < time.Second {
		opts.ClaimTTL = time.Second
	}
	if opts.Bucket == "" {
		opts.Bucket = BucketName(protocol.DefaultSubjectPrefix)
	}
	if opts.Replicas < 1 {
		opts.Replicas = 1
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 64 << 20
	}
	if opts.LocalMax <= 0 {
		opts.LocalMax = 100_000
	}
	return &Store{opts: opts, log: logger, cache: newCache(opts.ResultTTL, opts.LocalMax),
		rep:    bucket.NewReporter(opts.Bucket, logger, opts.Metrics),
		flight: map[string]*flight{}}
}

// BucketName is the answers bucket for a subject prefix.
func BucketName(subjectPrefix string) string { return bucket.Name(subjectPrefix, "results") }

// Bind creates the bucket if missing (or uses the existing one) and turns
// cross-worker de-duplication on. It returns bucket.ErrNoJetStream when
// the server has no JetStream.
func (s *Store) Bind(ctx context.Context, nc *nats.Conn) error {
	kv, err := bucket.OpenWithKeyTTLs(ctx, nc, jetstream.KeyValueConfig{
		Bucket:      s.opts.Bucket,
		Description: "wxlogin: answers of recent code exchanges, keyed by HMAC(appid, code), MAC'd",
		TTL:         s.opts.ResultTTL,
		History:     1,
		MaxBytes:    s.opts.MaxBytes,
		// Answers are worth minutes; memory storage keeps the claim off
		// the disk's latency. Replicas keep them across a node's loss.
		Storage:  jetstream.MemoryStorage,
		Replicas: s.opts.Replicas,
	})
	if err != nil {
		return err
	}
	s.nc = nc
	s.subjPx = "$KV." + s.opts.Bucket + "."
	s.kv.Store(&kv)
	return nil
}

// Shared reports whether de-duplication spans the pool (JetStream bound).
func (s *Store) Shared() bool { return s.kv.Load() != nil }

// Key is the bucket key for (appid, code): an HMAC under the app's
// secret, so the key reveals nothing and every worker computes the same.
func Key(secret, appid, code string) string { return newHasher(secret, appid).key(code) }

// Keyer computes one app's Refs: the bucket key of a code, and the key
// that authenticates its stored values.
type Keyer struct {
	h   *hasher
	mac *seal.MAC
}

// NewKeyer returns the Keyer for an app; mac is the app's answers key
// (seal.Keys.Answers), the same on every worker of the pool.
func NewKeyer(secret, appid string, mac *seal.MAC) *Keyer {
	return &Keyer{h: newHasher(secret, appid), mac: mac}
}

// Key is the Ref of code: its bucket key (see the package function Key)
// and its app's MAC.
func (k *Keyer) Key(code string) Ref { return Ref{Name: k.h.key(code), mac: k.mac} }

// Ref is where a code's answer is kept: its bucket key, and the key its
// stored values are MAC'd with.
type Ref struct {
	Name string
	mac  *seal.MAC
}

// hasher computes one app's bucket keys. It keeps its HMAC states for
// reuse: setting one up hashes the secret twice, more work than the code
// itself.
type hasher struct {
	appid string
	macs  sync.Pool // of hash.Hash
}

func newHasher(secret, appid string) *hasher {
	h := &hasher{appid: appid}
	h.macs.New = func() any { return hmac.New(sha256.New, []byte(secret)) }
	return h
}

func (h *hasher) key(code string) string {
	m := h.macs.Get().(hash.Hash)
	m.Reset()
	m.Write([]byte(h.appid))
	m.Write([]byte{0})
	m.Write([]byte(code))
	var sum [sha256.Size]byte
	var out [32]byte
	hex.Encode(out[:], m.Sum(sum[:0])[:16])
	h.macs.Put(m)
	return string(out[:])
}

// Lead is a caller's turn to run the exchange for a key: Begin returns
// one when nobody, on this worker or another, has the answer or is
// getting it. The caller calls WeChat and then End, exactly once.
// Begin and End are two calls rather than one taking the exchange as a
// function so that the exchange may continue on another goroutine (the
// worker calls WeChat from a goroutine of its own, see package exchange).
type Lead struct {
	s   *Store
	ref Ref
	f   *flight
	kv  jetstream.KeyValue // nil: not claimed in the store (per worker only)
	rev uint64             // our claim's revision, with kv
}

// Begin returns the answer for ref if another request, on this worker or
// another, has it or is getting it; it waits for a running exchange
// within ctx. Otherwise it returns a Lead, and the caller runs the
// exchange. Later callers on this worker wait for the Lead's End.
func (s *Store) Begin(ctx context.Context, ref Ref) (*Lead, protocol.Result, *protocol.Error, Source) {
	key := ref.Name
	if a, ok := s.cache.get(key); ok {
		res, e, src := a.result(FromCache)
		return nil, res, e, src
	}
	s.mu.Lock()
	if f, ok := s.flight[key]; ok {
		s.mu.Unlock()
		select {
		case <-f.done:
			res, e, src := f.answered.answer.result(FromFlight)
			return nil, res, e, src
		case <-ctx.Done():
			return nil, protocol.Result{}, protocol.New(protocol.KindTimeout, "waiting for a duplicate request's answer took past the deadline"), FromFlight
		}
	}
	f := &flight{done: make(chan struct{})}
	s.flight[key] = f
	s.mu.Unlock()

	l := &Lead{s: s, ref: ref, f: f}
	if a, found := s.lead(ctx, l); found {
		l.land(answered{a, FromStore})
		res, e, src := a.result(FromStore)
		return nil, res, e, src
	}
	return l, protocol.Result{}, nil, FromUpstream
}

// End records the exchange's answer: for the duplicates waiting on this
// worker, in this worker's cache, and in the store. It returns the answer
// to give, which is the stored one when ours says the code was used and
// another worker has the answer.
func (l *Lead) End(ctx context.Context, res protocol.Result, e *protocol.Error) (protocol.Result, *protocol.Error) {
	a := answer{Result: res, Err: e}
	if l.kv != nil {
		a = l.s.claimed(ctx, l, a)
	} else if a.final() {
		l.s.cache.put(l.ref.Name, a.encode(), time.Now().Add(l.s.opts.ResultTTL))
	}
	l.land(answered{a, FromUpstream})
	res, e, _ = a.result(FromUpstream)
	return res, e
}

// land gives the flight its answer and ends it.
func (l *Lead) land(a answered) {
	l.f.answered = a
	l.s.mu.Lock()
	delete(l.s.flight, l.ref.Name)
	l.s.mu.Unlock()
	close(l.f.done)
}

// flight is an exchange in progress on this worker; answered is written
// before done closes and read only after.
type flight struct {
	done     chan struct{}
	answered answered
}

type answered struct {
	answer answer
	source Source
}

// lead runs once per key per worker at a time. It either finds the
// answer in the store (found; an error answer if waiting for it failed)
// or leaves l to run the exchange, under a claim in the store (l.kv set)
// or, without one, per worker.
func (s *Store) lead(ctx context.Context, l *Lead) (a answer, found bool) {
	kvp := s.kv.Load()
	if kvp == nil {
		return answer{}, false
	}
	kv := *kvp
	claim := l.ref.mac.Sign(s.opts.Bucket, l.ref.Name, claimValue)
	// A few rounds: a claim that vanished, or a bad value removed, leave
	// the key free; one that keeps coming back is not worth the deadline.
	for range 4 {
		rev, err := kv.Create(ctx, l.ref.Name, claim, jetstream.KeyTTL(s.opts.ClaimTTL))
		switch {
		case err == nil:
			l.kv, l.rev = kv, rev
			return answer{}, false
		case errors.Is(err, jetstream.ErrKeyExists):
			a, expires, found, err := s.await(ctx, kv, l.ref)
			if found {
				s.cache.put(l.ref.Name, a.encode(), expires)
				return a, true
			}
			if err != nil {
				return answer{Err: deadline(err)}, true
			}
			// The claim went away without an answer, or what was there
			// failed its check and was removed: claim it ourselves.
		case ctx.Err() != nil:
			return answer{Err: deadline(err)}, true
		default:
			// Full or unreachable: serve rather than fail, per worker.
			s.rep.Unstored("claiming a code failed; serving it with de-duplication on this worker only", err)
			return answer{}, false
		}
	}
	s.rep.Unstored("claiming a code failed; serving it with de-duplication on this worker only", errors.New("the key kept being taken"))
	return answer{}, false
}

// claimed stores the answer of the exchange run under our claim, and
// returns the answer to give.
func (s *Store) claimed(ctx context.Context, l *Lead, a answer) answer {
	kv, key := l.kv, l.ref.Name
	if a.Err != nil && a.Err.Kind == protocol.KindCodeUsed {
		// Our claim may have expired during a long exchange and another
		// worker may have used the code and stored its answer.
		if e, err := kv.Get(ctx, key); err == nil {
			if stored, ok := s.open(l.ref, e.Value()); ok && !stored.claim {
				a = stored
			}
		}
	}
	if !a.final() {
		// A transient failure: free the code at once for a retry rather
		// than making it wait out the claim.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		if err := kv.Delete(dctx, key, jetstream.LastRevision(l.rev)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			s.log.Debug("releasing a claim failed; it expires by itself", logging.Err(err))
		}
		cancel()
		return a
	}
	v := a.encode()
	s.cache.put(key, v, time.Now().Add(s.opts.ResultTTL))
	// A publish without a reply subject: JetStream stores it and sends no
	// acknowledgement, so it costs the worker one buffered write. It goes
	// out before the reply on the same connection, so the server has
	// stored it before the requester can retry. If it is lost (store
	// unreachable), a retry meets our claim, waits out WX_CLAIM_TTL and
	// gets WeChat's 40163 as code_used: the degraded case. The answer
	// replaces our claim under the bucket's one-value-per-key limit, so
	// a bucket that took the claim has room for the answer.
	if err := s.nc.Publish(s.subjPx+key, l.ref.mac.Sign(s.opts.Bucket, key, v)); err != nil {
		s.rep.Unstored("storing an answer failed", err)
	}
	return a
}

// await polls for the answer of a key another worker has claimed, and
// when it expires. found is false with a nil error when the claim
// disappeared unanswered, or what was stored failed its check (and was
// removed, so that the caller can claim the key).
func (s *Store) await(ctx context.Context, kv jetstream.KeyValue, ref Ref) (answer, time.Time, bool, error) {
	pause := 10 * time.Millisecond
	for {
		e, err := kv.Get(ctx, ref.Name)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
			return answer{}, time.Time{}, false, nil
		case err != nil:
			return answer{}, time.Time{}, false, err
		}
		a, ok := s.open(ref, e.Value())
		if !ok {
			// Only the revision we judged is removed: a claim written
			// meanwhile by a worker stays.
			if err := kv.Delete(ctx, ref.Name, jetstream.LastRevision(e.Revision())); err != nil &&
				!errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() != nil {
				return answer{}, time.Time{}, false, err
			}
			return answer{}, time.Time{}, false, nil
		}
		if !a.claim {
			// The answer expires from the bucket ResultTTL after it was
			// written; so it does from this worker's cache.
			return a, e.Created().Add(s.opts.ResultTTL), true, nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return answer{}, time.Time{}, false, ctx.Err()
		case <-t.C:
		}
		pause = min(pause*2, 200*time.Millisecond)
	}
}

// open checks and decodes a stored value; a value that fails is counted
// and reported, and ok is false. Whatever the bytes, it does not panic:
// should a decoder ever do so, the value counts as rejected (the log line
// names no value and no key) and the worker carries on.
func (s *Store) open(ref Ref, stored []byte) (a answer, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			s.rep.Rejected("decoding it panicked")
			a, ok = answer{}, false
		}
	}()
	v, err := ref.mac.Verify(s.opts.Bucket, ref.Name, stored)
	if err != nil {
		s.rep.Rejected("failed its authenticity check")
		return answer{}, false
	}
	if a, ok = decode(v); !ok {
		s.rep.Rejected("authentic but not a valid answer")
	}
	return a, ok
}

func deadline(err error) *protocol.Error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return protocol.Wrap(err, protocol.KindTimeout, "another request for this code did not finish within the deadline")
	}
	return protocol.Wrap(err, protocol.KindUnavailable, "the de-duplication store failed; retry")
}

// answer is what is remembered about a code.
type answer struct {
	Result protocol.Result
	Err    *protocol.Error
	claim  bool
}

// final reports whether the answer is worth remembering: a success, or
// a terminal WeChat verdict about the code. Transient failures are not.
func (a answer) final() bool {
	if a.Err == nil {
		return true
	}
	switch a.Err.Kind {
	case protocol.KindInvalidCode, protocol.KindCodeUsed, protocol.KindUserBlocked:
		return true
	}
	return false
}

func (a answer) result(src Source) (protocol.Result, *protocol.Error, Source) {
	if a.Err != nil {
		// A copy: callers may add to it, and it is shared.
		e := *a.Err
		return protocol.Result{}, &e, src
	}
	return a.Result, nil, src
}

// claimValue is a claim: {"claim":true}, padded with spaces (which JSON
// allows) to claimSize. A full bucket still lets a key's value be replaced
// by one no larger, so an answer that fits in its claim's room is stored
// even when the bucket filled up during the exchange; the room is held
// only while the exchange runs.
var claimValue = []byte(`{"claim":true}` + strings.Repeat(" ", claimSize-len(`{"claim":true}`)))

// claimSize is a claim's length: room for any answer encode makes from
// WeChat's replies (28-character ids; our own short messages).
const claimSize = 256

// stored is the bucket's value format (inside the MAC).
type stored struct {
	Claim   bool          `json:"claim,omitempty"`
	OpenID  string        `json:"openid,omitempty"`
	UnionID string        `json:"unionid,omitempty"`
	Kind    protocol.Kind `json:"kind,omitempty"`
	Message string        `json:"message,omitempty"`
	Errcode int           `json:"errcode,omitempty"`
}

// Bounds of what a stored value may hold. WeChat's openids and unionids
// are 28 characters; the messages are ours.
const (
	maxStored  = 1024
	maxID      = 128
	maxMessage = 512
)

func (a answer) encode() []byte {
	v := stored{OpenID: a.Result.OpenID, UnionID: a.Result.UnionID}
	if a.Err != nil {
		msg := a.Err.Message
		if len(msg) > maxMessage/4 {
			// Within the claim's room (see claimValue); the kind and
			// errcode are what a client acts on.
			msg = strings.ToValidUTF8(msg[:maxMessage/4], "")
		}
		v = stored{Kind: a.Err.Kind, Message: msg, Errcode: a.Err.WxErrcode}
	}
	b, _ := json.Marshal(v)
	return b
}

// decode reads a stored value (its MAC already checked). Anything but a
// claim, an openid within bounds or a terminal error is not an answer.
func decode(b []byte) (answer, bool) {
	if len(b) > maxStored {
		return answer{}, false
	}
	var v stored
	if err := json.Unmarshal(b, &v); err != nil {
		return answer{}, false
	}
	switch {
	case v.Claim:
		return answer{claim: true}, v == stored{Claim: true}
	case v.Kind != "":
		a := answer{Err: protocol.Make(v.Kind, v.Message, protocol.Errcode(v.Errcode))}
		if !a.final() || len(v.Message) > maxMessage || v.OpenID != "" || v.UnionID != "" {
			return answer{}, false
		}
		return a, true
	case v.OpenID != "":
		if !protocol.ValidToken(v.OpenID) || len(v.OpenID) > maxID || len(v.UnionID) > maxID ||
			(v.UnionID != "" && !protocol.ValidToken(v.UnionID)) || v.Message != "" || v.Errcode != 0 {
			return answer{}, false
		}
		return answer{Result: protocol.Result{OpenID: v.OpenID, UnionID: v.UnionID}}, true
	}
	return answer{}, false
}
