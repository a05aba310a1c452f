// Package fakewx is a faithful fake of WeChat's auth.code2Session endpoint,
// GET /sns/jscode2session, for development, tests and benchmarks.
//
// A Server is an http.Handler: mount it on an httptest.Server (or any
// listener) and point a WeChat client's base URL at it. It answers the way
// WeChat does, including the awkward parts clients must cope with:
//
//   - answers are JSON labelled "Content-Type: text/plain";
//   - a success carries no errcode field, only session_key, openid and, for
//     apps bound to an open-platform account, unionid;
//   - every errmsg ends with a request id ("…, rid: 6561c2f1-3c2b5a7e-1d4e5f60");
//   - a code is single use: the second exchange of the same code (per appid)
//     answers 40163 "code been used".
//
// Requests are checked in WeChat's order: missing or unknown appid (40013),
// wrong secret (40125), grant_type other than authorization_code (40002),
// missing js_code (41008). Then, in this order, come scripted steps for the
// code (see Server.Script), magic codes (below) and finally the normal
// behaviour: 40163 for a code already used within Config.CodeTTL, otherwise a
// success that marks the code used. No answer ever contains the secret or the
// code, so tests can assert that they never leak through a client's errors.
//
// The outcome of a request, including whether it consumed its code, is
// decided when the request arrives; delays (Config.Latency, Slow, Drip,
// fx-slow) only postpone delivering it. A client that gives up during a delay
// has therefore lost a success, and its retry gets 40163: the "answer lost"
// case that WeChat documents no better than this.
//
// # Magic codes
//
// So that the standalone binary and end-to-end tests can trigger failures over
// real HTTP without access to the Go API, codes of this form misbehave:
//
//	code      = "fx-" directive "-" anything
//	directive = "invalid"           every call answers 40029 (invalid code)
//	          | "blocked"           every call answers 40226 (high-risk user)
//	          | "hang"              every call hangs until the client gives up
//	          | "busy" N            calls 1..N answer -1 (system busy), then normal
//	          | "limit" N           calls 1..N answer 45011 (frequency limit), then normal
//	          | "5xx" N             calls 1..N answer HTTP 502 with an HTML body, then normal
//	          | "garbage" N         calls 1..N answer 200 with a non-JSON body, then normal
//	          | "slow" MS           every call is delayed MS milliseconds, then normal
//	N, MS     = 1 to 9 decimal digits
//	anything  = any string, possibly empty (makes the code unique)
//
// For example "fx-busy2-a1b2" answers -1 twice, then succeeds once, then
// answers 40163. Calls are counted per exact code (see Server.Calls), across
// all appids and outcomes, including requests rejected by the checks above.
// Any other code, including a malformed magic one such as "fx-busy-x", is an
// ordinary valid code.
//
// # Resources
//
// New starts no goroutine, so a Server needs no Close. What it remembers about
// a code (use, call count) is forgotten CodeTTL after it was last seen,
// so memory stays bounded under a soak with millions of distinct codes: codes
// live in two generations per shard and a whole generation is dropped at once,
// which costs nothing per request and never pauses to sweep.
//
// # TLS and HTTP/2
//
// Served over plain HTTP, the fake speaks HTTP/1.1 only, so a client holds
// one connection per call in flight. Real WeChat is reached over HTTPS, where
// a server may offer HTTP/2 and many calls share a connection. TLSCert serves
// the fake that way, with a self-signed certificate made at start, and
// Server.CallsByProtocol tells which protocol the calls came over.
package fakewx

import (
	"crypto/sha256"
	"encoding/base64"
	"hash/maphash"
	"net/http"
	"slices"
	"sync/atomic"
	"time"
)

// Path is the only path the fake serves.
const Path = "/sns/jscode2session"

// DemoAppID and DemoSecret identify the demo app returned by DemoApp. They are
// public on purpose: the secret only unlocks this fake.
const (
	DemoAppID  = "wxdemo000000000001"
	DemoSecret = "demo-secret-not-for-production"
)

// DefaultCodeTTL is how long a code is remembered when Config.CodeTTL is not
// set: WeChat's codes are valid for five minutes.
const DefaultCodeTTL = 5 * time.Minute

// App is one mini-program the fake knows.
type App struct {
	AppID, Secret string
	// UnionID reports whether the app is bound to an open-platform account,
	// in which case successful answers carry a unionid.
	UnionID bool
}

// DemoApp returns the demo app: DemoAppID, DemoSecret, bound to an open
// platform account.
func DemoApp() App {
	return App{AppID: DemoAppID, Secret: DemoSecret, UnionID: true}
}

// Config configures a Server.
type Config struct {
	// Apps are the mini-programs the fake accepts. With none, every request
	// answers 40013 (invalid appid).
	Apps []App
	// Latency is added before every answer, for benchmarks. It can be
	// changed later with Server.SetLatency.
	Latency time.Duration
	// CodeTTL is how long a code is remembered, counted from the last
	// request carrying it: while remembered, a used code answers 40163 and
	// its calls are counted. After that the code is forgotten entirely (it
	// would work again), so memory stays bounded. Zero or negative means
	// DefaultCodeTTL.
	CodeTTL time.Duration
	// OnCall, if set, is called once for every GET request to Path, after
	// the answer is decided and before it is delivered. It is called from
	// the serving goroutines, so it must be safe for concurrent use, and it
	// should be quick: it delays the answer.
	OnCall func(Call)
}

// Call describes one request to the endpoint, as passed to Config.OnCall.
type Call struct {
	// At is when the request arrived.
	At time.Time
	// AppID and Code are the request's appid and js_code, as sent.
	AppID string
	Code  string
	// Errcode is what the fake answered: 0 for success, the errcode of a
	// JSON error, or -2 for answers that are not WeChat JSON (HTTP errors,
	// garbage, truncated or huge bodies, resets, hangs).
	Errcode int
}

// ErrcodeFault is Call.Errcode for answers that are not WeChat JSON.
const ErrcodeFault = -2

// Server is the fake endpoint. Create it with New; it is safe for concurrent
// use.
type Server struct {
	apps    map[string]App
	ttl     int64 // nanoseconds
	onCall  func(Call)
	latency atomic.Int64         // nanoseconds
	epoch   time.Time            // monotonic origin for the compact timestamps below
	elapsed func() time.Duration // replaces time.Since(epoch) in tests of expiry
	seed    maphash.Seed
	shards  [numShards]shard

	// Calls to the endpoint by protocol; TotalCalls is their sum, so
	// counting by protocol costs nothing per request.
	http1, http2 atomic.Int64
}

// New returns a Server for cfg. It starts no goroutine.
func New(cfg Config) *Server {
	s := &Server{
		apps:   make(map[string]App, len(cfg.Apps)),
		ttl:    int64(cfg.CodeTTL),
		onCall: cfg.OnCall,
		epoch:  time.Now(),
		seed:   maphash.MakeSeed(),
	}
	if s.ttl <= 0 {
		s.ttl = int64(DefaultCodeTTL)
	}
	for _, a := range cfg.Apps {
		s.apps[a.AppID] = a
	}
	s.latency.Store(int64(cfg.Latency))
	for i := range s.shards {
		s.shards[i].cur = make(map[string]codeState)
		s.shards[i].prev = make(map[string]codeState)
		s.shards[i].scripts = make(map[string][]Step)
	}
	return s
}

// SetLatency changes the delay added before every answer. It is safe to call
// while the server is serving; requests already waiting keep their delay.
func (s *Server) SetLatency(d time.Duration) {
	s.latency.Store(int64(d))
}

// Script makes the next len(steps) requests carrying code get these steps, in
// order; after that the code behaves normally again. Calling Script again for
// a code with pending steps appends to them. Steps are consumed only by
// requests that pass the appid, secret and grant_type checks. Scripted codes
// do not need to be magic codes; a script takes precedence over a magic code.
func (s *Server) Script(code string, steps ...Step) {
	if len(steps) == 0 {
		return
	}
	sh := s.shard(code)
	sh.mu.Lock()
	// Copy so that the caller's slice is never aliased.
	pending := sh.scripts[code]
	sh.scripts[code] = append(pending[:len(pending):len(pending)], steps...)
	sh.mu.Unlock()
}

// Calls returns how many requests carried code, whatever their outcome, or 0
// if the code was not seen within CodeTTL.
func (s *Server) Calls(code string) int {
	sh := s.shard(code)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	st, ok := sh.cur[code]
	if !ok {
		st, ok = sh.prev[code]
	}
	if !ok || now-st.lastSeen >= s.ttl {
		return 0
	}
	return int(st.calls)
}

// TotalCalls returns how many GET requests reached the endpoint, whatever
// their outcome. It equals the number of Config.OnCall invocations.
func (s *Server) TotalCalls() int64 {
	return s.http1.Load() + s.http2.Load()
}

// CallsByProtocol splits TotalCalls by the protocol the requests came
// over: HTTP/1.x, or HTTP/2 (only over TLS, see TLSCert). Tests use it to
// check which protocol a client negotiated.
func (s *Server) CallsByProtocol() (http1, http2 int64) {
	return s.http1.Load(), s.http2.Load()
}

// OpenID returns the openid the fake answers for code exchanged by appid:
// "o" followed by 27 base64url characters of a SHA-256 over appid and code,
// shaped like WeChat's 28-character openids. It is deterministic so that
// tests can predict it.
func OpenID(appid, code string) string {
	return derive('o', "fakewx openid", appid, code)
}

// UnionID returns the unionid the fake answers, for apps with App.UnionID, for
// code exchanged by appid: "u" followed by 27 base64url characters, derived
// like OpenID but under a different label, so the two never coincide.
func UnionID(appid, code string) string {
	return derive('u', "fakewx unionid", appid, code)
}

func derive(prefix byte, label, appid, code string) string {
	// Hash label NUL appid NUL code, built on the stack for the usual short
	// inputs. The separators keep ("ab","c") and ("a","bc") apart.
	var buf [128]byte
	in := append(buf[:0], label...)
	in = append(in, 0)
	in = append(in, appid...)
	in = append(in, 0)
	in = append(in, code...)
	sum := sha256.Sum256(in)
	var enc [43]byte // base64 of 32 bytes, unpadded
	base64.RawURLEncoding.Encode(enc[:], sum[:])
	var id [28]byte
	id[0] = prefix
	copy(id[1:], enc[:27])
	return string(id[:])
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != Path {
		if s.wait(r.Context(), 0) {
			http.NotFound(w, r)
		}
		return
	}
	if r.Method != http.MethodGet {
		if s.wait(r.Context(), 0) {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "405 method not allowed", http.StatusMethodNotAllowed)
		}
		return
	}
	at := time.Now()
	if r.ProtoMajor == 2 {
		s.http2.Add(1)
	} else {
		s.http1.Add(1)
	}

	q := r.URL.Query()
	appid := q.Get("appid")
	code := q.Get("js_code")
	ans := s.decide(q, appid, code)
	if s.onCall != nil {
		s.onCall(Call{At: at, AppID: appid, Code: code, Errcode: ans.errcode()})
	}
	s.deliver(w, r, ans)
}

// answer is a decided outcome: what to say (errcode, or success when
// errcode is 0) and how to deliver it (step).
type answer struct {
	step    Step
	code    int  // WeChat errcode, 0 for success; meaningful for JSON steps
	success bool // a success body with this app's ids
	app     App
	appid   string
	jscode  string
}

func (a *answer) errcode() int {
	if a.step.kind.isFault() {
		return ErrcodeFault
	}
	return a.code
}

// decide runs WeChat's checks and the code's state machine. It takes the
// code's shard lock once; everything slow (randomness, writing) happens later.
func (s *Server) decide(q map[string][]string, appid, code string) answer {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	errAnswer := func(n int) answer { return answer{step: Step{kind: kindJSON}, code: n} }

	var reject int
	app, known := s.apps[appid]
	switch {
	case appid == "" || !known:
		reject = 40013
	case get("secret") != app.Secret:
		reject = 40125
	case get("grant_type") != "authorization_code":
		reject = 40002
	case code == "":
		reject = 41008
	}
	if code == "" {
		return errAnswer(reject) // nothing to remember without a code
	}

	m := parseMagic(code)
	sh := s.shard(code)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// Read the clock under the lock so that times never go backwards
	// within a shard, which the generation bookkeeping relies on.
	now := s.now()

	st := sh.touch(code, now, s.ttl)
	st.calls++
	st.lastSeen = now
	defer func() { sh.cur[code] = st }()

	if reject != 0 {
		return errAnswer(reject)
	}

	normal := func(step Step) answer {
		a := answer{step: step, app: app, appid: appid, jscode: code}
		if slices.Contains(st.used, appid) {
			a.code = 40163
			return a
		}
		st.used = append(st.used, appid)
		a.success = true
		return a
	}

	if steps := sh.scripts[code]; len(steps) > 0 {
		step := steps[0]
		if len(steps) == 1 {
			delete(sh.scripts, code)
		} else {
			sh.scripts[code] = steps[1:]
		}
		if step.kind.answersNormally() {
			return normal(step)
		}
		return answer{step: step, code: step.errcode}
	}

	if m.kind != magicNone {
		within := st.calls <= m.n
		switch m.kind {
		case magicInvalid:
			return errAnswer(40029)
		case magicBlocked:
			return errAnswer(40226)
		case magicHang:
			return answer{step: Hang()}
		case magicSlow:
			return normal(Slow(time.Duration(m.n) * time.Millisecond))
		case magicBusy:
			if within {
				return errAnswer(-1)
			}
		case magicLimit:
			if within {
				return errAnswer(45011)
			}
		case magic5xx:
			if within {
				return answer{step: badGateway}
			}
		case magicGarbage:
			if within {
				return answer{step: Garbage()}
			}
		}
	}
	return normal(Step{kind: kindJSON})
}
