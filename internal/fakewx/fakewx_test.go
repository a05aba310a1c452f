package fakewx_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/fakewx"
)

// Two apps: one bound to an open platform (answers carry unionid), one not.
// The secrets are distinctive so that a leak into any answer is easy to spot.
var (
	bound   = fakewx.App{AppID: "wxbound00000000001", Secret: "SECRET-bound-5f3c9a", UnionID: true}
	unbound = fakewx.App{AppID: "wxplain00000000002", Secret: "SECRET-plain-8e1d47"}
)

var (
	ridRE    = regexp.MustCompile(`, rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$`)
	openidRE = regexp.MustCompile(`^o[A-Za-z0-9_-]{27}$`)
	unionRE  = regexp.MustCompile(`^u[A-Za-z0-9_-]{27}$`)
)

// reply is one answer as a client sees it.
type reply struct {
	status int
	ctype  string
	body   []byte
	fields map[string]any // nil if the body is not a JSON object
}

func (r reply) errcode() int {
	v, ok := r.fields["errcode"].(float64)
	if !ok {
		return 0
	}
	return int(v)
}

func (r reply) str(k string) string {
	s, _ := r.fields[k].(string)
	return s
}

type fixture struct {
	t    *testing.T
	fake *fakewx.Server
	srv  *httptest.Server
}

func newFixture(t *testing.T, cfg fakewx.Config) *fixture {
	t.Helper()
	if cfg.Apps == nil {
		cfg.Apps = []fakewx.App{bound, unbound, fakewx.DemoApp()}
	}
	fake := fakewx.New(cfg)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return &fixture{t: t, fake: fake, srv: srv}
}

func query(appid, secret, code, grant string) url.Values {
	q := url.Values{}
	if appid != "" {
		q.Set("appid", appid)
	}
	if secret != "" {
		q.Set("secret", secret)
	}
	if code != "" {
		q.Set("js_code", code)
	}
	if grant != "" {
		q.Set("grant_type", grant)
	}
	return q
}

// get performs one request and fails the test on transport errors.
func (f *fixture) get(q url.Values) reply {
	f.t.Helper()
	r, err := f.try(context.Background(), f.srv.Client(), q)
	if err != nil {
		f.t.Fatalf("GET: %v", err)
	}
	return r
}

// exchange is a well-formed request for app and code.
func (f *fixture) exchange(app fakewx.App, code string) reply {
	f.t.Helper()
	return f.get(query(app.AppID, app.Secret, code, "authorization_code"))
}

func (f *fixture) try(ctx context.Context, c *http.Client, q url.Values) (reply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+fakewx.Path+"?"+q.Encode(), nil)
	if err != nil {
		return reply{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	r := reply{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), body: body}
	if json.Unmarshal(body, &r.fields) != nil {
		r.fields = nil
	}
	return r, nil
}

// wantErr checks a WeChat JSON error answer.
func wantErr(t *testing.T, r reply, errcode int, msg string) {
	t.Helper()
	if r.status != http.StatusOK || r.fields == nil {
		t.Fatalf("want JSON errcode %d, got HTTP %d %q", errcode, r.status, r.body)
	}
	if got := r.errcode(); got != errcode {
		t.Fatalf("errcode = %d, want %d (body %s)", got, errcode, r.body)
	}
	em := r.str("errmsg")
	if !strings.HasPrefix(em, msg) || !ridRE.MatchString(em) {
		t.Fatalf("errmsg = %q, want %q followed by a rid", em, msg)
	}
	if r.ctype != "text/plain" {
		t.Fatalf("Content-Type = %q, want text/plain", r.ctype)
	}
}

// wantSuccess checks a success answer for app and code.
func wantSuccess(t *testing.T, r reply, app fakewx.App, code string) {
	t.Helper()
	if r.status != http.StatusOK || r.fields == nil {
		t.Fatalf("want success, got HTTP %d %q", r.status, r.body)
	}
	if _, ok := r.fields["errcode"]; ok {
		t.Fatalf("success carries errcode: %s", r.body)
	}
	if got, want := r.str("openid"), fakewx.OpenID(app.AppID, code); got != want {
		t.Fatalf("openid = %q, want %q", got, want)
	}
	key, err := base64.StdEncoding.DecodeString(r.str("session_key"))
	if err != nil || len(key) != 16 {
		t.Fatalf("session_key %q is not base64 of 16 bytes (%v)", r.str("session_key"), err)
	}
	uid, has := r.fields["unionid"]
	switch {
	case app.UnionID && uid != fakewx.UnionID(app.AppID, code):
		t.Fatalf("unionid = %v, want %q", uid, fakewx.UnionID(app.AppID, code))
	case !app.UnionID && has:
		t.Fatalf("app without open platform got unionid: %s", r.body)
	}
}

func TestRejections(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	const code = "0712cDoV0cfty22AeloV0daMoV02cDog"
	for _, tc := range []struct {
		name    string
		q       url.Values
		errcode int
		msg     string
	}{
		{"missing appid", query("", bound.Secret, code, "authorization_code"), 40013, "invalid appid"},
		{"unknown appid", query("wxnobody0000000000", bound.Secret, code, "authorization_code"), 40013, "invalid appid"},
		{"wrong secret", query(bound.AppID, unbound.Secret, code, "authorization_code"), 40125, "invalid appsecret"},
		{"missing secret", query(bound.AppID, "", code, "authorization_code"), 40125, "invalid appsecret"},
		{"wrong grant_type", query(bound.AppID, bound.Secret, code, "client_credential"), 40002, "invalid grant_type"},
		{"missing grant_type", query(bound.AppID, bound.Secret, code, ""), 40002, "invalid grant_type"},
		{"missing code", query(bound.AppID, bound.Secret, "", "authorization_code"), 41008, "missing code"},
		// Check order: the first failing check wins.
		{"unknown appid beats everything", query("wxnobody0000000000", "", "", ""), 40013, "invalid appid"},
		{"secret beats grant_type and code", query(bound.AppID, "nope", "", "nope"), 40125, "invalid appsecret"},
		{"grant_type beats code", query(bound.AppID, bound.Secret, "", "nope"), 40002, "invalid grant_type"},
		{"checks beat magic codes", query(bound.AppID, "nope", "fx-hang-1", "authorization_code"), 40125, "invalid appsecret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, f.get(tc.q), tc.errcode, tc.msg)
		})
	}
	// A rejected request does not consume the code.
	wantSuccess(t, f.exchange(bound, code), bound, code)
}

func TestChecksBeatScripts(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	f.fake.Script("c1", fakewx.Busy())
	wantErr(t, f.get(query(bound.AppID, "nope", "c1", "authorization_code")), 40125, "invalid appsecret")
	// The step is still pending: only requests that pass the checks take it.
	wantErr(t, f.exchange(bound, "c1"), -1, "system error")
	wantSuccess(t, f.exchange(bound, "c1"), bound, "c1")
}

func TestSuccessAndSingleUse(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	for _, app := range []fakewx.App{bound, unbound, fakewx.DemoApp()} {
		t.Run(app.AppID, func(t *testing.T) {
			code := "code-for-" + app.AppID
			r := f.exchange(app, code)
			wantSuccess(t, r, app, code)
			if r.ctype != "text/plain" {
				t.Fatalf("Content-Type = %q, want text/plain", r.ctype)
			}
			wantErr(t, f.exchange(app, code), 40163, "code been used")
			wantErr(t, f.exchange(app, code), 40163, "code been used")
		})
	}
	// Single use is per appid and code.
	wantSuccess(t, f.exchange(bound, "shared"), bound, "shared")
	wantSuccess(t, f.exchange(unbound, "shared"), unbound, "shared")
	wantErr(t, f.exchange(bound, "shared"), 40163, "code been used")
}

func TestSessionKeysDiffer(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	a, b := f.exchange(bound, "k1"), f.exchange(bound, "k2")
	if a.str("session_key") == b.str("session_key") {
		t.Fatalf("two exchanges got the same session_key %q", a.str("session_key"))
	}
}

func TestConcurrentExchangesOneWinner(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	const n = 32
	var wins, used atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			r, err := f.try(context.Background(), f.srv.Client(), query(bound.AppID, bound.Secret, "race", "authorization_code"))
			if err != nil {
				t.Error(err)
				return
			}
			switch r.errcode() {
			case 0:
				wins.Add(1)
			case 40163:
				used.Add(1)
			default:
				t.Errorf("unexpected answer %s", r.body)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 || used.Load() != n-1 {
		t.Fatalf("wins=%d used=%d, want 1 and %d", wins.Load(), used.Load(), n-1)
	}
	if got := f.fake.Calls("race"); got != n {
		t.Fatalf("Calls = %d, want %d", got, n)
	}
}

func TestIDs(t *testing.T) {
	a, b := fakewx.OpenID("wxa", "code"), fakewx.OpenID("wxa", "code")
	if a != b {
		t.Fatalf("OpenID not deterministic: %q, %q", a, b)
	}
	if !openidRE.MatchString(a) {
		t.Fatalf("OpenID %q does not look like an openid", a)
	}
	u := fakewx.UnionID("wxa", "code")
	if !unionRE.MatchString(u) || u != fakewx.UnionID("wxa", "code") {
		t.Fatalf("UnionID %q malformed or not deterministic", u)
	}
	if u[1:] == a[1:] {
		t.Fatal("UnionID is derived like OpenID")
	}
	distinct := map[string]bool{}
	for _, id := range []string{
		fakewx.OpenID("wxa", "code"), fakewx.OpenID("wxb", "code"), fakewx.OpenID("wxa", "code2"),
		fakewx.OpenID("wxac", "ode"), fakewx.OpenID("", ""),
	} {
		if distinct[id] {
			t.Fatalf("OpenID collision on %q", id)
		}
		distinct[id] = true
	}
	long := strings.Repeat("x", 1000) // beyond the stack buffer
	if !openidRE.MatchString(fakewx.OpenID(long, long)) {
		t.Fatal("OpenID of long inputs malformed")
	}
}

func TestScript(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	const code = "scripted"
	f.fake.Script(code,
		fakewx.Busy(),
		fakewx.Errcode(45011),
		fakewx.HTTPStatus(http.StatusBadGateway, "<html><body>bad gateway</body></html>"),
		fakewx.Garbage(),
		fakewx.Truncated(),
		fakewx.Errcode(40029),
	)
	f.fake.Script(code, fakewx.Errcode(0)) // appends

	wantErr(t, f.exchange(bound, code), -1, "system error")
	wantErr(t, f.exchange(bound, code), 45011, "api minute-quota reach limit")
	if r := f.exchange(bound, code); r.status != http.StatusBadGateway || !strings.HasPrefix(r.ctype, "text/html") || string(r.body) != "<html><body>bad gateway</body></html>" {
		t.Fatalf("HTTPStatus step: got %d %q %q", r.status, r.ctype, r.body)
	}
	if r := f.exchange(bound, code); r.status != http.StatusOK || r.fields != nil || json.Valid(r.body) {
		t.Fatalf("Garbage step: got %d %q", r.status, r.body)
	}
	if r := f.exchange(bound, code); r.status != http.StatusOK || json.Valid(r.body) || !strings.HasPrefix(string(r.body), `{"openid":"o`) {
		t.Fatalf("Truncated step: got %d %q", r.status, r.body)
	}
	wantErr(t, f.exchange(bound, code), 40029, "invalid code")
	r := f.exchange(bound, code)
	if r.errcode() != 0 || r.fields["errcode"] == nil || r.str("openid") != "" {
		t.Fatalf("Errcode(0) step: got %s", r.body)
	}
	// Script exhausted: normal behaviour, and none of the above consumed the code.
	wantSuccess(t, f.exchange(bound, code), bound, code)
	wantErr(t, f.exchange(bound, code), 40163, "code been used")
	if got := f.fake.Calls(code); got != 9 {
		t.Fatalf("Calls = %d, want 9", got)
	}
}

func TestScriptDeliverySteps(t *testing.T) {
	f := newFixture(t, fakewx.Config{})

	f.fake.Script("wct", fakewx.WrongContentType())
	r := f.exchange(bound, "wct")
	wantSuccessBody(t, r, bound, "wct")
	if r.ctype != "text/html; charset=utf-8" {
		t.Fatalf("WrongContentType: Content-Type = %q", r.ctype)
	}

	f.fake.Script("slow", fakewx.Slow(50*time.Millisecond))
	start := time.Now()
	r = f.exchange(bound, "slow")
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Fatalf("Slow(50ms) answered after %v", el)
	}
	wantSuccess(t, r, bound, "slow")

	// Delivery steps change how the normal answer travels, not what it says.
	f.fake.Script("slow", fakewx.Slow(time.Millisecond))
	wantErr(t, f.exchange(bound, "slow"), 40163, "code been used")

	const per = 2 * time.Millisecond
	f.fake.Script("drip", fakewx.Drip(per))
	start = time.Now()
	r = f.exchange(bound, "drip")
	el := time.Since(start)
	wantSuccess(t, r, bound, "drip")
	if min := time.Duration(len(r.body)-1) * per; el < min {
		t.Fatalf("Drip(%v) of %d bytes took %v, want at least %v", per, len(r.body), el, min)
	}
}

// wantSuccessBody is wantSuccess without the Content-Type check, for steps
// that mislabel it.
func wantSuccessBody(t *testing.T, r reply, app fakewx.App, code string) {
	t.Helper()
	r.ctype = "text/plain"
	wantSuccess(t, r, app, code)
}

func TestDripStopsWhenClientGivesUp(t *testing.T) {
	done := make(chan struct{})
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{bound}})
	fake.Script("drip", fakewx.Drip(time.Hour))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		fake.ServeHTTP(w, r)
	}))
	defer srv.Close()
	f := &fixture{t: t, fake: fake, srv: srv}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := f.try(ctx, srv.Client(), query(bound.AppID, bound.Secret, "drip", "authorization_code")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	waitClosed(t, done, "Drip handler")
}

func TestMagicCodes(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	ex := func(code string) reply { return f.exchange(bound, code) }

	for range 3 {
		wantErr(t, ex("fx-invalid-1"), 40029, "invalid code")
		wantErr(t, ex("fx-blocked-1"), 40226, "high risk user")
	}

	for range 2 {
		wantErr(t, ex("fx-busy2-a"), -1, "system error")
	}
	wantSuccess(t, ex("fx-busy2-a"), bound, "fx-busy2-a")
	wantErr(t, ex("fx-busy2-a"), 40163, "code been used")

	wantErr(t, ex("fx-limit1-a"), 45011, "api minute-quota")
	wantSuccess(t, ex("fx-limit1-a"), bound, "fx-limit1-a")

	for range 2 {
		r := ex("fx-5xx2-a")
		if r.status != http.StatusBadGateway || !strings.Contains(string(r.body), "502 Bad Gateway") || !strings.HasPrefix(r.ctype, "text/html") {
			t.Fatalf("fx-5xx: got %d %q %q", r.status, r.ctype, r.body)
		}
	}
	wantSuccess(t, ex("fx-5xx2-a"), bound, "fx-5xx2-a")

	r := ex("fx-garbage1-a")
	if r.status != http.StatusOK || json.Valid(r.body) {
		t.Fatalf("fx-garbage: got %d %q", r.status, r.body)
	}
	wantSuccess(t, ex("fx-garbage1-a"), bound, "fx-garbage1-a")

	// Empty trailing part and zero counts are allowed.
	wantSuccess(t, ex("fx-busy0-"), bound, "fx-busy0-")

	start := time.Now()
	wantSuccess(t, ex("fx-slow60-a"), bound, "fx-slow60-a")
	if el := time.Since(start); el < 60*time.Millisecond {
		t.Fatalf("fx-slow60 answered after %v", el)
	}
	start = time.Now()
	wantErr(t, ex("fx-slow60-a"), 40163, "code been used") // every call is slow
	if el := time.Since(start); el < 60*time.Millisecond {
		t.Fatalf("second fx-slow60 answered after %v", el)
	}

	// Malformed magic codes are ordinary codes.
	for _, code := range []string{
		"fx-busy-x", "fx-busyx-x", "fx-busy1", "fx-hang", "fx-slow-x", "fx-busy+1-x",
		"fx-busy1234567890-x", "FX-busy1-x", "fx-BUSY1-x", "fx--x", "xfx-busy1-x", "fx-unknown-x",
	} {
		wantSuccess(t, ex(code), bound, code)
	}
}

func TestMagicCountsShareCallsCounter(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	// A rejected request still carries the code, so it counts as call 1.
	wantErr(t, f.get(query(bound.AppID, "nope", "fx-busy2-z", "authorization_code")), 40125, "invalid appsecret")
	wantErr(t, f.exchange(bound, "fx-busy2-z"), -1, "system error")
	wantSuccess(t, f.exchange(bound, "fx-busy2-z"), bound, "fx-busy2-z")
	// A script takes precedence, and its calls count too.
	f.fake.Script("fx-limit2-z", fakewx.Errcode(40029))
	wantErr(t, f.exchange(bound, "fx-limit2-z"), 40029, "invalid code")
	wantErr(t, f.exchange(bound, "fx-limit2-z"), 45011, "api minute-quota")
	wantSuccess(t, f.exchange(bound, "fx-limit2-z"), bound, "fx-limit2-z")
}

func TestHangEndsWhenClientCancels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		code   string
		script bool
	}{
		{"step", "hang-step", true},
		{"magic", "fx-hang-1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan struct{})
			var once sync.Once
			fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{bound}})
			if tc.script {
				fake.Script(tc.code, fakewx.Hang())
			}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// Only the first request hangs; later ones must not close twice.
				defer once.Do(func() { close(done) })
				fake.ServeHTTP(w, r)
			}))
			defer srv.Close()
			f := &fixture{t: t, fake: fake, srv: srv}
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := f.try(ctx, srv.Client(), query(bound.AppID, bound.Secret, tc.code, "authorization_code"))
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err = %v, want deadline exceeded", err)
			}
			if el := time.Since(start); el < 100*time.Millisecond {
				t.Fatalf("hang answered after %v", el)
			}
			waitClosed(t, done, "Hang handler")
			// Hanging does not consume the code.
			if tc.script {
				wantSuccess(t, f.exchange(bound, tc.code), bound, tc.code)
			}
		})
	}
}

func TestReset(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	f.fake.Script("reset", fakewx.Reset())
	// A fresh transport: Go retries an idempotent request once when a reused
	// keep-alive connection fails, which would hide the reset behind the
	// retry's normal answer.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	_, err := f.try(context.Background(), &http.Client{Transport: tr}, query(bound.AppID, bound.Secret, "reset", "authorization_code"))
	if err == nil {
		t.Fatal("Reset: request succeeded")
	}
	t.Logf("Reset gave: %v", err)
	// The reset did not consume the code, and the server still serves.
	wantSuccess(t, f.exchange(bound, "reset"), bound, "reset")
}

func TestHuge(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	for _, n := range []int{0, 5, 13, 100, 8 << 20} {
		code := "huge" + strconv.Itoa(n)
		f.fake.Script(code, fakewx.Huge(n))
		req, _ := http.NewRequest(http.MethodGet, f.srv.URL+fakewx.Path+"?"+query(bound.AppID, bound.Secret, code, "authorization_code").Encode(), nil)
		resp, err := f.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(n) {
			t.Fatalf("Huge(%d): status %d, Content-Length %d", n, resp.StatusCode, resp.ContentLength)
		}
		head := make([]byte, min(n, 11))
		if _, err := io.ReadFull(resp.Body, head); err != nil {
			t.Fatal(err)
		}
		rest, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || int64(len(head))+rest != int64(n) {
			t.Fatalf("Huge(%d): read %d bytes, err %v", n, int64(len(head))+rest, err)
		}
		if n >= 13 && string(head) != `{"errmsg":"` {
			t.Fatalf("Huge(%d) starts %q", n, head)
		}
	}
	// A small one is valid JSON without an openid.
	f.fake.Script("h", fakewx.Huge(40))
	if r := f.exchange(bound, "h"); len(r.body) != 40 || r.fields == nil || r.str("openid") != "" {
		t.Fatalf("Huge(40) = %q", r.body)
	}
}

func TestCountsAndOnCall(t *testing.T) {
	var mu sync.Mutex
	var calls []fakewx.Call
	f := newFixture(t, fakewx.Config{OnCall: func(c fakewx.Call) {
		mu.Lock()
		calls = append(calls, c)
		mu.Unlock()
	}})
	f.fake.Script("c", fakewx.Busy(), fakewx.Garbage())
	before := time.Now()
	f.exchange(bound, "c")                                                 // -1
	f.exchange(bound, "c")                                                 // garbage: -2
	f.exchange(bound, "c")                                                 // success
	f.exchange(bound, "c")                                                 // 40163
	f.get(query(bound.AppID, "nope", "c", "authorization_code"))           // 40125
	f.get(query(bound.AppID, bound.Secret, "", "authorization_code"))      // 41008, no code
	f.get(query("wxnobody0000000000", "x", "other", "authorization_code")) // 40013
	after := time.Now()

	// Not the endpoint: not counted.
	if resp, err := f.srv.Client().Post(f.srv.URL+fakewx.Path, "text/plain", nil); err == nil {
		resp.Body.Close()
	}

	if got := f.fake.Calls("c"); got != 5 {
		t.Fatalf("Calls(c) = %d, want 5", got)
	}
	if got := f.fake.Calls("other"); got != 1 {
		t.Fatalf("Calls(other) = %d, want 1", got)
	}
	if got := f.fake.Calls("never"); got != 0 {
		t.Fatalf("Calls(never) = %d, want 0", got)
	}
	if got := f.fake.TotalCalls(); got != 7 {
		t.Fatalf("TotalCalls = %d, want 7", got)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []fakewx.Call{
		{AppID: bound.AppID, Code: "c", Errcode: -1},
		{AppID: bound.AppID, Code: "c", Errcode: fakewx.ErrcodeFault},
		{AppID: bound.AppID, Code: "c", Errcode: 0},
		{AppID: bound.AppID, Code: "c", Errcode: 40163},
		{AppID: bound.AppID, Code: "c", Errcode: 40125},
		{AppID: bound.AppID, Code: "", Errcode: 41008},
		{AppID: "wxnobody0000000000", Code: "other", Errcode: 40013},
	}
	if len(calls) != len(want) {
		t.Fatalf("OnCall called %d times, want %d: %+v", len(calls), len(want), calls)
	}
	for i, c := range calls {
		if c.At.Before(before) || c.At.After(after) {
			t.Errorf("call %d: At %v outside [%v, %v]", i, c.At, before, after)
		}
		if i > 0 && c.At.Before(calls[i-1].At) {
			t.Errorf("call %d: At goes backwards", i)
		}
		c.At = time.Time{}
		if c != want[i] {
			t.Errorf("call %d = %+v, want %+v", i, c, want[i])
		}
	}
}

func TestCodeTTLForgets(t *testing.T) {
	const ttl = 50 * time.Millisecond
	f := newFixture(t, fakewx.Config{CodeTTL: ttl})
	wantSuccess(t, f.exchange(bound, "ttl"), bound, "ttl")
	used := time.Now()
	wantErr(t, f.exchange(bound, "ttl"), 40163, "code been used")

	// Calls is read-only, so polling it does not keep the code alive.
	deadline := time.Now().Add(5 * time.Second)
	for f.fake.Calls("ttl") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("code still remembered after 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if el := time.Since(used); el < ttl {
		t.Fatalf("code forgotten after %v, before CodeTTL %v", el, ttl)
	}
	// Forgotten: the code works again and its count restarts.
	wantSuccess(t, f.exchange(bound, "ttl"), bound, "ttl")
	if got := f.fake.Calls("ttl"); got != 1 {
		t.Fatalf("Calls after expiry = %d, want 1", got)
	}
	// Magic counts restart too.
	wantErr(t, f.exchange(bound, "fx-busy1-ttl"), -1, "system error")
	for f.fake.Calls("fx-busy1-ttl") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("magic code still remembered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	wantErr(t, f.exchange(bound, "fx-busy1-ttl"), -1, "system error")
}

func TestLatency(t *testing.T) {
	f := newFixture(t, fakewx.Config{Latency: 40 * time.Millisecond})
	start := time.Now()
	wantSuccess(t, f.exchange(bound, "l1"), bound, "l1")
	if el := time.Since(start); el < 40*time.Millisecond {
		t.Fatalf("answered after %v, want at least 40ms", el)
	}

	// A client that gives up stops the wait, and the code was consumed on
	// arrival: its retry learns the answer was lost.
	f.fake.SetLatency(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := f.try(ctx, f.srv.Client(), query(bound.AppID, bound.Secret, "l2", "authorization_code")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	f.fake.SetLatency(0)
	wantErr(t, f.exchange(bound, "l2"), 40163, "code been used")
}

func TestRoutes(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	c := f.srv.Client()
	resp, err := c.Get(f.srv.URL + "/sns/jscode2session/x?appid=" + bound.AppID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("other path: %d, want 404", resp.StatusCode)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodHead, http.MethodDelete} {
		req, _ := http.NewRequest(m, f.srv.URL+fakewx.Path+"?"+query(bound.AppID, bound.Secret, "m", "authorization_code").Encode(), nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodGet {
			t.Fatalf("%s: %d Allow=%q, want 405 Allow=GET", m, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
	if f.fake.TotalCalls() != 0 || f.fake.Calls("m") != 0 {
		t.Fatal("non-endpoint requests were counted")
	}
}

func TestNoAppsRejectsEverything(t *testing.T) {
	f := newFixture(t, fakewx.Config{Apps: []fakewx.App{}})
	wantErr(t, f.exchange(fakewx.DemoApp(), "x"), 40013, "invalid appid")
}

// TestNothingLeaks drives every kind of answer with a distinctive secret and
// code and checks that neither appears in any answer.
func TestNothingLeaks(t *testing.T) {
	f := newFixture(t, fakewx.Config{})
	const tag = "LEAKTAG7q3z"
	steps := []fakewx.Step{
		fakewx.Busy(), fakewx.Errcode(40029), fakewx.Errcode(12345), fakewx.Garbage(), fakewx.Truncated(),
		fakewx.HTTPStatus(502, "bad gateway"), fakewx.WrongContentType(), fakewx.Drip(0), fakewx.Slow(0),
		fakewx.Huge(64),
	}
	var codes []string
	for i, st := range steps {
		code := tag + "-step" + strconv.Itoa(i)
		f.fake.Script(code, st)
		codes = append(codes, code, code) // scripted, then normal
	}
	for _, d := range []string{"invalid", "blocked", "busy1", "limit1", "5xx1", "garbage1", "slow1"} {
		code := "fx-" + d + "-" + tag
		codes = append(codes, code, code, code)
	}
	check := func(what string, r reply) {
		t.Helper()
		for _, secret := range []string{bound.Secret, "wrong-" + tag} {
			if strings.Contains(string(r.body), secret) {
				t.Fatalf("%s: answer leaks the secret: %q", what, r.body)
			}
		}
		if strings.Contains(string(r.body), tag) {
			t.Fatalf("%s: answer leaks the code: %q", what, r.body)
		}
	}
	for _, code := range codes {
		check(code, f.exchange(bound, code))
	}
	for _, q := range []url.Values{
		query(bound.AppID, "wrong-"+tag, tag, "authorization_code"),
		query("wx"+tag, bound.Secret, tag, "authorization_code"),
		query(bound.AppID, bound.Secret, tag, tag),
		query(bound.AppID, bound.Secret, "", tag),
	} {
		check("rejection", f.get(q))
	}
}

func TestStepString(t *testing.T) {
	for st, want := range map[fakewx.Step]string{
		fakewx.Busy():                 "Errcode(-1)",
		fakewx.Slow(time.Second):      "Slow(1s)",
		fakewx.Huge(10):               "Huge(10)",
		fakewx.HTTPStatus(502, "x"):   "HTTPStatus(502)",
		{}:                            "Normal()",
		fakewx.Reset():                "Reset()",
		fakewx.Drip(time.Millisecond): "Drip(1ms)",
	} {
		if got := st.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s still running 5s after the client gave up", what)
	}
}

func BenchmarkExchange(b *testing.B) {
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{fakewx.DemoApp()}})
	srv := httptest.NewServer(fake)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			code := "bench" + strconv.FormatInt(n.Add(1), 10)
			resp, err := c.Get(srv.URL + fakewx.Path + "?appid=" + fakewx.DemoAppID + "&secret=" + fakewx.DemoSecret + "&js_code=" + code + "&grant_type=authorization_code")
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// BenchmarkServeHTTP measures the handler alone, without the network.
func BenchmarkServeHTTP(b *testing.B) {
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{fakewx.DemoApp()}})
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			code := "bench" + strconv.FormatInt(n.Add(1), 10)
			r := httptest.NewRequest(http.MethodGet, fakewx.Path+"?appid="+fakewx.DemoAppID+"&secret="+fakewx.DemoSecret+"&js_code="+code+"&grant_type=authorization_code", nil)
			fake.ServeHTTP(httptest.NewRecorder(), r)
		}
	})
}
