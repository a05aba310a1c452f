package wechat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// Distinctive values, so a leak anywhere is caught by a substring search.
// The secret holds characters that URL-encoding changes, so the escaped
// form (as a gateway would echo it) is checked too.
const (
	testAppID      = "wx0123456789abcdef"
	testSecret     = "S3CR3T/+=&zq-9f8e7d6c5b4a3928"
	testCode       = "C0DE-0712cDoV0cfty22AeloV0daMoV02cDog"
	testSessionKey = "SKEY-tiihtNczf5v6AKRyjwEUhQ=="
)

// leaks lists every form of a secret that must never appear in an error.
var leaks = []string{
	testSecret, url.QueryEscape(testSecret), url.PathEscape(testSecret),
	testCode, testSessionKey, "S3CR3T", "SKEY-",
}

// assertClean fails if err is not a bare *protocol.Error or if any of its
// renderings, or any error in its chain, holds a secret.
func assertClean(t *testing.T, err error) *protocol.Error {
	t.Helper()
	if err == nil {
		t.Fatal("want an error, got nil")
	}
	pe, ok := err.(*protocol.Error)
	if !ok {
		t.Fatalf("error is %T, want *protocol.Error", err)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		t.Errorf("a *url.Error is in the chain: %v", ue)
	}
	texts := []string{
		err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err),
		fmt.Sprintf("%s", err), fmt.Sprintf("%#v", err), fmt.Sprintf("%+v", *pe),
		pe.Message,
	}
	for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
		texts = append(texts, e.Error(), fmt.Sprintf("%+v", e))
	}
	body, _ := json.Marshal(pe.Body())
	texts = append(texts, string(body))
	for _, s := range texts {
		for _, l := range leaks {
			if strings.Contains(s, l) {
				t.Errorf("error text leaks %q: %s", l, s)
			}
		}
	}
	return pe
}

// fake is a test server standing in for WeChat. It checks every request's
// shape and counts requests and new connections.
type fake struct {
	*httptest.Server
	hits     atomic.Int64
	newConns atomic.Int64
	query    atomic.Pointer[url.Values]
}

func newFake(t *testing.T, h http.HandlerFunc) *fake {
	t.Helper()
	f := &fake{}
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		q := r.URL.Query()
		f.query.Store(&q)
		if r.Method != http.MethodGet || r.URL.Path != Path {
			t.Errorf("request %s %s, want GET %s", r.Method, r.URL.Path, Path)
		}
		if q.Get("access_token") != "" {
			t.Error("request carries an access_token")
		}
		h(w, r)
	}))
	f.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.newConns.Add(1)
		}
	}
	f.Start() // httptest listens on 127.0.0.1
	t.Cleanup(f.Close)
	return f
}

func newClient(t *testing.T, baseURL string) *Client {
	t.Helper()
	c, err := New(baseURL)
	if err != nil {
		t.Fatalf("New(%q): %v", baseURL, err)
	}
	t.Cleanup(c.tr.CloseIdleConnections)
	return c
}

func call(c *Client, timeout time.Duration) (Session, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Code2Session(ctx, testAppID, testSecret, testCode)
}

// reply writes body as WeChat does: JSON labelled text/plain.
func reply(body string) http.HandlerFunc {
	return replyAs("text/plain", http.StatusOK, body)
}

func replyAs(contentType string, status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// errmsgEchoing answers errcode with an errmsg that quotes the secret and
// the code, as a careless upstream or proxy might, and ends with a rid.
func errmsgEchoing(errcode int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		msg := fmt.Sprintf("failed for js_code %s secret %s query %s, rid: 6654a1b2-1c2d3e4f-5a6b7c8d",
			r.URL.Query().Get("js_code"), r.URL.Query().Get("secret"), r.URL.RawQuery)
		b, _ := json.Marshal(map[string]any{"errcode": errcode, "errmsg": msg})
		w.Header().Set("Content-Type", "text/plain")
		w.Write(b)
	}
}

func TestCode2SessionErrors(t *testing.T) {
	type want struct {
		kind      protocol.Kind
		status    int
		retry     protocol.Retry
		temporary bool
		errcode   int
		misconfig bool
		message   string // substring of Message
	}
	upstreamTemp := func(msg string) want {
		return want{protocol.KindUpstream, 502, protocol.RetrySameCode, true, 0, false, msg}
	}
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    want
	}{
		{"busy", errmsgEchoing(ErrcodeBusy),
			want{protocol.KindUpstream, 502, protocol.RetrySameCode, true, -1, false, "busy"}},
		{"invalid code", errmsgEchoing(ErrcodeInvalidCode),
			want{protocol.KindInvalidCode, 401, protocol.RetryNewCode, false, 40029, false, "wx.login"}},
		{"code used", errmsgEchoing(ErrcodeCodeUsed),
			want{protocol.KindCodeUsed, 401, protocol.RetryNewCode, false, 40163, false, "already used"}},
		{"user blocked", errmsgEchoing(ErrcodeUserBlocked),
			want{protocol.KindUserBlocked, 403, protocol.RetryNo, false, 40226, false, "blocked"}},
		{"rate limit", errmsgEchoing(ErrcodeRateLimit),
			want{protocol.KindRateLimited, 429, protocol.RetrySameCode, true, 45011, false, "rate limit"}},
		{"invalid appid", errmsgEchoing(ErrcodeInvalidAppID),
			want{protocol.KindUpstream, 502, protocol.RetryNo, false, 40013, true, "rejected this service's appid"}},
		{"invalid secret", errmsgEchoing(ErrcodeInvalidSecret),
			want{protocol.KindUpstream, 502, protocol.RetryNo, false, 40125, true, "rejected this service's appid/secret"}},
		{"unknown errcode", errmsgEchoing(41008),
			want{protocol.KindUpstream, 502, protocol.RetryNo, false, 41008, false, "refused"}},
		{"errcode with openid", reply(`{"errcode":40029,"errmsg":"invalid code","openid":"o1"}`),
			want{protocol.KindInvalidCode, 401, protocol.RetryNewCode, false, 40029, false, "invalid"}},

		{"502 html echoing the URL", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<html><body>Bad Gateway for %s</body></html>", r.URL.String())
		}, upstreamTemp("WeChat answered with HTTP 502")},
		{"500 json", replyAs("application/json", 500, `{"errcode":0,"openid":"o1"}`),
			upstreamTemp("WeChat answered with HTTP 500")},
		{"503 empty", replyAs("text/plain", 503, ""), upstreamTemp("HTTP 503")},
		{"404", replyAs("text/html", 404, "<h1>not found</h1>"),
			want{protocol.KindUpstream, 502, protocol.RetryNo, false, 0, false, "WeChat answered with HTTP 404"}},
		{"429", replyAs("text/plain", 429, "slow down"),
			want{protocol.KindRateLimited, 429, protocol.RetrySameCode, true, 0, false, "HTTP 429"}},
		{"redirect not followed", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/elsewhere?"+r.URL.RawQuery, http.StatusFound)
		}, want{protocol.KindUpstream, 502, protocol.RetryNo, false, 0, false, "HTTP 302"}},

		{"garbage", reply("<html>" + testSecret + testCode + "</html>"),
			upstreamTemp("not JSON")},
		{"truncated JSON", reply(`{"openid":"o1","session_key":"` + testSessionKey),
			upstreamTemp("not JSON")},
		{"empty body", reply(""), upstreamTemp("not JSON")},
		{"json null", reply("null"), upstreamTemp("without an openid")},
		{"json array", reply(`["` + testSecret + `"]`), upstreamTemp("unexpected shape")},
		{"errcode as string", reply(`{"errcode":"40029"}`), upstreamTemp("unexpected shape")},
		{"missing openid", reply(`{"session_key":"` + testSessionKey + `","unionid":"u1"}`),
			upstreamTemp("without an openid")},
		{"errcode 0 empty openid", reply(`{"errcode":0,"errmsg":"ok","openid":"","session_key":"` + testSessionKey + `"}`),
			upstreamTemp("without an openid")},
		{"body shorter than Content-Length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "200")
			io.WriteString(w, `{"openid":"o1","session_key":"`+testSessionKey)
		}, upstreamTemp("")},
		{"connection reset", func(w http.ResponseWriter, r *http.Request) {
			hijackReset(t, w)
		}, upstreamTemp("connection to WeChat failed")},
		{"reset after headers", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, `{"openid":`)
			w.(http.Flusher).Flush()
			hijackReset(t, w)
		}, upstreamTemp("")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.handler)
			c := newClient(t, f.URL)
			s, err := call(c, 5*time.Second)
			if s != (Session{}) {
				t.Errorf("session %v returned with an error", s)
			}
			e := assertClean(t, err)
			w := tc.want
			if e.Kind != w.kind || e.Status != w.status || e.Retry != w.retry || e.Temporary != w.temporary || e.WxErrcode != w.errcode {
				t.Errorf("got kind=%s status=%d retry=%s temporary=%v errcode=%d, want %s %d %s %v %d (%v)",
					e.Kind, e.Status, e.Retry, e.Temporary, e.WxErrcode, w.kind, w.status, w.retry, w.temporary, w.errcode, err)
			}
			if IsMisconfiguration(err) != w.misconfig {
				t.Errorf("IsMisconfiguration = %v, want %v", !w.misconfig, w.misconfig)
			}
			if !strings.Contains(e.Message, w.message) {
				t.Errorf("message %q does not contain %q", e.Message, w.message)
			}
			if e.Cause == nil {
				t.Error("no cause for the log")
			}
			if n := f.hits.Load(); n != 1 {
				t.Errorf("server saw %d requests, want exactly 1 (no retries, no redirects)", n)
			}
			if w.errcode != 0 && !strings.HasPrefix(tc.name, "errcode with") {
				if got := RID(err); got != "6654a1b2-1c2d3e4f-5a6b7c8d" {
					t.Errorf("RID = %q", got)
				}
				if !strings.Contains(err.Error(), "rid: 6654a1b2-1c2d3e4f-5a6b7c8d") {
					t.Errorf("rid missing from error text: %v", err)
				}
				if !strings.Contains(err.Error(), "[redacted]") {
					t.Errorf("echoed secret was not visibly redacted: %v", err)
				}
			}
		})
	}
}

// hijackReset closes the connection with an RST (SO_LINGER 0).
func hijackReset(t *testing.T, w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

func TestCode2SessionSuccess(t *testing.T) {
	cases := []struct {
		name    string
		handler http.HandlerFunc
		want    Session
	}{
		{"no errcode", reply(`{"openid":"o1","session_key":"` + testSessionKey + `"}`),
			Session{OpenID: "o1", SessionKey: testSessionKey}},
		{"errcode 0", reply(`{"errcode":0,"errmsg":"ok","openid":"o1","session_key":"` + testSessionKey + `"}`),
			Session{OpenID: "o1", SessionKey: testSessionKey}},
		{"unionid", reply(`{"openid":"o1","unionid":"u1","session_key":"` + testSessionKey + `"}`),
			Session{OpenID: "o1", UnionID: "u1", SessionKey: testSessionKey}},
		{"rid on success", reply(`{"errcode":0,"errmsg":"ok, rid: 65f0a1b2-00aa11bb-22cc33dd","openid":"o1","session_key":"k"}`),
			Session{OpenID: "o1", SessionKey: "k", RID: "65f0a1b2-00aa11bb-22cc33dd"}},
		{"html content type", replyAs("text/html; charset=utf-8", 200, `{"openid":"o1","session_key":"k"}`),
			Session{OpenID: "o1", SessionKey: "k"}},
		{"json content type", replyAs("application/json", 200, `{"openid":"o1","session_key":"k"}`),
			Session{OpenID: "o1", SessionKey: "k"}},
		{"extra fields", reply(`{"openid":"o1","session_key":"k","expires_in":7200,"x":{"y":[1]}}`),
			Session{OpenID: "o1", SessionKey: "k"}},
		{"exactly MaxBody", reply(`{"openid":"o1","session_key":"k","pad":"` +
			strings.Repeat("p", MaxBody-len(`{"openid":"o1","session_key":"k","pad":""}`)) + `"}`),
			Session{OpenID: "o1", SessionKey: "k"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.handler)
			c := newClient(t, f.URL)
			s, err := call(c, 5*time.Second)
			if err != nil {
				t.Fatalf("Code2Session: %v", err)
			}
			if s != tc.want {
				t.Errorf("got %#v, want %#v", s, tc.want) // Format hides the key
				if s.SessionKey != tc.want.SessionKey {
					t.Error("session_key differs")
				}
			}
			q := *f.query.Load()
			for k, v := range map[string]string{"appid": testAppID, "secret": testSecret, "js_code": testCode, "grant_type": "authorization_code"} {
				if got := q[k]; len(got) != 1 || got[0] != v {
					t.Errorf("server saw %s=%q, want [%q]", k, got, v)
				}
			}
			if len(q) != 4 {
				t.Errorf("server saw %d query parameters, want 4: %v", len(q), q)
			}
		})
	}
}

func TestLongRequestAndAnswer(t *testing.T) {
	// The longest code, every byte escaped, makes a request line larger
	// than the transport's write buffer, and a header line longer than
	// its read buffer: both must still go through whole.
	code := strings.Repeat("/", protocol.MaxTokenLen)
	long := strings.Repeat("h", 8<<10)
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Long", long)
		reply(`{"openid":"o1","session_key":"k","pad":"`+strings.Repeat("p", 4<<10)+`"}`)(w, r)
	})
	c := newClient(t, f.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 2 { // the second on the same connection
		s, err := c.Code2Session(ctx, testAppID, testSecret, code)
		if err != nil {
			t.Fatalf("Code2Session: %v", err)
		}
		if s.OpenID != "o1" {
			t.Errorf("openid %q, want o1", s.OpenID)
		}
		if got := f.query.Load().Get("js_code"); got != code {
			t.Errorf("server saw js_code %q, want %q", got, code)
		}
	}
	if n := f.newConns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

func TestCode2SessionInjection(t *testing.T) {
	code := "abc&secret=x&appid=y#frag ü 空格+%20=;/?"
	f := newFake(t, reply(`{"openid":"o1","session_key":"k"}`))
	c := newClient(t, f.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Code2Session(ctx, testAppID, testSecret, code); err != nil {
		t.Fatal(err)
	}
	q := *f.query.Load()
	if got := q["js_code"]; len(got) != 1 || got[0] != code {
		t.Errorf("js_code = %q, want exactly [%q]", got, code)
	}
	if got := q["secret"]; len(got) != 1 || got[0] != testSecret {
		t.Errorf("secret = %q, want exactly [%q]", got, testSecret)
	}
	if got := q["appid"]; len(got) != 1 || got[0] != testAppID {
		t.Errorf("appid = %q, want exactly [%q]", got, testAppID)
	}
	if len(q) != 4 {
		t.Errorf("server saw %d parameters: %v", len(q), q)
	}
}

func TestCode2SessionOversizedBody(t *testing.T) {
	var written atomic.Int64
	writeErr := make(chan error, 1)
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, `{"openid":"o1","session_key":"`)
		chunk := bytes.Repeat([]byte("a"), 32<<10)
		for written.Load() < 1<<30 { // 1 GiB: the client must hang up long before
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	})
	c := newClient(t, f.URL)
	start := time.Now()
	_, err := call(c, 10*time.Second)
	e := assertClean(t, err)
	if e.Kind != protocol.KindUpstream || !e.Temporary || e.Retry != protocol.RetrySameCode || !strings.Contains(e.Message, "too large") {
		t.Errorf("got %v (temporary=%v)", err, e.Temporary)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v to give up on an oversized answer", d)
	}
	select {
	case werr := <-writeErr:
		if werr == nil {
			t.Errorf("server wrote %d bytes without error: client read it all", written.Load())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("server still writing after %d bytes: client did not hang up", written.Load())
	}
	if n := written.Load(); n > 64<<20 {
		t.Errorf("server wrote %d bytes before noticing", n)
	}
}

func TestCode2SessionConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := newClient(t, "http://"+addr)
	start := time.Now()
	_, err = call(c, 5*time.Second)
	e := assertClean(t, err)
	if e.Kind != protocol.KindUpstream || !e.Temporary || e.Retry != protocol.RetrySameCode || !strings.Contains(e.Message, "could not connect") {
		t.Errorf("got %v temporary=%v", err, e.Temporary)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}

// hangingFake starts a server whose handler blocks until the client goes
// away or the test ends; started receives a value per request.
func hangingFake(t *testing.T) (f *fake, started <-chan struct{}) {
	ch := make(chan struct{}, 16)
	release := make(chan struct{})
	f = newFake(t, func(w http.ResponseWriter, r *http.Request) {
		ch <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the server's Close
	return f, ch
}

func TestCode2SessionTimeout(t *testing.T) {
	f, _ := hangingFake(t)
	c := newClient(t, f.URL)
	const timeout = 200 * time.Millisecond
	start := time.Now()
	_, err := call(c, timeout)
	d := time.Since(start)
	e := assertClean(t, err)
	if d > timeout+time.Second {
		t.Errorf("returned after %v, timeout was %v", d, timeout)
	}
	if e.Kind != protocol.KindUpstream || !e.Temporary || e.Retry != protocol.RetrySameCode || e.Message != "WeChat did not answer in time" {
		t.Errorf("got %v temporary=%v", err, e.Temporary)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(err, context.DeadlineExceeded) = false: %v", err)
	}
}

func TestCode2SessionCancelled(t *testing.T) {
	f, started := hangingFake(t)
	c := newClient(t, f.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		<-started
		cancel()
	}()
	start := time.Now()
	_, err := c.Code2Session(ctx, testAppID, testSecret, testCode)
	e := assertClean(t, err)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("returned after %v", d)
	}
	if e.Kind != protocol.KindUpstream || !strings.Contains(e.Message, "cancelled") {
		t.Errorf("got %v", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(err, context.Canceled) = false: %v", err)
	}

	// Already cancelled: no request is sent at all.
	before := f.hits.Load()
	_, err = c.Code2Session(ctx, testAppID, testSecret, testCode)
	assertClean(t, err)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("pre-cancelled: %v", err)
	}
	if f.hits.Load() != before {
		t.Error("a request was sent with a cancelled context")
	}
}

func TestCode2SessionNoDeadline(t *testing.T) {
	// Without a deadline the fallback applies; a quick server still works.
	f := newFake(t, reply(`{"openid":"o1"}`))
	c := newClient(t, f.URL)
	s, err := c.Code2Session(context.Background(), testAppID, testSecret, testCode)
	if err != nil || s.OpenID != "o1" {
		t.Fatalf("got %v, %v", s, err)
	}
}

func TestCode2SessionBadArguments(t *testing.T) {
	f := newFake(t, reply(`{"openid":"o1"}`))
	c := newClient(t, f.URL)
	ctx := context.Background()
	for _, tc := range []struct {
		name, appid, secret, code string
		kind                      protocol.Kind
		misconfig                 bool
	}{
		{"no secret", testAppID, "", testCode, protocol.KindUpstream, true},
		{"no appid", "", testSecret, testCode, protocol.KindUpstream, true},
		{"no code", testAppID, testSecret, "", protocol.KindBadRequest, false},
		{"long code", testAppID, testSecret, strings.Repeat("C0DE-", 40), protocol.KindBadRequest, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Code2Session(ctx, tc.appid, tc.secret, tc.code)
			e := assertClean(t, err)
			if e.Kind != tc.kind || e.Temporary || IsMisconfiguration(err) != tc.misconfig {
				t.Errorf("got %v temporary=%v misconfig=%v", err, e.Temporary, IsMisconfiguration(err))
			}
		})
	}
	if n := f.hits.Load(); n != 0 {
		t.Errorf("%d requests sent for invalid arguments", n)
	}
}

func TestRetryAfter(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	c := newClient(t, f.URL)
	_, err := call(c, 5*time.Second)
	if e := assertClean(t, err); e.RetryAfter != 3*time.Second {
		t.Errorf("RetryAfter = %v", e.RetryAfter)
	}
	for in, want := range map[string]time.Duration{
		"": 0, "0": 0, "-5": 0, "x": 0, " 7 ": 7 * time.Second,
		"Wed, 21 Oct 2015 07:28:00 GMT": 0, "99999999999999999999": 0, "86400": maxRetryAfter,
	} {
		if got := retryAfter(in); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestLongErrmsgKeepsRID(t *testing.T) {
	errmsg := strings.Repeat("x", 10000) + "\x1b[31m" + testSecret + ", rid: 6654a1b2-1c2d3e4f-5a6b7c8d"
	b, _ := json.Marshal(map[string]any{"errcode": 40029, "errmsg": errmsg})
	f := newFake(t, reply(string(b)))
	c := newClient(t, f.URL)
	_, err := call(c, 5*time.Second)
	assertClean(t, err)
	if RID(err) != "6654a1b2-1c2d3e4f-5a6b7c8d" || !strings.HasSuffix(err.Error(), ", rid: 6654a1b2-1c2d3e4f-5a6b7c8d") {
		t.Errorf("rid lost: %v", err)
	}
	if n := len(err.(*protocol.Error).Cause.Error()); n > 300 {
		t.Errorf("cause is %d bytes", n)
	}
	if strings.Contains(err.Error(), "\x1b") {
		t.Error("control character reached the error text")
	}
}

func TestSplitRID(t *testing.T) {
	for _, tc := range []struct{ in, text, rid string }{
		{"invalid code, rid: 6654a1b2-1c2d3e4f-5a6b7c8d", "invalid code", "6654a1b2-1c2d3e4f-5a6b7c8d"},
		{"ok", "ok", ""},
		{"", "", ""},
		{"rid: abc", "", "abc"},
		{"weird, rid: has spaces inside", "weird, rid: has spaces inside", ""},
		{"long, rid: " + strings.Repeat("r", 100), "long, rid: " + strings.Repeat("r", 100), ""},
		// An echo of the request in the rid's place: no rid, and the
		// whole errmsg is left to the caller's scrubbing.
		{"echo, rid: " + testCode, "echo, rid: " + testCode, ""},
		{"echo, rid: " + testSecret, "echo, rid: " + testSecret, ""},
		{"echo, rid: x" + url.QueryEscape(testSecret), "echo, rid: x" + url.QueryEscape(testSecret), ""},
	} {
		text, rid := splitRID(tc.in, testSecret, testCode)
		if text != tc.text || rid != tc.rid {
			t.Errorf("splitRID(%q) = %q, %q; want %q, %q", tc.in, text, rid, tc.text, tc.rid)
		}
	}
}

// TestTransportErrorScrubs checks the belt-and-braces step: even an inner
// error that quotes the secret and the code (raw or escaped) is scrubbed,
// and the *url.Error around it is dropped.
func TestTransportErrorScrubs(t *testing.T) {
	inner := fmt.Errorf("dial failed for secret=%s code=%s escaped=%s path=%s",
		testSecret, testCode, url.QueryEscape(testSecret), url.PathEscape(testSecret))
	err := transportError(context.Background(), &url.Error{
		Op: "Get", URL: "https://api.weixin.qq.com/sns/jscode2session?secret=" + url.QueryEscape(testSecret), Err: inner,
	}, testSecret, testCode)
	e := assertClean(t, err)
	if !e.Temporary || e.Kind != protocol.KindUpstream || !strings.Contains(e.Error(), "[redacted]") {
		t.Errorf("got %v", e)
	}
	if strings.Contains(e.Error(), "Get ") {
		t.Errorf("*url.Error text survived: %v", e)
	}
}

func TestScrubShortAndEmpty(t *testing.T) {
	if got := scrub("a\x00b\nc", "", ""); got != "a b c" {
		t.Errorf("scrub = %q", got)
	}
	if got := scrub("\xff\xfeok", "", ""); got != "\uFFFD\uFFFDok" {
		t.Errorf("scrub = %q", got)
	}
	long := strings.Repeat("é", 300)
	if got := scrub(long, "", ""); len(got) > maxCauseText+len("…") || !strings.HasSuffix(got, "…") {
		t.Errorf("truncated to %d bytes: %q", len(got), got)
	}
	// The secret straddling the truncation point is still removed whole.
	s := strings.Repeat("x", maxCauseText-5) + testSecret
	if got := scrub(s, testSecret, testCode); strings.Contains(got, "S3CR") {
		t.Errorf("partial secret survived: %q", got)
	}
}

func TestSequentialCallsReuseOneConnection(t *testing.T) {
	f := newFake(t, reply(`{"openid":"o1","session_key":"k"}`))
	c := newClient(t, f.URL)
	for i := range 50 {
		if _, err := call(c, 5*time.Second); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := f.newConns.Load(); n > 2 {
		t.Errorf("50 sequential calls opened %d connections, want ≤ 2", n)
	}
}

func TestConcurrentCallsReuseConnections(t *testing.T) {
	f := newFake(t, reply(`{"openid":"o1","session_key":"k"}`))
	c := newClient(t, f.URL)
	const workers, calls = 16, 20
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range calls {
				if _, err := call(c, 5*time.Second); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Each worker needs at most one connection at a time; with net/http's
	// default of 2 idle per host most of the 320 calls would dial anew.
	if n := f.newConns.Load(); n > 2*workers {
		t.Errorf("%d calls by %d workers opened %d connections", workers*calls, workers, n)
	}
	if n := f.hits.Load(); n != workers*calls {
		t.Errorf("server saw %d requests, want %d", n, workers*calls)
	}
}

// TestErrorAnswersKeepConnection checks that error answers (5xx pages, errcodes) are
// drained so their connection is reused too.
func TestErrorAnswersKeepConnection(t *testing.T) {
	var n atomic.Int64
	f := newFake(t, func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) % 3 {
		case 0:
			replyAs("text/html", 502, strings.Repeat("<p>bad gateway</p>", 100))(w, r)
		case 1:
			errmsgEchoing(ErrcodeBusy)(w, r)
		default:
			reply(`{"openid":"o1"}`)(w, r)
		}
	})
	c := newClient(t, f.URL)
	for range 30 {
		call(c, 5*time.Second)
	}
	if got := f.newConns.Load(); got > 2 {
		t.Errorf("30 sequential calls with error answers opened %d connections", got)
	}
}

func TestNew(t *testing.T) {
	for _, tc := range []struct{ in, endpoint string }{
		{DefaultBaseURL, "https://api.weixin.qq.com/sns/jscode2session"},
		{"https://api.weixin.qq.com/", "https://api.weixin.qq.com/sns/jscode2session"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080/sns/jscode2session"},
		{"HTTP://127.0.0.1:8080//", "http://127.0.0.1:8080/sns/jscode2session"},
		{"https://gw.example/wx/", "https://gw.example/wx/sns/jscode2session"},
	} {
		c, err := New(tc.in)
		if err != nil {
			t.Errorf("New(%q): %v", tc.in, err)
			continue
		}
		if c.endpoint != tc.endpoint {
			t.Errorf("New(%q).endpoint = %q, want %q", tc.in, c.endpoint, tc.endpoint)
		}
	}
	for _, in := range []string{
		"", "api.weixin.qq.com", "/sns", "ftp://api.weixin.qq.com", "http://", "http://:80",
		"https://api.weixin.qq.com?x=1", "https://api.weixin.qq.com/#f",
		"https://user:hunter2@api.weixin.qq.com", "http://[::1", "https://%zz:hunter2@x",
	} {
		_, err := New(in)
		if err == nil {
			t.Errorf("New(%q) accepted", in)
		} else if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("New(%q) error leaks the password: %v", in, err)
		}
	}
}

func TestTransportSettings(t *testing.T) {
	c := newClient(t, DefaultBaseURL)
	tr := c.tr
	if tr.MaxIdleConnsPerHost < 1024 || tr.MaxIdleConns < 1024 {
		t.Errorf("MaxIdleConns=%d MaxIdleConnsPerHost=%d, want ≥ 1024", tr.MaxIdleConns, tr.MaxIdleConnsPerHost)
	}
	if tr.TLSHandshakeTimeout <= 0 || tr.DialContext == nil || !tr.ForceAttemptHTTP2 || tr.MaxResponseHeaderBytes <= 0 {
		t.Errorf("transport not tuned: %+v", tr)
	}
	if tr.TLSClientConfig.RootCAs != nil {
		t.Error("RootCAs set without the option: want the system's roots")
	}
}

func TestSessionNeverPrintsKey(t *testing.T) {
	s := Session{OpenID: "o1", UnionID: "u1", SessionKey: testSessionKey, RID: "r1"}
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%v|%+v|%#v|%s|%d|%x|%q", s, s, s, s, s, s, s),
		fmt.Sprintf("%v", &s), fmt.Sprintf("%+v", []Session{s}),
	} {
		if strings.Contains(out, "SKEY") || strings.Contains(out, "534b4559") {
			t.Errorf("session_key printed: %s", out)
		}
		if !strings.Contains(out, "o1") {
			t.Errorf("openid missing: %s", out)
		}
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("login", "session", s)
	if strings.Contains(buf.String(), "SKEY") || !strings.Contains(buf.String(), `"openid":"o1"`) {
		t.Errorf("slog output: %s", buf.String())
	}
}

func TestErrcodeTable(t *testing.T) {
	// Every named errcode has an entry; temporary ones retry the same code.
	for _, code := range []int{ErrcodeBusy, ErrcodeInvalidCode, ErrcodeCodeUsed, ErrcodeUserBlocked,
		ErrcodeRateLimit, ErrcodeInvalidAppID, ErrcodeInvalidSecret} {
		v, ok := errcodes[code]
		if !ok {
			t.Errorf("errcode %d not in the table", code)
			continue
		}
		e := errcodeError(code, "", testSecret, testCode)
		if v.temporary && e.Retry != protocol.RetrySameCode {
			t.Errorf("errcode %d is temporary but retry=%s", code, e.Retry)
		}
		if e.WxErrcode != code {
			t.Errorf("errcode %d: WxErrcode=%d", code, e.WxErrcode)
		}
	}
}

func BenchmarkCode2Session(b *testing.B) {
	srv := httptest.NewServer(reply(`{"openid":"oABCDEFGHIJKLMNOPQRSTUVWXYZ0","session_key":"tiihtNczf5v6AKRyjwEUhQ==","unionid":"uABCDEFGHIJKLMNOPQRSTUVWXYZ0"}`))
	defer srv.Close()
	c, err := New(srv.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer c.tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Code2Session(ctx, testAppID, testSecret, testCode); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func TestTransportErrorClassification(t *testing.T) {
	bg := context.Background()
	for _, tc := range []struct {
		name    string
		err     error
		message string
		is      error
	}{
		{"dial timeout", &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded},
			"could not connect to WeChat in time", errTimeout},
		{"read timeout", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded},
			"WeChat did not answer in time", errTimeout},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)},
			"could not connect to WeChat", syscall.ECONNREFUSED},
		{"reset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)},
			"the connection to WeChat failed", syscall.ECONNRESET},
		{"eof", io.EOF, "the connection to WeChat failed", nil},
		{"cut short", io.ErrUnexpectedEOF, "WeChat's answer was cut short", io.ErrUnexpectedEOF},
		{"cancelled", context.Canceled, "the request was cancelled before WeChat answered", context.Canceled},
		{"deadline", context.DeadlineExceeded, "WeChat did not answer in time", context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := transportError(bg, &url.Error{Op: "Get", URL: "http://x/?secret=" + testSecret, Err: tc.err}, testSecret, testCode)
			e := assertClean(t, err)
			if e.Message != tc.message || !e.Temporary || e.Kind != protocol.KindUpstream || e.Retry != protocol.RetrySameCode {
				t.Errorf("got %v temporary=%v", e, e.Temporary)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("errors.Is(err, %v) = false", tc.is)
			}
		})
	}
}
