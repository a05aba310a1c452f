package protocol_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

func TestSubject(t *testing.T) {
	t.Parallel()
	if got := protocol.Subject(protocol.DefaultSubjectPrefix); got != "wxlogin.code2session" {
		t.Fatalf("Subject = %q", got)
	}
	if got := protocol.Subject("a.b"); got != "a.b.code2session" {
		t.Fatalf("Subject = %q", got)
	}
}

func TestValidToken(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"", false},
		{"a", true},
		{"0a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P", true},
		{strings.Repeat("x", protocol.MaxTokenLen), true},
		{strings.Repeat("x", protocol.MaxTokenLen+1), false},
		{"!~", true},
		{"abc&secret=x", true},
		{`{"code":"x"}`, true},
		{"a b", false},
		{" a", false},
		{"a ", false},
		{"a\tb", false},
		{"a\nb", false},
		{"a\x00b", false},
		{"a\x7fb", false},
		{"café", false},
		{"a\xffb", false},
		{"a\u00a0b", false},
		{"\ufeffa", false},
	} {
		if got := protocol.ValidToken(tc.s); got != tc.want {
			t.Errorf("ValidToken(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
	// Every single byte: valid exactly when printable ASCII but space.
	for b := 0; b < 256; b++ {
		want := b >= 0x21 && b <= 0x7e
		if got := protocol.ValidToken(string([]byte{byte(b)})); got != want {
			t.Errorf("ValidToken(%#02x) = %v, want %v", b, got, want)
		}
	}
}

func TestRequestValidate(t *testing.T) {
	t.Parallel()
	const code = "Distinct0Code"
	for _, tc := range []struct {
		name string
		req  protocol.Request
		ok   bool
	}{
		{"code only", protocol.Request{Code: code}, true},
		{"code and appid", protocol.Request{Code: code, AppID: "wx1"}, true},
		{"no code", protocol.Request{AppID: "wx1"}, false},
		{"bad code", protocol.Request{Code: code + " x"}, false},
		{"long code", protocol.Request{Code: code + strings.Repeat("x", protocol.MaxTokenLen)}, false},
		{"bad appid", protocol.Request{Code: code, AppID: "wx 1"}, false},
	} {
		e := tc.req.Validate()
		if tc.ok {
			if e != nil {
				t.Errorf("%s: %v", tc.name, e)
			}
			continue
		}
		if e == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		if e.Kind != protocol.KindBadRequest || e.Status != 400 || e.Retry != protocol.RetryNo {
			t.Errorf("%s: %s %d %s", tc.name, e.Kind, e.Status, e.Retry)
		}
		if strings.Contains(e.Error(), code) {
			t.Errorf("%s: %q echoes the code", tc.name, e.Error())
		}
	}
}

func TestDecodeRequest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		data      string
		ok        bool
		code, app string
	}{
		{`{"code":"abc"}`, true, "abc", ""},
		{`{"appid":"wx1","code":"abc"}`, true, "abc", "wx1"},
		{`{"appid":"","code":"abc","extra":1}`, true, "abc", ""},
		{`{"code":"a\u0026b"}`, true, "a&b", ""},
		{``, false, "", ""},
		{`null`, false, "", ""},
		{`{}`, false, "", ""},
		{`"abc"`, false, "", ""},
		{`abc`, false, "", ""},
		{`{"code":1}`, false, "", ""},
		{`{"code":"abc"}x`, false, "", ""},
		{`{"code":"a b"}`, false, "", ""},
		{`{"code":"caf\u00e9"}`, false, "", ""},
		{"{\"code\":\"a\xff\"}", false, "", ""},
		{`{"code":"abc","appid":"wx 1"}`, false, "", ""},
		{`{"code":"abc","appid":7}`, false, "", ""},
		// Valid JSON, but past MaxMessage: refused before it is decoded.
		{`{"code":"abc","pad":"` + strings.Repeat("p", protocol.MaxMessage) + `"}`, false, "", ""},
		// The largest valid request, every character escaped, fits.
		{`{"appid":"` + strings.Repeat(`A`, protocol.MaxTokenLen) + `","code":"` + strings.Repeat(`B`, protocol.MaxTokenLen) + `"}`,
			true, strings.Repeat("B", protocol.MaxTokenLen), strings.Repeat("A", protocol.MaxTokenLen)},
	} {
		req, e := protocol.DecodeRequest([]byte(tc.data))
		if tc.ok {
			if e != nil || req.Code != tc.code || req.AppID != tc.app {
				t.Errorf("DecodeRequest(%q) = %+v, %v", tc.data, req, e)
			}
			continue
		}
		if e == nil {
			t.Errorf("DecodeRequest(%q) accepted %+v", tc.data, req)
			continue
		}
		if e.Kind != protocol.KindBadRequest || e.Status != 400 {
			t.Errorf("DecodeRequest(%q): %s %d", tc.data, e.Kind, e.Status)
		}
	}
}

func TestNewKinds(t *testing.T) {
	t.Parallel()
	want := []struct {
		kind   protocol.Kind
		name   string
		status int
		retry  protocol.Retry
	}{
		{protocol.KindBadRequest, "bad_request", 400, "no"},
		{protocol.KindUnknownApp, "unknown_app", 400, "no"},
		{protocol.KindAppIDRequired, "appid_required", 400, "no"},
		{protocol.KindInvalidCode, "invalid_code", 401, "new_code"},
		{protocol.KindCodeUsed, "code_used", 401, "new_code"},
		{protocol.KindUserBlocked, "user_blocked", 403, "no"},
		{protocol.KindRateLimited, "rate_limited", 429, "same_code"},
		{protocol.KindUpstream, "upstream_error", 502, "same_code"},
		{protocol.KindUnavailable, "unavailable", 503, "same_code"},
		{protocol.KindTimeout, "timeout", 504, "same_code"},
		{protocol.KindInvalidToken, "invalid_token", 401, "new_code"},
		{protocol.KindInternal, "internal", 500, "same_code"},
	}
	if len(protocol.Kinds) != len(want) {
		t.Fatalf("Kinds has %d kinds, want %d", len(protocol.Kinds), len(want))
	}
	for i, w := range want {
		if protocol.Kinds[i] != w.kind {
			t.Errorf("Kinds[%d] = %s, want %s", i, protocol.Kinds[i], w.kind)
		}
		if string(w.kind) != w.name {
			t.Errorf("kind %q renamed to %q", w.name, w.kind)
		}
		e := protocol.New(w.kind, "m %d %s", 1, "x")
		if e.Kind != w.kind || e.Status != w.status || e.Retry != w.retry || e.Message != "m 1 x" {
			t.Errorf("New(%s) = %+v, want status %d retry %s", w.kind, e, w.status, w.retry)
		}
		if e.WxErrcode != 0 || e.RetryAfter != 0 || e.Temporary || e.Cause != nil {
			t.Errorf("New(%s) set extra fields: %+v", w.kind, e)
		}
	}
	// An unknown kind keeps its name but gets upstream_error's status and hint.
	if e := protocol.New("mystery", "x"); e.Status != 502 || e.Retry != protocol.RetrySameCode {
		t.Errorf("New(mystery) = %+v", e)
	}
}

func TestErrorString(t *testing.T) {
	t.Parallel()
	e := protocol.Wrap(errors.New("dial tcp: refused"), protocol.KindUpstream, "wechat unreachable")
	e.WxErrcode = -1
	if got, want := e.Error(), "upstream_error: wechat unreachable (errcode -1): dial tcp: refused"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got := protocol.New(protocol.KindTimeout, "late").Error(); got != "timeout: late" {
		t.Errorf("Error() = %q", got)
	}
	if !errors.Is(e, e.Cause) {
		t.Error("Unwrap does not reach the cause")
	}
}

func TestAs(t *testing.T) {
	t.Parallel()
	if protocol.As(nil) != nil {
		t.Error("As(nil) != nil")
	}
	e := protocol.New(protocol.KindCodeUsed, "used")
	if protocol.As(e) != e {
		t.Error("As(*Error) is not the same error")
	}
	if protocol.As(fmt.Errorf("ctx: %w", e)) != e {
		t.Error("As does not unwrap")
	}
	plain := errors.New("boom")
	got := protocol.As(plain)
	if got.Kind != protocol.KindUpstream || got.Status != 502 || got.Cause != plain || strings.Contains(got.Message, "boom") {
		t.Errorf("As(plain) = %+v", got)
	}
}

func TestErrorBodyJSON(t *testing.T) {
	t.Parallel()
	e := protocol.New(protocol.KindInvalidCode, "code is invalid")
	b, err := json.Marshal(e.Body())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"error":"invalid_code","message":"code is invalid","retry":"new_code"}`; got != want {
		t.Errorf("body = %s, want %s", got, want)
	}
	e.WxErrcode = 40029
	b, _ = json.Marshal(e.Body())
	if !strings.Contains(string(b), `"wx_errcode":40029`) {
		t.Errorf("body %s lacks wx_errcode", b)
	}
}

func TestCauseNeverSent(t *testing.T) {
	t.Parallel()
	const secret = "SECRET-cause-9f8e7d"
	e := protocol.Wrap(errors.New("appsecret="+secret), protocol.KindUpstream, "upstream failed")
	e.RetryAfter = time.Second
	b, _ := json.Marshal(e.Body())
	if strings.Contains(string(b), secret) {
		t.Errorf("body %s holds the cause", b)
	}
	m := protocol.ErrorMsg(e)
	if strings.Contains(string(m.Data), secret) {
		t.Errorf("NATS body %s holds the cause", m.Data)
	}
	for k, vs := range m.Header {
		for _, v := range vs {
			if strings.Contains(v, secret) {
				t.Errorf("NATS header %s: %q holds the cause", k, v)
			}
		}
	}
}

func TestErrorMsgHeaders(t *testing.T) {
	t.Parallel()
	e := protocol.New(protocol.KindRateLimited, "slow down")
	m := protocol.ErrorMsg(e)
	if got := m.Header.Get(micro.ErrorCodeHeader); got != "429" {
		t.Errorf("%s = %q", micro.ErrorCodeHeader, got)
	}
	if got := m.Header.Get(micro.ErrorHeader); got != "slow down" {
		t.Errorf("%s = %q", micro.ErrorHeader, got)
	}
	if got := m.Header.Get(protocol.HeaderRetryAfter); got != "" {
		t.Errorf("Retry-After %q without RetryAfter", got)
	}
	e.RetryAfter = 2500 * time.Millisecond
	if got := protocol.ErrorMsg(e).Header.Get(protocol.HeaderRetryAfter); got != "3" {
		t.Errorf("Retry-After = %q, want 3", got)
	}
}

func TestErrorReplyRoundTrip(t *testing.T) {
	t.Parallel()
	for _, kind := range protocol.Kinds {
		for _, tc := range []struct {
			errcode    int
			retryAfter time.Duration
			status     int // 0: the kind's own
			retry      protocol.Retry
		}{
			{0, 0, 0, ""},
			{40029, 0, 0, ""},
			{-1, 1500 * time.Millisecond, 0, ""},
			{45011, 30 * time.Second, 0, protocol.RetryNo},
			{0, 0, http.StatusRequestEntityTooLarge, ""},
		} {
			e := protocol.New(kind, "msg for %s", kind)
			e.WxErrcode = tc.errcode
			e.RetryAfter = tc.retryAfter
			e.Temporary = true
			if tc.status != 0 {
				e.Status = tc.status
			}
			if tc.retry != "" {
				e.Retry = tc.retry
			}
			res, got := protocol.DecodeReply(protocol.ErrorMsg(e))
			if got == nil {
				t.Fatalf("%s: DecodeReply gave success %+v", kind, res)
			}
			if got.Kind != e.Kind || got.Status != e.Status || got.Retry != e.Retry ||
				got.Message != e.Message || got.WxErrcode != e.WxErrcode {
				t.Errorf("%s %+v: round trip gave %+v, want %+v", kind, tc, got, e)
			}
			wantAfter := time.Duration(0)
			if tc.retryAfter > 0 {
				wantAfter = time.Duration(protocol.RetryAfterSeconds(tc.retryAfter)) * time.Second
			}
			if got.RetryAfter != wantAfter {
				t.Errorf("%s: RetryAfter %v, want %v", kind, got.RetryAfter, wantAfter)
			}
			if got.Temporary || got.Cause != nil {
				t.Errorf("%s: Temporary or Cause crossed the wire: %+v", kind, got)
			}
		}
	}
}

func TestDecodeReplySuccess(t *testing.T) {
	t.Parallel()
	for _, want := range []protocol.Result{
		{OpenID: "oABC"},
		{OpenID: "oABC", UnionID: "uXYZ"},
		{OpenID: "oABC", UnionID: "uXYZ", Token: "eyJh.eyJz.c2ln", ExpiresIn: 7200},
	} {
		m := protocol.ResultMsg(want)
		if m.Header != nil && m.Header.Get(micro.ErrorCodeHeader) != "" {
			t.Fatalf("success carries an error header")
		}
		got, e := protocol.DecodeReply(m)
		if e != nil || got != want {
			t.Errorf("DecodeReply(ResultMsg(%+v)) = %+v, %v", want, got, e)
		}
	}
	// A session_key in the reply, should a worker ever send one, is dropped.
	got, e := protocol.DecodeReply(&nats.Msg{Data: []byte(`{"openid":"o1","session_key":"sk"}`)})
	if e != nil || got != (protocol.Result{OpenID: "o1"}) {
		t.Errorf("got %+v, %v", got, e)
	}
}

func TestDecodeReplyGarbage(t *testing.T) {
	t.Parallel()
	for _, data := range []string{"", "garbage", "{}", `{"openid":""}`, `{"openid":1}`, `[]`, `null`} {
		for _, hdr := range []nats.Header{nil, {}} {
			res, e := protocol.DecodeReply(&nats.Msg{Header: hdr, Data: []byte(data)})
			if e == nil {
				t.Errorf("DecodeReply(%q) = %+v", data, res)
				continue
			}
			if e.Kind != protocol.KindUpstream || e.Status != 502 || e.Retry != protocol.RetrySameCode {
				t.Errorf("DecodeReply(%q): %+v", data, e)
			}
			if res != (protocol.Result{}) {
				t.Errorf("DecodeReply(%q): result %+v with error", data, res)
			}
		}
	}
}

func TestDecodeReplyErrorWithoutBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code, desc, data string
		status           int
	}{
		{"503", "no responders", "", 503},
		{"500", "handler panicked", "oops", 500},
		{"429", "x", `{"message":"no kind"}`, 429},
		{"404", "x", `{"error":""}`, 404},
		{"abc", "x", "", 502},
		{"200", "x", "", 502},
		{"600", "x", "", 502},
		{"-1", "x", "", 502},
	} {
		m := &nats.Msg{Header: nats.Header{}, Data: []byte(tc.data)}
		m.Header.Set(micro.ErrorCodeHeader, tc.code)
		m.Header.Set(micro.ErrorHeader, tc.desc)
		res, e := protocol.DecodeReply(m)
		if e == nil {
			t.Errorf("%+v: success %+v", tc, res)
			continue
		}
		if e.Kind != protocol.KindUpstream || e.Status != tc.status || e.Retry != protocol.RetrySameCode {
			t.Errorf("%+v: got %s %d %s", tc, e.Kind, e.Status, e.Retry)
		}
		if !strings.Contains(e.Message, tc.desc) {
			t.Errorf("%+v: message %q lacks the header's text", tc, e.Message)
		}
	}
}

func TestDecodeReplyUnknownKind(t *testing.T) {
	t.Parallel()
	m := &nats.Msg{Header: nats.Header{}, Data: []byte(`{"error":"new_kind","message":"m","retry":"no"}`)}
	m.Header.Set(micro.ErrorCodeHeader, "418")
	m.Header.Set(protocol.HeaderRetryAfter, "junk")
	_, e := protocol.DecodeReply(m)
	if e == nil || e.Kind != protocol.KindUpstream || e.Status != 418 || e.Retry != protocol.RetryNo || e.RetryAfter != 0 {
		t.Fatalf("got %+v", e)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{
		{-time.Hour, 1},
		{-1, 1},
		{0, 1},
		{1, 1},
		{999 * time.Millisecond, 1},
		{time.Second, 1},
		{time.Second + 1, 2},
		{1500 * time.Millisecond, 2},
		{2 * time.Second, 2},
		{59*time.Second + 100*time.Millisecond, 60},
		{time.Hour, 3600},
	} {
		if got := protocol.RetryAfterSeconds(tc.d); got != tc.want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", tc.d, got, tc.want)
		}
	}
}

// decodeStaticText is every fixed text a DecodeRequest refusal may hold.
var decodeStaticText = strings.Join([]string{
	`empty request: want {"appid":A,"code":C}`,
	`request is not a JSON object {"appid":A,"code":C}`,
	"code is required",
	"code must be 1 to " + strconv.Itoa(protocol.MaxTokenLen) + " printable ASCII characters without spaces",
	"appid must be 1 to " + strconv.Itoa(protocol.MaxTokenLen) + " printable ASCII characters without spaces",
}, "\n")

// FuzzDecodeRequest checks DecodeRequest over any NATS request body: it
// never panics; what it accepts is valid and survives a round trip; what
// it refuses is a 400 bad_request that never echoes the code.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"appid":"wx0123456789abcdef","code":"0a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P"}`,
		`{"code":"0a1B2c3D"}`,
		`{"code":"a\u0026b","appid":null}`,
		`{"code":"Sp4ce Code"}`,
		`{"code":"Caf\u00e9Code"}`,
		"{\"code\":\"Bad0Code\xff\"}",
		`{"code":12345678}`,
		`{"code":"Tail0Code"}}`,
		`"0a1B2c3D"`,
		`null`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, e := protocol.DecodeRequest(data)
		if e != nil {
			if e.Kind != protocol.KindBadRequest || e.Status != 400 || e.Retry != protocol.RetryNo || e.Message == "" {
				t.Fatalf("refusal %+v", e)
			}
			var in struct {
				Code json.RawMessage `json:"code"`
			}
			cands := []string{string(data)}
			if json.Unmarshal(data, &in) == nil {
				cands = append(cands, string(in.Code))
				var s string
				if json.Unmarshal(in.Code, &s) == nil {
					cands = append(cands, s)
				}
			}
			for _, c := range cands {
				if len(c) >= 8 && strings.Contains(e.Message, c) && !strings.Contains(decodeStaticText, c) {
					t.Fatalf("message %q echoes the code %q", e.Message, c)
				}
			}
			return
		}
		if !protocol.ValidToken(req.Code) {
			t.Fatalf("accepted invalid code %q", req.Code)
		}
		if req.AppID != "" && !protocol.ValidToken(req.AppID) {
			t.Fatalf("accepted invalid appid %q", req.AppID)
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		again, e := protocol.DecodeRequest(b)
		if e != nil || again != req {
			t.Fatalf("round trip of %+v gave %+v, %v", req, again, e)
		}
	})
}

// TestErrorWithLeavesOriginal: an Error is not changed once made; With
// gives a changed copy, so an error shared by duplicates, the log and
// the store keeps what it said.
func TestErrorWithLeavesOriginal(t *testing.T) {
	t.Parallel()
	cause := errors.New("detail")
	e := protocol.Make(protocol.KindUpstream, "busy", protocol.Temporary(true), protocol.Errcode(-1), protocol.Cause(cause))
	if e.Status != http.StatusBadGateway || e.Retry != protocol.RetrySameCode || !e.Temporary || e.WxErrcode != -1 || e.Cause != cause {
		t.Fatalf("Make: %+v", e)
	}
	c := e.With(protocol.Message("failed after retries"), protocol.Status(http.StatusServiceUnavailable),
		protocol.RetryAfter(time.Second), protocol.RetryHint(protocol.RetryNo))
	if e.Message != "busy" || e.Status != http.StatusBadGateway || e.RetryAfter != 0 || e.Retry != protocol.RetrySameCode {
		t.Errorf("With changed the original: %+v", e)
	}
	if c.Message != "failed after retries" || c.Status != http.StatusServiceUnavailable || c.RetryAfter != time.Second ||
		c.Retry != protocol.RetryNo || c.WxErrcode != -1 || c.Cause != cause {
		t.Errorf("With: %+v", c)
	}
}
