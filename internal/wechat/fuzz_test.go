package wechat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// fuzzAnswer is what the fuzzed upstream says next.
type fuzzAnswer struct {
	status      int
	contentType string
	body        []byte
}

// FuzzCode2Session feeds Code2Session any status, Content-Type and body
// over real HTTP and checks what callers rely on: no panic; a failure is
// always a bare *protocol.Error of a kind of the contract; a success only
// with a non-empty openid from a 200; and no error text, nor the rid that
// is logged, ever holds the secret, the code or the answer's session_key.
//
// testdata/fuzz/FuzzCode2Session keeps inputs that found bugs: a rid that
// echoed the code or the secret went to the log as is.
//
// The fuzz engine runs the target serially within a process, so one
// upstream per process, told what to answer through an atomic, is enough.
func FuzzCode2Session(f *testing.F) {
	var next atomic.Pointer[fuzzAnswer]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := next.Load()
		if a.contentType != "" {
			w.Header().Set("Content-Type", a.contentType)
		}
		w.WriteHeader(a.status)
		w.Write(a.body)
	}))
	f.Cleanup(srv.Close)
	c, err := New(srv.URL)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(c.tr.CloseIdleConnections)

	for _, s := range []struct {
		status int
		ct     string
		body   string
	}{
		{200, "text/plain", `{"openid":"o1","session_key":"` + testSessionKey + `"}`},
		{200, "text/plain", `{"errcode":0,"errmsg":"ok, rid: 65f0a1b2-00aa11bb-22cc33dd","openid":"o1","unionid":"u1","session_key":"k"}`},
		{200, "application/json", `{"errcode":40029,"errmsg":"invalid code, rid: 6654a1b2-1c2d3e4f-5a6b7c8d"}`},
		{200, "text/plain", `{"errcode":40163,"errmsg":"code ` + testCode + ` been used, secret ` + testSecret + `"}`},
		{200, "text/plain", `{"errcode":-1,"errmsg":"system error"}`},
		{200, "text/plain", `{"errcode":45011,"errmsg":"api minute-quota reach limit"}`},
		{200, "text/html", "<html><body>" + testSecret + "</body></html>"},
		{200, "text/plain", `{"openid":"o1","session_key":"` + testSessionKey},
		{200, "text/plain", `{"errcode":"40029"}`},
		{200, "text/plain", `{"session_key":"` + testSessionKey + `"}`},
		{200, "text/plain", `null`},
		{200, "text/plain", ``},
		{200, "text/plain", `{"ERRCODE":40226,"Errmsg":"blocked"}`},
		{200, "text/plain", `{"errcode":1e3}`},
		{200, "text/plain", `{"errcode":99999999999999999999}`},
		{200, "text/plain", "{\"errcode\":40029,\"errmsg\":\"\\u0000\\n\\u001b[31mred\xff\"}"},
		{204, "", ""},
		{302, "text/html", "moved"},
		{404, "text/html", "<h1>not found</h1>"},
		{429, "text/plain", "slow down"},
		{500, "application/json", `{"errcode":0,"openid":"o1"}`},
		{502, "text/html", "<html>502 Bad Gateway " + url.QueryEscape(testSecret) + "</html>"},
		{599, "", "x"},
	} {
		f.Add(s.status, s.ct, []byte(s.body))
	}

	f.Fuzz(func(t *testing.T, status int, contentType string, body []byte) {
		// net/http only sends 2xx to 5xx as final statuses; 1xx are
		// interim and would leave the client waiting for the real one.
		if status < 200 || status > 599 {
			status = 200 + int(uint(status)%400)
		}
		// A label net/http's client refuses as a malformed header is
		// net/http's case, not the decoder's, and it costs a connection
		// per run (the fuzzer then runs out of ports in TIME_WAIT).
		contentType = strings.Map(func(r rune) rune {
			if r < ' ' || r > '~' {
				return -1
			}
			return r
		}, contentType)
		next.Store(&fuzzAnswer{status: status, contentType: contentType, body: body})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := c.Code2Session(ctx, testAppID, testSecret, testCode)

		// What the answer would mean to the client, to know its
		// session_key and errmsg; a body it cannot decode has neither.
		var a answer
		_ = json.Unmarshal(body, &a)

		if err == nil {
			if status != http.StatusOK || s.OpenID == "" {
				t.Fatalf("success %v from HTTP %d", s, status)
			}
			for _, l := range fuzzSecrets(a) {
				if strings.Contains(s.RID, l) {
					t.Fatalf("rid %q, which is logged, holds %q", s.RID, l)
				}
			}
			return
		}
		if s != (Session{}) {
			t.Fatalf("session %v returned with an error", s)
		}
		e, ok := err.(*protocol.Error)
		if !ok {
			t.Fatalf("error is %T, want *protocol.Error: %v", err, err)
		}
		if !slices.Contains(protocol.Kinds, e.Kind) {
			t.Fatalf("kind %q is not in the contract", e.Kind)
		}
		if e.Message == "" || e.Retry == "" || e.Status < 400 || e.Status > 599 {
			t.Fatalf("incomplete error: %#v", e)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			t.Fatal("a *url.Error, which quotes the URL and so the secret, is in the chain")
		}
		texts := []string{err.Error(), fmt.Sprintf("%+v", err), e.Message, RID(err)}
		for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(u) {
			texts = append(texts, u.Error())
		}
		wire, _ := json.Marshal(e.Body())
		texts = append(texts, string(wire))
		for _, text := range texts {
			for _, l := range fuzzSecrets(a) {
				if strings.Contains(text, l) {
					t.Fatalf("error text holds %q: %s", l, text)
				}
			}
		}
	})
}

// fuzzSecrets lists what must never show: the secret and the code in
// every encoding a server might echo them in, and the answer's
// session_key unless the answer also put it in its errmsg, which is
// quoted on purpose (scrubbed of the secret and code only).
func fuzzSecrets(a answer) []string {
	out := []string{
		testSecret, url.QueryEscape(testSecret), url.PathEscape(testSecret),
		testCode, url.QueryEscape(testCode),
	}
	if len(a.SessionKey) >= 8 && !strings.Contains(a.Errmsg, a.SessionKey) {
		out = append(out, a.SessionKey)
	}
	return out
}
