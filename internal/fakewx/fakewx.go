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
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"hash/maphash"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
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

// numShards spreads codes over independently locked maps so that concurrent
// requests rarely contend; a power of two so the index is a mask.
const numShards = 64

// shard holds what the fake knows about the codes that hash to it.
//
// Codes live in two generations: cur holds codes seen since genStart, prev
// codes seen in the generation before. Generations last one TTL, so when a
// generation ends every code still in prev was last seen more than a TTL ago
// and the whole map can be dropped at once. A code seen again while in prev
// moves to cur. Expiry is still checked exactly on every read; generations
// only bound memory to about two TTLs' worth of distinct codes.
type shard struct {
	mu       sync.Mutex
	cur      map[string]codeState
	prev     map[string]codeState
	genStart int64
	// scripts are the pending steps per code. They are installed by tests
	// through the Go API and never expire, so that a slow test cannot lose
	// them; they are removed as they are consumed.
	scripts map[string][]Step
}

// codeState is what the fake remembers about one code. Times are nanoseconds
// since Server.epoch.
type codeState struct {
	calls    int64
	lastSeen int64
	// used lists the appids that exchanged this code successfully; nearly
	// always zero or one entry. Marks live as long as the state: a code
	// stays used until it is forgotten, as on WeChat, where a used code
	// never works again.
	used []string
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

// touch returns the live state for code, rotating generations if one has
// ended and moving the code out of prev so that it survives the next rotation.
// The caller stores the updated state back into cur. sh.mu must be held.
func (sh *shard) touch(code string, now, ttl int64) codeState {
	if now-sh.genStart >= ttl {
		// Every code in prev was last seen before genStart, more than a
		// TTL ago: drop the map whole rather than clearing it, so a soak
		// spike does not pin its peak-sized buckets forever. Codes in
		// cur were seen before genStart+ttl; if that too is more than a
		// TTL ago, the shard was idle and they have all expired.
		if now-sh.genStart >= 2*ttl {
			sh.prev = make(map[string]codeState)
		} else {
			sh.prev = sh.cur
		}
		sh.cur = make(map[string]codeState)
		sh.genStart = now
	}
	st, ok := sh.cur[code]
	if !ok {
		if st, ok = sh.prev[code]; ok {
			delete(sh.prev, code)
		}
	}
	if ok && now-st.lastSeen >= ttl {
		st = codeState{} // expired: forget everything, as WeChat would
	}
	return st
}

func (s *Server) shard(code string) *shard {
	return &s.shards[maphash.String(s.seed, code)&(numShards-1)]
}

// now returns monotonic nanoseconds since the server started; compact and
// immune to wall-clock steps.
func (s *Server) now() int64 {
	if s.elapsed != nil {
		return int64(s.elapsed())
	}
	return int64(time.Since(s.epoch))
}

// wait sleeps for the configured latency plus extra, or until ctx ends. It
// reports whether the caller should still answer.
func (s *Server) wait(ctx context.Context, extra time.Duration) bool {
	return sleep(ctx, time.Duration(s.latency.Load())+extra)
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// deliver writes a decided answer.
func (s *Server) deliver(w http.ResponseWriter, r *http.Request, a answer) {
	ctx := r.Context()
	var extra time.Duration
	if a.step.kind == kindSlow {
		extra = a.step.d
	}
	if !s.wait(ctx, extra) {
		return // the client is gone; nobody to answer
	}
	switch a.step.kind {
	case kindJSON, kindErrcode, kindSlow:
		writeBody(w, http.StatusOK, "text/plain", a.body())
	case kindWrongContentType:
		writeBody(w, http.StatusOK, "text/html; charset=utf-8", a.body())
	case kindDrip:
		drip(ctx, w, a.body(), a.step.d)
	case kindHTTPStatus:
		writeBody(w, a.step.status, http.DetectContentType([]byte(a.step.body)), []byte(a.step.body))
	case kindGarbage:
		writeBody(w, http.StatusOK, "text/plain", []byte(garbageBody))
	case kindTruncated:
		writeBody(w, http.StatusOK, "text/plain", []byte(truncatedBody))
	case kindHuge:
		huge(w, a.step.n)
	case kindHang:
		<-ctx.Done()
	case kindReset:
		reset(w)
	}
}

// body renders the JSON answer.
func (a *answer) body() []byte {
	b := make([]byte, 0, 160)
	if !a.success {
		return appendError(b, a.code)
	}
	var key [16]byte
	rand.Read(key[:]) // never fails (crypto/rand, Go 1.24+)
	b = append(b, `{"session_key":"`...)
	b = base64.StdEncoding.AppendEncode(b, key[:])
	b = append(b, `","openid":"`...)
	b = append(b, OpenID(a.appid, a.jscode)...)
	if a.app.UnionID {
		b = append(b, `","unionid":"`...)
		b = append(b, UnionID(a.appid, a.jscode)...)
	}
	return append(b, `"}`...)
}

// errmsgs are WeChat's messages for the errcodes the fake produces; none
// contains a request parameter, so nothing secret can leak through them.
var errmsgs = map[int]string{
	-1:    "system error",
	40002: "invalid grant_type",
	40013: "invalid appid",
	40029: "invalid code",
	40125: "invalid appsecret",
	40163: "code been used",
	40226: "high risk user, login blocked",
	41008: "missing code",
	45009: "reach max api daily quota limit",
	45011: "api minute-quota reach limit mustslower retry next minute",
}

func appendError(b []byte, code int) []byte {
	msg, ok := errmsgs[code]
	if !ok {
		msg = "unknown error"
	}
	b = append(b, `{"errcode":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"errmsg":"`...)
	b = append(b, msg...)
	b = append(b, ", rid: "...)
	b = appendRID(b)
	return append(b, `"}`...)
}

// appendRID appends a request id shaped like WeChat's: the unix time and two
// random words, each as eight hex digits.
func appendRID(b []byte) []byte {
	b = appendHex32(b, uint32(time.Now().Unix()))
	b = append(b, '-')
	b = appendHex32(b, mrand.Uint32())
	b = append(b, '-')
	return appendHex32(b, mrand.Uint32())
}

func appendHex32(b []byte, v uint32) []byte {
	const digits = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, digits[(v>>uint(shift))&0xf])
	}
	return b
}

func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) // the client may be gone; nothing to do about it
}

// drip writes body one byte every d, flushing each byte so the client
// really receives it slowly.
func drip(ctx context.Context, w http.ResponseWriter, body []byte, d time.Duration) {
	h := w.Header()
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	for i := range body {
		if i > 0 && !sleep(ctx, d) {
			return
		}
		if _, err := w.Write(body[i : i+1]); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// hugeChunk is the filler streamed by huge, shared so that a huge answer
// costs no allocation proportional to its size.
var hugeChunk = bytes.Repeat([]byte{'x'}, 32<<10)

// huge streams an n-byte body. When n allows, it is a valid JSON object
// without openid, {"errmsg":"xxx…"}, so that a client without a body size
// limit reads all of it and must still reject the answer.
func huge(w http.ResponseWriter, n int) {
	const head, tail = `{"errmsg":"`, `"}`
	h := w.Header()
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(n))
	w.WriteHeader(http.StatusOK)
	fill := n
	if n >= len(head)+len(tail) {
		if _, err := w.Write([]byte(head)); err != nil {
			return
		}
		fill = n - len(head) - len(tail)
	}
	for fill > 0 {
		c := min(fill, len(hugeChunk))
		if _, err := w.Write(hugeChunk[:c]); err != nil {
			return
		}
		fill -= c
	}
	if n >= len(head)+len(tail) {
		w.Write([]byte(tail))
	}
}

// reset drops the connection without an answer. Over HTTP/1 it hijacks the
// connection and closes it with SO_LINGER 0, so the client sees a TCP RST
// ("connection reset by peer") rather than a clean EOF. Where hijacking is
// impossible (HTTP/2), aborting the handler resets the stream instead.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // net/http aborts quietly on this value
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// garbageBody is what a misbehaving proxy or captive portal sends: a 200
// that is not JSON at all.
const garbageBody = "<html><head><title>Service Unavailable</title></head>" +
	"<body><p>The upstream server is temporarily unavailable.</p></body></html>\n"

// truncatedBody is a success cut short, as when a connection drops mid-body
// behind a proxy that still reports 200.
const truncatedBody = `{"openid":"o`

// badGateway is what WeChat's front proxies answer when the service behind
// them fails.
var badGateway = HTTPStatus(http.StatusBadGateway,
	"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n"+
		"<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"+
		"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")

// Step is one scripted answer; see Server.Script. Build Steps with the
// constructors in this package. The zero Step answers normally.
type Step struct {
	kind    stepKind
	errcode int
	status  int
	body    string
	d       time.Duration
	n       int
}

type stepKind uint8

const (
	kindJSON             stepKind = iota // a JSON answer: normal, or Errcode
	kindSlow                             // normal answer after a delay
	kindDrip                             // normal answer, one byte at a time
	kindWrongContentType                 // normal answer labelled text/html
	kindHTTPStatus
	kindGarbage
	kindTruncated
	kindHang
	kindReset
	kindHuge
	kindErrcode // a JSON error with a given errcode (only in scripts)
)

// answersNormally reports whether a step changes only how the normal answer
// is delivered, so the code's normal state machine (success or 40163) still
// decides what is said.
func (k stepKind) answersNormally() bool {
	switch k {
	case kindJSON, kindSlow, kindDrip, kindWrongContentType:
		return true
	}
	return false
}

// isFault reports whether the answer is not WeChat JSON at all.
func (k stepKind) isFault() bool {
	switch k {
	case kindHTTPStatus, kindGarbage, kindTruncated, kindHang, kindReset, kindHuge:
		return true
	}
	return false
}

// String describes the step, for test failure messages.
func (st Step) String() string {
	switch st.kind {
	case kindErrcode:
		return "Errcode(" + strconv.Itoa(st.errcode) + ")"
	case kindSlow:
		return "Slow(" + st.d.String() + ")"
	case kindDrip:
		return "Drip(" + st.d.String() + ")"
	case kindWrongContentType:
		return "WrongContentType()"
	case kindHTTPStatus:
		return "HTTPStatus(" + strconv.Itoa(st.status) + ")"
	case kindGarbage:
		return "Garbage()"
	case kindTruncated:
		return "Truncated()"
	case kindHang:
		return "Hang()"
	case kindReset:
		return "Reset()"
	case kindHuge:
		return "Huge(" + strconv.Itoa(st.n) + ")"
	}
	return "Normal()"
}

// Errcode answers {"errcode":n,"errmsg":"… rid: …"} with HTTP 200, as WeChat
// does for every error. Errcode(0) gives the degenerate answer some clients
// mistake for a success: errcode 0 and no openid.
func Errcode(n int) Step { return Step{kind: kindErrcode, errcode: n} }

// Busy answers errcode -1, "system error": WeChat's transient failure.
func Busy() Step { return Errcode(-1) }

// HTTPStatus answers status with body, as a proxy in front of WeChat does
// (for example 502 with an HTML page). The Content-Type is sniffed from body.
func HTTPStatus(status int, body string) Step {
	return Step{kind: kindHTTPStatus, status: status, body: body}
}

// Garbage answers 200 with a body that is not JSON.
func Garbage() Step { return Step{kind: kindGarbage} }

// Truncated answers 200 with JSON cut short: {"openid":"o
func Truncated() Step { return Step{kind: kindTruncated} }

// Slow waits d, or until the client gives up, then answers normally. The
// code is consumed when the request arrives (see the package doc).
func Slow(d time.Duration) Step { return Step{kind: kindSlow, d: d} }

// Hang never answers; the request ends only when the client gives up. It
// does not consume the code.
func Hang() Step { return Step{kind: kindHang} }

// Reset closes the connection without an answer, so the client sees a
// connection reset. It does not consume the code. Note that Go's
// http.Transport silently retries an idempotent request once when a reused
// keep-alive connection fails this way; the retry is a new call and takes
// the next step.
func Reset() Step { return Step{kind: kindReset} }

// Huge answers 200 with an n-byte body, streamed so that the fake never holds
// n bytes. The body is valid JSON without an openid when n is at least 13
// bytes, so only a client that limits the body size fails early.
func Huge(n int) Step { return Step{kind: kindHuge, n: max(n, 0)} }

// Drip answers normally, but sends the body one byte every d, like a
// connection that barely moves. Only a deadline on the whole exchange, not a
// per-read timeout, catches it.
func Drip(d time.Duration) Step { return Step{kind: kindDrip, d: d} }

// WrongContentType answers normally, but labels the JSON text/html.
func WrongContentType() Step { return Step{kind: kindWrongContentType} }

// magic is a parsed magic code.
type magic struct {
	kind magicKind
	n    int64
}

type magicKind uint8

const (
	magicNone magicKind = iota
	magicInvalid
	magicBlocked
	magicHang
	magicBusy
	magicLimit
	magic5xx
	magicGarbage
	magicSlow
)

// parseMagic parses the grammar in the package doc. Anything that does not
// match exactly is an ordinary code, so a real code can never trip it by
// accident (WeChat's codes are alphanumeric).
func parseMagic(code string) magic {
	rest, ok := strings.CutPrefix(code, "fx-")
	if !ok {
		return magic{}
	}
	directive, _, ok := strings.Cut(rest, "-")
	if !ok {
		return magic{}
	}
	switch directive {
	case "invalid":
		return magic{kind: magicInvalid}
	case "blocked":
		return magic{kind: magicBlocked}
	case "hang":
		return magic{kind: magicHang}
	}
	for _, c := range [...]struct {
		prefix string
		kind   magicKind
	}{
		{"busy", magicBusy},
		{"limit", magicLimit},
		{"5xx", magic5xx},
		{"garbage", magicGarbage},
		{"slow", magicSlow},
	} {
		digits, ok := strings.CutPrefix(directive, c.prefix)
		if !ok {
			continue
		}
		if n, ok := parseCount(digits); ok {
			return magic{kind: c.kind, n: n}
		}
		return magic{}
	}
	return magic{}
}

// parseCount accepts 1 to 9 ASCII digits and nothing else: strconv.Atoi
// would also accept a sign, and more digits could overflow.
func parseCount(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 9 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
