// Package dedup makes a login code's exchange happen once across the
// whole worker pool, so that a retried or duplicated request gets the
// first exchange's answer instead of WeChat's "code been used".
//
// Three layers, cheapest first:
//   - a per-worker cache of recent answers;
//   - per-worker collapsing of concurrent duplicates (singleflight): the
//     followers wait for the leader's answer within their own deadlines;
//   - across workers, a JetStream key-value bucket. The leader claims the
//     key with Create (a claim that expires by itself after ClaimTTL, so a
//     dead worker blocks nobody for long), calls WeChat, and then writes
//     the answer. Other workers that meet the claim poll for the answer.
//
// Only the claim is on the critical path. The answer is written by a
// publish that waits for no acknowledgement and goes out before the reply
// on the same connection, so the server stores it before the requester can
// see the reply.
//
// Keys are an HMAC of appid and code under the app's secret: never the raw
// code. Stored values hold only what a reply needs: openid and unionid, or
// a terminal error. Never a session_key.
package dedup

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/bucket"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// Options configure a Store.
type Options struct {
	ResultTTL time.Duration // how long answers are kept (at least a code's 5-minute life)
	ClaimTTL  time.Duration // how long a claim blocks others if its worker dies; at least 1s
	// Bucket is the KV bucket's name; Replicas its replica count.
	Bucket   string
	Replicas int
	// LocalMax caps the per-worker cache; 0 means 100,000 answers.
	LocalMax int
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

	mu     sync.Mutex
	flight map[string]*flight // exchanges running on this worker, by key

	kv       atomic.Pointer[jetstream.KeyValue] // nil: per-worker only
	nc       *nats.Conn
	subjPx   string      // "$KV.<bucket>."
	claimHdr nats.Header // the claim's headers; shared, never written after Bind

	warn logging.Throttle
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
	if opts.LocalMax <= 0 {
		opts.LocalMax = 100_000
	}
	return &Store{opts: opts, log: logger, cache: newCache(opts.ResultTTL, opts.LocalMax),
		flight: map[string]*flight{}, warn: logging.Throttle{Every: 10 * time.Second}}
}

// BucketName is the answers bucket for a subject prefix.
func BucketName(subjectPrefix string) string { return bucket.Name(subjectPrefix, "results") }

// Bind creates the bucket if missing (or uses the existing one) and turns
// cross-worker de-duplication on. It returns bucket.ErrNoJetStream when
// the server has no JetStream.
func (s *Store) Bind(ctx context.Context, nc *nats.Conn) error {
	kv, err := bucket.OpenWithKeyTTLs(ctx, nc, jetstream.KeyValueConfig{
		Bucket:      s.opts.Bucket,
		Description: "wxlogin: answers of recent code exchanges, keyed by HMAC(appid, code)",
		TTL:         s.opts.ResultTTL,
		History:     1,
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
	s.claimHdr = nats.Header{
		jetstream.ExpectedLastSubjSeqHeader: {"0"},
		jetstream.MsgTTLHeader:              {s.opts.ClaimTTL.String()},
	}
	s.kv.Store(&kv)
	return nil
}

// Shared reports whether de-duplication spans the pool (JetStream bound).
func (s *Store) Shared() bool { return s.kv.Load() != nil }

// Key is the bucket key for (appid, code): an HMAC under the app's
// secret, so the key reveals nothing and every worker computes the same.
func Key(secret, appid, code string) string { return NewKeyer(secret, appid).Key(code) }

// Keyer computes one app's Keys. It keeps its HMAC states for reuse:
// setting one up hashes the secret twice, more work than the code itself.
type Keyer struct {
	appid string
	macs  sync.Pool // of hash.Hash
}

// NewKeyer returns the Keyer for an app.
func NewKeyer(secret, appid string) *Keyer {
	k := &Keyer{appid: appid}
	k.macs.New = func() any { return hmac.New(sha256.New, []byte(secret)) }
	return k
}

// Key is the bucket key for code; see the package function Key.
func (k *Keyer) Key(code string) string {
	m := k.macs.Get().(hash.Hash)
	m.Reset()
	m.Write([]byte(k.appid))
	m.Write([]byte{0})
	m.Write([]byte(code))
	var sum [sha256.Size]byte
	var out [32]byte
	hex.Encode(out[:], m.Sum(sum[:0])[:16])
	k.macs.Put(m)
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
	key string
	f   *flight
	kv  jetstream.KeyValue // nil: not claimed in the store (per worker only)
	rev uint64             // our claim's revision, with kv
}

// Begin returns the answer for key if another request, on this worker or
// another, has it or is getting it; it waits for a running exchange
// within ctx. Otherwise it returns a Lead, and the caller runs the
// exchange. Later callers on this worker wait for the Lead's End.
func (s *Store) Begin(ctx context.Context, key string) (*Lead, protocol.Result, *protocol.Error, Source) {
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

	l := &Lead{s: s, key: key, f: f}
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
		a = l.s.claimed(ctx, l.kv, l.key, l.rev, a)
	} else if a.final() {
		l.s.cache.put(l.key, a.encode())
	}
	l.land(answered{a, FromUpstream})
	res, e, _ = a.result(FromUpstream)
	return res, e
}

// land gives the flight its answer and ends it.
func (l *Lead) land(a answered) {
	l.f.answered = a
	l.s.mu.Lock()
	delete(l.s.flight, l.key)
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
	for {
		rev, err := s.claim(ctx, kv, l.key)
		switch {
		case err == nil:
			l.kv, l.rev = kv, rev
			return answer{}, false
		case errors.Is(err, jetstream.ErrKeyExists):
			a, found, err := s.await(ctx, kv, l.key)
			if found {
				s.cache.put(l.key, a.encode())
				return a, true
			}
			if err != nil {
				return answer{Err: deadline(err)}, true
			}
			// The claim went away without an answer: claim it ourselves.
		default:
			if ctx.Err() != nil {
				return answer{Err: deadline(err)}, true
			}
			// The store is unreachable: serve rather than fail, per worker.
			s.degraded("claiming a code failed; de-duplicating on this worker only", err)
			return answer{}, false
		}
	}
}

// claim creates key with a claim that expires after ClaimTTL. It is the
// one store round trip on the request's path, so it skips the KV client's
// general machinery: a plain request to the key's subject with the
// headers Create would send, and the acknowledgement read without
// reflection. Anything unusual (a delete marker to write over, an error)
// goes the general way, through kv.Create.
func (s *Store) claim(ctx context.Context, kv jetstream.KeyValue, key string) (uint64, error) {
	msg := &nats.Msg{Subject: s.subjPx + key, Header: s.claimHdr, Data: claimValue}
	if reply, err := s.nc.RequestMsgWithContext(ctx, msg); err == nil {
		if seq, ok := ackSequence(reply.Data); ok {
			return seq, nil
		}
	} else if ctx.Err() != nil {
		return 0, err
	}
	return kv.Create(ctx, key, claimValue, jetstream.KeyTTL(s.opts.ClaimTTL))
}

// ackSequence reads the sequence of a successful JetStream publish
// acknowledgement, {"stream":"…","seq":N,…}; ok is false for an error or
// anything else.
func ackSequence(ack []byte) (uint64, bool) {
	if bytes.Contains(ack, []byte(`"error"`)) {
		return 0, false
	}
	i := bytes.Index(ack, []byte(`"seq":`))
	if i < 0 {
		return 0, false
	}
	rest := ack[i+len(`"seq":`):]
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	seq, err := strconv.ParseUint(string(rest[:end]), 10, 64)
	return seq, err == nil && seq > 0
}

// claimed stores the answer of the exchange run under our claim, and
// returns the answer to give.
func (s *Store) claimed(ctx context.Context, kv jetstream.KeyValue, key string, rev uint64, a answer) answer {
	if a.Err != nil && a.Err.Kind == protocol.KindCodeUsed {
		// Our claim may have expired during a long exchange and another
		// worker may have used the code and stored its answer.
		if e, err := kv.Get(ctx, key); err == nil {
			if stored, ok := decode(e.Value()); ok && !stored.claim {
				a = stored
			}
		}
	}
	if !a.final() {
		// A transient failure: free the code at once for a retry rather
		// than making it wait out the claim.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		if err := kv.Delete(dctx, key, jetstream.LastRevision(rev)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			s.log.Debug("releasing a claim failed; it expires by itself", logging.Err(err))
		}
		cancel()
		return a
	}
	v := a.encode()
	s.cache.put(key, v)
	// A publish without a reply subject: JetStream stores it and sends no
	// acknowledgement, so it costs the worker one buffered write. It goes
	// out before the reply on the same connection, so the server has
	// stored it before the requester can retry. If it is lost (store
	// unreachable), a retry meets our claim, waits out WX_CLAIM_TTL and
	// gets WeChat's 40163 as code_used: the degraded case.
	if err := s.nc.Publish(s.subjPx+key, v); err != nil {
		s.degraded("storing an answer failed", err)
	}
	return a
}

// await polls for the answer of a key another worker has claimed. found
// is false with a nil error when the claim disappeared unanswered.
func (s *Store) await(ctx context.Context, kv jetstream.KeyValue, key string) (answer, bool, error) {
	pause := 10 * time.Millisecond
	for {
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
			return answer{}, false, nil
		case err != nil:
			return answer{}, false, err
		}
		if a, ok := decode(e.Value()); ok && !a.claim {
			return a, true, nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return answer{}, false, ctx.Err()
		case <-t.C:
		}
		pause = min(pause*2, 200*time.Millisecond)
	}
}

// degraded logs a store failure, at most once per 10 seconds.
func (s *Store) degraded(what string, err error) {
	if s.warn.Allow() {
		s.log.Warn(what, logging.Err(err))
	}
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

var claimValue = []byte(`{"claim":true}`)

// stored is the bucket's value format.
type stored struct {
	Claim   bool          `json:"claim,omitempty"`
	OpenID  string        `json:"openid,omitempty"`
	UnionID string        `json:"unionid,omitempty"`
	Kind    protocol.Kind `json:"kind,omitempty"`
	Message string        `json:"message,omitempty"`
	Errcode int           `json:"errcode,omitempty"`
}

func (a answer) encode() []byte {
	if a.Err == nil {
		// The same fields, without reflection: the common case.
		return protocol.EncodeResult(a.Result)
	}
	b, _ := json.Marshal(stored{Kind: a.Err.Kind, Message: a.Err.Message, Errcode: a.Err.WxErrcode})
	return b
}

func decode(b []byte) (answer, bool) {
	var v stored
	if err := json.Unmarshal(b, &v); err != nil {
		return answer{}, false
	}
	switch {
	case v.Claim:
		return answer{claim: true}, true
	case v.Kind != "":
		e := protocol.New(v.Kind, "%s", v.Message)
		e.WxErrcode = v.Errcode
		return answer{Err: e}, true
	case v.OpenID != "":
		return answer{Result: protocol.Result{OpenID: v.OpenID, UnionID: v.UnionID}}, true
	}
	return answer{}, false
}
