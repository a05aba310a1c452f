// Package wechat is the upstream client for WeChat's auth.code2Session: it
// turns a mini-program login code into an openid, a unionid and a
// session_key.
//
// The package makes exactly one HTTP attempt per call. Retrying, backing
// off, rate-limiting and de-duplicating codes belong to the caller (package
// exchange), which knows the request's budget and whether a code may already
// have been consumed. What this package owns is the part every WeChat SDK we
// looked at gets wrong in one way or another:
//
//   - The request is built with url.Values, so no code can smuggle query
//     parameters, and no access_token is ever fetched (code2Session does
//     not need one).
//   - Every error is a *protocol.Error classified by WeChat's errcode, HTTP
//     status or transport failure, with the retry hint the mini-program
//     needs (new code, same code, or give up) and a Temporary flag that tells
//     the caller whether another upstream attempt is worth making.
//   - No error ever carries the AppSecret, the code or the session_key.
//     Go's *url.Error (which quotes the whole URL, secret included) is
//     unwrapped and every cause text is scrubbed as well, by construction
//     rather than by the care of whoever logs it.
//   - WeChat's request id (rid), which its support asks for, is kept in
//     Session.RID and in error causes (see RID).
package wechat

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

const (
	// DefaultBaseURL is WeChat's API host.
	DefaultBaseURL = "https://api.weixin.qq.com"

	// Path is code2Session's path below the base URL.
	Path = "/sns/jscode2session"

	// MaxBody is the most bytes read from an answer. Real answers are
	// about 150 bytes; anything past this is garbage and the connection is
	// dropped rather than drained.
	MaxBody = 64 << 10

	// FallbackTimeout bounds an attempt whose ctx has no deadline. The
	// caller is expected to set one; this only stops a forgotten deadline
	// from pinning a goroutine and a connection forever on a hung peer.
	FallbackTimeout = 10 * time.Second
)

// Transport tuning. Exported as constants so operators reading the code
// (and the tests) see the numbers in one place.
const (
	// MaxIdleConnsPerHost is far above net/http's default of 2: at
	// thousands of calls per second to a single host, 2 idle connections
	// means nearly every request dials (and TLS-handshakes) anew and the
	// host runs out of ephemeral ports in TIME_WAIT.
	MaxIdleConnsPerHost = 1024
	// DialTimeout and TLSHandshakeTimeout bound connection setup on their
	// own, so a black-holed SYN fails fast even under a generous ctx.
	DialTimeout         = 5 * time.Second
	TLSHandshakeTimeout = 5 * time.Second
	// IdleConnTimeout is kept below common server keep-alive timeouts
	// (nginx defaults to 75s): closing idle connections first avoids the
	// race where the server closes one just as a request is written on it.
	IdleConnTimeout = 50 * time.Second
)

// drainMax bounds how much of an unwanted body (an error page) is read so
// the connection can be reused; past it, closing the connection is cheaper.
const drainMax = 4 << 10

// Session is a successful code2Session answer. SessionKey is a secret: it
// must never reach the mini-program or a log. Session's String, Format and
// LogValue methods leave it out, so printing or logging a Session is safe.
type Session struct {
	OpenID     string
	UnionID    string // empty unless the app is bound to an open-platform account
	SessionKey string
	RID        string // WeChat's request id; usually empty on success
}

// String describes s without its session_key.
func (s Session) String() string {
	return "openid=" + s.OpenID + " unionid=" + s.UnionID + " rid=" + s.RID + " session_key=[redacted]"
}

// Format implements fmt.Formatter so that every verb, %#v and %d
// included, goes through String and never prints the session_key.
func (s Session) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// LogValue implements slog.LogValuer, leaving the session_key out.
func (s Session) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("openid", s.OpenID),
		slog.String("unionid", s.UnionID),
		slog.String("rid", s.RID),
	)
}

// Client calls code2Session. It is safe for concurrent use; create one per
// process (or per base URL) and share it, so that connections are pooled.
type Client struct {
	endpoint string // base URL + Path, without query
	tr       *http.Transport
}

// New returns a client for baseURL, an absolute http or https URL such as
// DefaultBaseURL (a trailing slash and a path prefix, for a gateway, are
// accepted). The error, not a *protocol.Error since it is a startup
// configuration mistake, never quotes user info from the URL.
//
// The client's transport honours HTTP(S)_PROXY/NO_PROXY: egress proxies are
// common where servers may not reach the internet directly, and with https
// the proxy only sees a CONNECT to the host, never the query that holds the
// secret. Redirects are not followed (see newTransport).
func New(baseURL string, opts ...Option) (*Client, error) {
	o := options{idle: MaxIdleConnsPerHost}
	for _, opt := range opts {
		opt(&o)
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		// url.Parse's error quotes the input, which may hold credentials.
		return nil, errors.New("wechat: base URL does not parse")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("wechat: base URL must be an absolute http or https URL")
	case u.Host == "" || u.Hostname() == "":
		return nil, errors.New("wechat: base URL has no host")
	case u.User != nil:
		return nil, errors.New("wechat: base URL must not hold user info")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, errors.New("wechat: base URL must not hold a query or fragment")
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return &Client{endpoint: u.String() + Path, tr: newTransport(o)}, nil
}

// An Option adjusts a Client.
type Option func(*options)

type options struct {
	idle  int
	roots *x509.CertPool // nil: the system's
}

// IdleConns keeps up to n idle connections to WeChat (default
// MaxIdleConnsPerHost). Size it to the exchanges a worker runs at once:
// with fewer, a busy worker closes connections it will need a moment
// later, and every new one costs a TLS handshake.
func IdleConns(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.idle = n
		}
	}
}

// RootCAs makes the client trust only the certificates in pool, instead of
// the system's roots, when it verifies WeChat's TLS certificate: for an
// egress proxy that intercepts TLS, a private gateway in front of WeChat,
// or a test server. A nil pool keeps the system's roots.
func RootCAs(pool *x509.CertPool) Option {
	return func(o *options) { o.roots = pool }
}

// newTransport builds the one shared transport. Code2Session calls its
// RoundTrip itself rather than through an http.Client, for it needs none
// of what a Client adds: code2Session never redirects, and following a
// redirect would send the request (and, if the Location echoed it, the
// secret) somewhere else, and turn one attempt into several, so a 3xx is
// reported instead; there are no cookies; the per-attempt budget comes
// from ctx, not a Client.Timeout. Going without pays on the benchmark's
// per-exchange memory (scenario 3, 1,000 exchanges held): Client.Do's
// frames grow the stack every waiting exchange keeps, and each cost 25.9
// KiB of Go heap and stacks through a Client against 21.5 without over
// HTTP/1.1 (-17%), 20.6 against 14.9 over HTTP/2 (-28%; both without the
// dial gate).
func newTransport(o options) *http.Transport {
	dialer := &net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second}
	gate := new(dialGate)
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.roots},
		TLSHandshakeTimeout: TLSHandshakeTimeout,
		ForceAttemptHTTP2:   true, // needed since DialContext and TLSClientConfig are custom
		MaxIdleConns:        o.idle,
		MaxIdleConnsPerHost: o.idle,
		// HTTP/1.1 keeps both buffers for each connection, that is for
		// each exchange in flight. A request is one GET of about 300
		// bytes (600 with the longest code, all escaped) and an answer
		// about 300 bytes with its headers: these hold a typical one
		// whole, and a longer one is written or read in several pieces.
		// The default 4 KiB each would be most of a busy worker's
		// memory per exchange. (HTTP/2 has buffers of its own per
		// connection.)
		ReadBufferSize:        1 << 10,
		WriteBufferSize:       512,
		IdleConnTimeout:       IdleConnTimeout,
		ExpectContinueTimeout: time.Second,
		// A hostile or broken peer must not make us buffer megabytes of
		// headers; WeChat's are well under 1 KiB.
		MaxResponseHeaderBytes: 64 << 10,
		HTTP2: &http.HTTP2Config{
			// Detect dead HTTP/2 connections: without pings, a silently
			// dropped connection keeps taking (and timing out) every new
			// stream until the OS notices.
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     10 * time.Second,
		},
	}
	// Used for https without a proxy; through a proxy, net/http dials the
	// proxy with DialContext and sets up TLS itself, ungated.
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return gate.dialTLS(ctx, tr, dialer, network, addr)
	}
	return tr
}

// answer is code2Session's JSON. A missing errcode decodes as 0.
type answer struct {
	Errcode    int    `json:"errcode"`
	Errmsg     string `json:"errmsg"`
	OpenID     string `json:"openid"`
	UnionID    string `json:"unionid"`
	SessionKey string `json:"session_key"`
}

// Code2Session exchanges code for a Session in one attempt; it never
// retries. The attempt's timeout is ctx's deadline (FallbackTimeout if ctx
// has none). Every error is a *protocol.Error; see the package doc and
// errcodes for how failures are classified.
//
// One caveat no HTTP client avoids entirely: net/http itself re-sends a GET
// when a reused keep-alive connection fails before the first response byte,
// which nearly always means the server closed an idle connection without
// reading the request. IdleConnTimeout keeps that race rare.
func (c *Client) Code2Session(ctx context.Context, appid, secret, code string) (Session, error) {
	if appid == "" || secret == "" {
		return Session{}, misconfigured("this service has no WeChat appid or secret configured")
	}
	if code == "" || len(code) > protocol.MaxTokenLen {
		return Session{}, protocol.New(protocol.KindBadRequest, "code must be 1 to %d characters", protocol.MaxTokenLen)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, FallbackTimeout)
		defer cancel()
	}

	// The endpoint is a constant validated by New, so this only fails on
	// conditions that do not involve the secret; it is still scrubbed.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint, nil)
	if err != nil {
		return Session{}, transportError(ctx, err, secret, code)
	}
	req.URL.RawQuery = query(appid, secret, code)

	resp, err := c.tr.RoundTrip(req)
	for errors.Is(err, errDialSkipped) && ctx.Err() == nil {
		// Nothing was sent: a connection came up while this call
		// waited to dial one (see dialGate).
		resp, err = c.tr.RoundTrip(req)
	}
	if err != nil {
		return Session{}, transportError(ctx, err, secret, code)
	}
	return read(ctx, resp, secret, code)
}

// query is code2Session's query string. url.Values escapes every value,
// so no code can add parameters of its own.
func query(appid, secret, code string) string {
	return url.Values{
		"appid":      {appid},
		"secret":     {secret},
		"js_code":    {code},
		"grant_type": {"authorization_code"},
	}.Encode()
}

// read turns WeChat's answer into a Session or an error, and closes its
// body.
func read(ctx context.Context, resp *http.Response, secret, code string) (Session, error) {
	if resp.StatusCode != http.StatusOK {
		drainClose(resp.Body)
		return Session{}, statusError(resp, secret, code)
	}

	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	// The body has been read to EOF (so the connection goes back to the
	// pool) unless it was oversized or broke: then closing without draining
	// drops the connection, which is what we want.
	resp.Body.Close()
	if err != nil {
		return Session{}, transportError(ctx, err, secret, code)
	}
	if len(body) > MaxBody {
		return Session{}, garbage("WeChat's answer is too large",
			newCause("answer longer than "+strconv.Itoa(MaxBody)+" bytes", "", nil))
	}

	var a answer
	if err := json.Unmarshal(body, &a); err != nil {
		msg := "WeChat answered JSON of an unexpected shape"
		var se *json.SyntaxError
		if errors.As(err, &se) || len(body) == 0 {
			msg = "WeChat answered something that is not JSON"
		}
		return Session{}, garbage(msg, scrubbed(err.Error(), secret, code, ""))
	}
	if a.Errcode != 0 {
		return Session{}, errcodeError(a.Errcode, a.Errmsg, secret, code)
	}
	if a.OpenID == "" {
		// Never quote the body: it may hold a session_key.
		return Session{}, garbage("WeChat answered without an openid", newCause("errcode 0 but no openid", "", nil))
	}
	_, rid := splitRID(a.Errmsg, secret, code)
	return Session{OpenID: a.OpenID, UnionID: a.UnionID, SessionKey: a.SessionKey, RID: rid}, nil
}

// drainClose reads what is left of a small body so its connection can be
// reused, then closes it.
func drainClose(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, drainMax)
	body.Close()
}
