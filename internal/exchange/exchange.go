package exchange

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxlogin/wxlogin/internal/dedup"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/ratelimit"
	"github.com/wxlogin/wxlogin/internal/seal"
	"github.com/wxlogin/wxlogin/internal/token"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

// Config is what a Worker needs; cmd/worker builds it from the environment.
type Config struct {
	Apps           map[string]string // appid → AppSecret
	SubjectPrefix  string
	HTTPTimeout    time.Duration // one upstream attempt
	MaxAttempts    int
	Rate           float64 // upstream calls per second per appid; 0 = unlimited
	Burst          int     // 0 = one second's worth of Rate
	Concurrency    int     // exchanges in flight
	RequestTimeout time.Duration
	// BackoffBase is the first retry's maximum backoff; it doubles per
	// attempt (full jitter). Zero means 100ms.
	BackoffBase time.Duration

	// De-duplication (package dedup): answers are kept ResultTTL; a dead
	// worker's claim on a code expires after ClaimTTL.
	ResultTTL  time.Duration
	ClaimTTL   time.Duration
	KVReplicas int
	// KVMaxBytes and RateKVMaxBytes limit the answers and the rate-limit
	// buckets; 0 takes the packages' defaults.
	KVMaxBytes     int64
	RateKVMaxBytes int64
	// StoreKey is WX_STORE_KEY: what the keys of stored values derive
	// from (package seal); nil derives them from each AppSecret.
	StoreKey []byte
	// NoDedup turns de-duplication off entirely: for benchmarks that
	// measure its cost, never for production.
	NoDedup bool
	// Registry, when set, receives the worker's Prometheus metrics and is
	// served on the probes' /metrics.
	Registry *prometheus.Registry
	// Tokens, when set, mints a login token for every success and serves
	// PREFIX.jwks and PREFIX.session (see LoadTokens).
	Tokens *token.Issuer
	// ProbesMayMove: the probes' address is the default, not the
	// operator's, so a worker that finds it taken (another worker on the
	// same host) serves them on a free port instead of exiting.
	ProbesMayMove bool
}

// Worker exchanges codes. Its zero value is not usable; call New.
type Worker struct {
	cfg     Config
	wx      *wechat.Client
	log     *slog.Logger
	limit   *ratelimit.Limiter
	onlyApp string // the appid when exactly one is configured
	stats   *stats
	dedup   *dedup.Store            // nil with NoDedup
	keys    map[string]*dedup.Keyer // by appid; with dedup

	intake // the NATS side, in service.go
}

// New checks cfg and returns a Worker calling WeChat through upstream.
func New(cfg Config, upstream *wechat.Client, logger *slog.Logger) (*Worker, error) {
	if len(cfg.Apps) == 0 {
		return nil, errors.New("exchange: no apps configured")
	}
	if cfg.MaxAttempts < 1 {
		cfg.MaxAttempts = 1
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 100 * time.Millisecond
	}
	if cfg.SubjectPrefix == "" {
		cfg.SubjectPrefix = protocol.DefaultSubjectPrefix
	}
	w := &Worker{
		cfg:   cfg,
		wx:    upstream,
		log:   logger,
		stats: newStats(),
	}
	appids := make([]string, 0, len(cfg.Apps))
	seals := make(map[string]seal.Keys, len(cfg.Apps))
	rateKeys := make(map[string]*seal.MAC, len(cfg.Apps))
	for appid, secret := range cfg.Apps {
		appids = append(appids, appid)
		if len(cfg.Apps) == 1 {
			w.onlyApp = appid
		}
		ks, err := seal.Derive(cfg.StoreKey, appid, secret)
		if err != nil {
			return nil, fmt.Errorf("exchange: keys of app %s: %w", appid, err)
		}
		seals[appid], rateKeys[appid] = ks, ks.RateLimit
	}
	var stores *metrics.Stores
	if cfg.Registry != nil {
		stores = metrics.NewStores(cfg.Registry)
	}
	w.limit = ratelimit.New(ratelimit.Options{
		Rate: cfg.Rate, Burst: cfg.Burst, MinAttempt: minAttempt,
		Bucket: ratelimit.BucketName(cfg.SubjectPrefix), Replicas: cfg.KVReplicas,
		MaxBytes: cfg.RateKVMaxBytes, Keys: rateKeys, Metrics: stores,
	}, appids, logger)
	if cfg.Registry != nil {
		var rates func() map[string]float64
		if cfg.Rate > 0 {
			rates = w.limit.Rates
		}
		w.stats.m = metrics.NewWorker(cfg.Registry, appids, rates, func() float64 { return float64(w.inFlight()) })
		metrics.Modes(cfg.Registry,
			func() bool { return w.DedupMode() == "shared" },
			func() bool { return w.RateMode() == "shared" })
	}
	if !cfg.NoDedup {
		w.dedup = dedup.New(dedup.Options{
			ResultTTL: cfg.ResultTTL, ClaimTTL: cfg.ClaimTTL,
			Bucket: dedup.BucketName(cfg.SubjectPrefix), Replicas: cfg.KVReplicas,
			MaxBytes: cfg.KVMaxBytes, Metrics: stores,
		}, logger)
		w.keys = make(map[string]*dedup.Keyer, len(cfg.Apps))
		for appid, secret := range cfg.Apps {
			w.keys[appid] = dedup.NewKeyer(secret, appid, seals[appid].Answers)
		}
	}
	w.intake.init(cfg.Concurrency)
	return w, nil
}

// outcome is what one exchange did, for the log line and the stats.
type outcome struct {
	appid    string
	attempts int
	retries  int
	lost     bool // a retry found the code used: an earlier attempt's answer was lost
	rid      string
	latency  time.Duration
	source   dedup.Source
	err      *protocol.Error
}

// app resolves the app a request is for: its appid (the only one
// configured when the request names none) and secret.
func (w *Worker) app(req protocol.Request) (appid, secret string, e *protocol.Error) {
	if e := req.Validate(); e != nil {
		return req.AppID, "", e
	}
	appid = req.AppID
	if appid == "" {
		if w.onlyApp == "" {
			return "", "", protocol.New(protocol.KindAppIDRequired, "several apps are configured: name one with appid")
		}
		appid = w.onlyApp
	}
	secret, ok := w.cfg.Apps[appid]
	if !ok {
		return appid, "", protocol.New(protocol.KindUnknownApp, "this service does not serve appid %q", appid)
	}
	return appid, secret, nil
}

// job is one exchange, run by one goroutine from the message's arrival
// to its reply.
type job struct {
	w        *Worker
	reply    string
	deadline time.Time // the requester's: its budget from the message's arrival

	ctx       context.Context // ends at the deadline
	cancel    context.CancelFunc
	req       protocol.Request
	slot      bool // holds a concurrency slot
	replied   bool
	secret    string
	lead      *dedup.Lead // ours to run and End, with de-duplication
	start     time.Time   // of the exchange proper, after the slot
	callStart time.Time   // of the current attempt
	ambiguous bool        // an earlier attempt may have consumed the code
	o         outcome
}

// run is the whole exchange: decode, wait for a slot, ask
// de-duplication, call WeChat if need be, and answer.
func (j *job) run(data []byte) {
	j.ctx, j.cancel = context.WithDeadline(context.Background(), j.deadline)
	defer j.end()
	req, e := protocol.DecodeRequest(data)
	j.req = req
	if e == nil {
		select {
		case j.w.slots <- struct{}{}:
			j.slot = true
		case <-j.ctx.Done():
			e = protocol.New(protocol.KindTimeout, "the worker was too busy to start this exchange within its deadline")
		}
	}
	if e != nil {
		j.w.stats.record(outcome{err: e})
		j.send(protocol.ErrorMsg(e))
		return
	}
	if j.begin() {
		j.call()
	}
}

// errPanic answers an exchange that panicked. The code was not
// necessarily spent, so the client may retry it.
var errPanic = protocol.New(protocol.KindUpstream, "internal error")

// end, deferred by run, frees what the job holds. A panic on the way
// is logged and answered with an error, and the worker carries on: one
// bad exchange must not take the others down with the process.
func (j *job) end() {
	if r := recover(); r != nil {
		j.w.logPanic("exchange "+logging.CodeHash(j.req.Code), r)
		if j.lead != nil {
			lead := j.lead
			j.lead = nil
			// Free duplicates waiting on this exchange; a transient
			// error is not remembered.
			j.w.panics("ending de-duplication", func() { lead.End(j.ctx, protocol.Result{}, errPanic) })
		}
		if !j.replied {
			j.send(protocol.ErrorMsg(errPanic))
		}
	}
	if j.slot {
		<-j.w.slots
	}
	j.cancel()
}

// send answers the requester. It answers through the connection, not
// through micro's Request, whose bookkeeping is not safe to touch after
// the handler returned.
func (j *job) send(msg *nats.Msg) {
	j.replied = true
	msg.Subject = j.reply
	if err := j.w.nc.PublishMsg(msg); err != nil {
		j.w.log.Warn("reply not sent", "code", logging.CodeHash(j.req.Code), logging.Err(err))
	}
}

// begin starts the exchange proper, once the job holds a slot: it checks
// the request and asks de-duplication for the answer. It reports whether
// WeChat must be called (call); if not, the job has been answered.
func (j *job) begin() bool {
	w := j.w
	j.start = time.Now()
	appid, secret, e := w.app(j.req)
	j.o.appid = appid
	if e != nil {
		j.o.err = e
		j.finish(protocol.Result{})
		return false
	}
	j.secret = secret
	if w.dedup == nil {
		return true
	}
	lead, res, e, src := w.dedup.Begin(j.ctx, w.keys[appid].Key(j.req.Code))
	if lead == nil {
		j.o.source, j.o.err = src, e
		w.stats.dedupHit(src)
		j.finish(res)
		return false
	}
	j.lead = lead
	return true
}

// call calls WeChat until an answer is final, attempts run out, or the
// deadline would be passed, and answers.
func (j *job) call() {
	for {
		if e := j.beforeAttempt(); e != nil {
			j.called(wechat.Session{}, e)
			return
		}
		ctx, cancel := j.attemptContext()
		s, err := j.w.wx.Code2Session(ctx, j.o.appid, j.secret, j.req.Code)
		cancel()
		if err == nil {
			j.succeeded()
			j.called(s, nil)
			return
		}
		if e, again := j.failed(err); !again {
			j.called(wechat.Session{}, e)
			return
		}
	}
}

// beforeAttempt waits for the rate limit and counts the attempt.
func (j *job) beforeAttempt() *protocol.Error {
	w, appid := j.w, j.o.appid
	waitStart := time.Now()
	if e := w.limit.Wait(j.ctx, appid); e != nil {
		if e.Kind == protocol.KindRateLimited {
			w.stats.rateLimited.Add(1)
			w.stats.m.RateWait(appid, 0, true)
		}
		return e
	}
	j.callStart = time.Now()
	if w.cfg.Rate > 0 {
		w.stats.m.RateWait(appid, j.callStart.Sub(waitStart).Seconds(), false)
	}
	j.o.attempts++
	w.stats.upstreamCalls.Add(1)
	return nil
}

// attemptContext bounds one attempt by WX_HTTP_TIMEOUT as well as the
// request's deadline.
func (j *job) attemptContext() (context.Context, context.CancelFunc) {
	if dl, ok := j.ctx.Deadline(); !ok || time.Until(dl) > j.w.cfg.HTTPTimeout {
		return context.WithTimeout(j.ctx, j.w.cfg.HTTPTimeout)
	}
	// The request's deadline comes first: a context of its own for the
	// attempt would only cost an allocation and a timer.
	return j.ctx, func() {}
}

// succeeded records an attempt WeChat answered.
func (j *job) succeeded() {
	j.w.stats.m.Attempt(j.o.appid, 0, false, time.Since(j.callStart).Seconds())
	j.w.limit.Feedback(j.ctx, j.o.appid, 0)
}

// failed records a failed attempt and decides what follows: another
// attempt after a backoff (again), or the error to answer with.
func (j *job) failed(err error) (_ *protocol.Error, again bool) {
	w, ctx, appid := j.w, j.ctx, j.o.appid
	e := protocol.As(err)
	w.stats.m.Attempt(appid, e.WxErrcode, e.WxErrcode == 0, time.Since(j.callStart).Seconds())
	w.stats.upstreamError(e.WxErrcode)
	w.limit.Feedback(ctx, appid, e.WxErrcode)
	if ctx.Err() != nil {
		return deadlineError(ctx, e), false
	}
	if e.Kind == protocol.KindCodeUsed && j.ambiguous {
		// WeChat does not say whether a busy or timed-out attempt
		// consumed the code; this one says an earlier one did.
		j.o.lost = true
		return e.With(protocol.Message("the code was consumed by an earlier attempt whose answer was lost; get a new code")), false
	}
	if !e.Temporary || j.o.attempts >= w.cfg.MaxAttempts {
		return final(e), false
	}
	j.ambiguous = j.ambiguous || e.Kind != protocol.KindRateLimited
	pause := w.backoff(j.o.attempts, e)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < pause+minAttempt {
		return final(e), false
	}
	j.o.retries++
	w.stats.retries.Add(1)
	w.stats.m.Retry(appid)
	if !sleep(ctx, pause) {
		return deadlineError(ctx, e), false
	}
	return nil, true
}

// called ends an exchange that called WeChat: with de-duplication, the
// answer is stored for duplicates first.
func (j *job) called(s wechat.Session, e *protocol.Error) {
	var res protocol.Result
	if e == nil {
		j.o.rid = s.RID
		res = protocol.Result{OpenID: s.OpenID, UnionID: s.UnionID}
	}
	j.o.err = e
	if lead := j.lead; lead != nil {
		j.lead = nil
		res, j.o.err = lead.End(j.ctx, res, e)
		j.w.stats.dedupHit(dedup.FromUpstream)
	}
	j.finish(res)
}

// finish records the exchange and answers the requester.
func (j *job) finish(res protocol.Result) {
	w := j.w
	j.o.latency = time.Since(j.start)
	w.stats.record(j.o)
	w.logOutcome(j.req, j.o)
	if j.o.err != nil {
		j.send(protocol.ErrorMsg(j.o.err))
		return
	}
	j.send(w.successMsg(j.o.appid, res))
}

// minAttempt is the least time worth starting an attempt with.
const minAttempt = 20 * time.Millisecond

// final turns the last retryable failure into what the client sees.
func final(e *protocol.Error) *protocol.Error {
	if e.Kind == protocol.KindRateLimited && e.RetryAfter == 0 {
		return e.With(protocol.RetryAfter(time.Second))
	}
	if e.Temporary && e.Kind == protocol.KindUpstream {
		return e.With(protocol.Message("WeChat failed after retries: " + e.Message))
	}
	return e
}

// deadlineError reports that the requester's budget ran out.
func deadlineError(ctx context.Context, last *protocol.Error) *protocol.Error {
	if errors.Is(context.Cause(ctx), context.Canceled) {
		return protocol.Wrap(last, protocol.KindUnavailable, "the request was cancelled")
	}
	return protocol.Wrap(last, protocol.KindTimeout, "WeChat did not answer within the request's deadline")
}

// backoff is exponential with full jitter; a frequency limit (45011)
// waits longer, since WeChat counts per minute.
func (w *Worker) backoff(attempt int, e *protocol.Error) time.Duration {
	base := w.cfg.BackoffBase
	if e.WxErrcode == wechat.ErrcodeRateLimit {
		base *= 5
	}
	ceil := base << (attempt - 1)
	if limit := 2 * time.Second; ceil > limit {
		ceil = limit
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// logOutcome writes the one line per exchange: never the secret, the
// session_key or the code, only the code's short hash.
func (w *Worker) logOutcome(req protocol.Request, o outcome) {
	level := slog.LevelInfo
	kind := "ok"
	if o.err != nil {
		kind = string(o.err.Kind)
		switch {
		case wechat.IsMisconfiguration(o.err):
			level = slog.LevelError
		case o.err.Kind == protocol.KindUpstream, o.err.Kind == protocol.KindTimeout, o.lost:
			level = slog.LevelWarn
		}
	}
	ctx := context.Background()
	if !w.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 9)
	attrs = append(attrs,
		slog.String("appid", o.appid),
		slog.String("code", logging.CodeHash(req.Code)),
		slog.String("outcome", kind),
		slog.Int("attempts", o.attempts),
		slog.Duration("latency", o.latency),
	)
	if o.rid != "" {
		attrs = append(attrs, slog.String("rid", o.rid))
	}
	if o.err != nil {
		if o.err.WxErrcode != 0 {
			attrs = append(attrs, slog.Int("errcode", o.err.WxErrcode))
		}
		attrs = append(attrs, logging.Err(o.err))
	}
	if o.lost {
		attrs = append(attrs, slog.Bool("answer_lost", true))
	}
	if o.source != dedup.FromUpstream {
		attrs = append(attrs, slog.String("answered_from", o.source.String()))
	}
	w.log.LogAttrs(ctx, level, "exchange", attrs...)
}

// String describes the worker's limits for the start-up log.
func (w *Worker) String() string {
	r := "unlimited"
	if w.cfg.Rate > 0 {
		r = fmt.Sprintf("%g/s", w.cfg.Rate)
	}
	return fmt.Sprintf("apps=%d rate=%s attempts=%d concurrency=%d", len(w.cfg.Apps), r, w.cfg.MaxAttempts, w.cfg.Concurrency)
}
