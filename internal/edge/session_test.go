package edge_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/token"
)

func newKey(t *testing.T) token.Key {
	t.Helper()
	k, err := token.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newIssuer(t *testing.T, now func() time.Time, keys ...token.Key) *token.Issuer {
	t.Helper()
	iss, err := token.NewIssuer(keys, token.Options{Issuer: "wxlogin", TTL: 2 * time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

type sessionReply struct {
	status int
	header http.Header
	s      protocol.Session
	e      protocol.ErrorBody
	raw    string
}

func session(t *testing.T, base, authorization string) sessionReply {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/v1/session", nil)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := sessionReply{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if resp.StatusCode == 200 {
		json.Unmarshal(raw, &r.s)
	} else {
		json.Unmarshal(raw, &r.e)
	}
	return r
}

func jwks(t *testing.T, base string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Get(base + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw
}

func openid(t *testing.T, base, appid, code string) protocol.Result {
	t.Helper()
	resp, err := http.Get(base + "/v1/openid?appid=" + appid + "&code=" + code)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res protocol.Result
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&res) != nil {
		t.Fatalf("/v1/openid %s: status %d", code, resp.StatusCode)
	}
	return res
}

// TestSessionOverHTTP is the whole flow through the edge: a login gives a
// token, /v1/session reads it, the JWKS verifies it, and every kind of
// bad token gets 401 invalid_token.
func TestSessionOverHTTP(t *testing.T) {
	b := testbed.New(t, testbed.Options{Apps: []fakewx.App{testbed.App, testbed.App2}})
	key := newKey(t)
	cfg := b.WorkerConfig(testbed.App, testbed.App2)
	cfg.Tokens = newIssuer(t, nil, key)
	b.StartWorker(cfg)
	base := b.StartEdge(3 * time.Second)

	res := openid(t, base, testbed.App.AppID, "http-tok-1")
	if res.Token == "" || res.ExpiresIn < 7190 {
		t.Fatalf("no token in %+v", res)
	}
	r := session(t, base, "Bearer "+res.Token)
	if r.status != 200 || r.s.OpenID != res.OpenID || r.s.AppID != testbed.App.AppID || r.s.UnionID != res.UnionID ||
		r.s.ExpiresAt < time.Now().Add(2*time.Hour-time.Minute).Unix() {
		t.Fatalf("session: %d %s", r.status, r.raw)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("session Cache-Control %q", cc)
	}
	if r := session(t, base, "bearer "+res.Token); r.status != 200 {
		t.Errorf("lower-case scheme: %d", r.status)
	}
	// The second app's token names it.
	res2 := openid(t, base, testbed.App2.AppID, "http-tok-2")
	r2 := session(t, base, "Bearer "+res2.Token)
	if r2.status != 200 || r2.s.AppID != testbed.App2.AppID || r2.s.OpenID != res2.OpenID {
		t.Errorf("app 2: %d %s", r2.status, r2.raw)
	}
	if strings.Contains(r2.raw, "unionid") {
		t.Errorf("unionid present though WeChat gave none: %s", r2.raw)
	}

	status, h, doc := jwks(t, base)
	if status != 200 || h.Get("Cache-Control") != "public, max-age=300" || h.Get("Content-Type") != "application/json" {
		t.Errorf("jwks: %d %v", status, h)
	}
	if string(doc) != string(cfg.Tokens.JWKS()) {
		t.Errorf("jwks %s, want the worker's %s", doc, cfg.Tokens.JWKS())
	}

	past := newIssuer(t, func() time.Time { return time.Now().Add(-3 * time.Hour) }, key)
	expired, _, _ := past.Mint(testbed.App.AppID, res.OpenID, "")
	foreign, _, _ := newIssuer(t, nil, newKey(t)).Mint(testbed.App.AppID, res.OpenID, "")
	parts := strings.Split(res.Token, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	forgedPayload := base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), res.OpenID, "o-someone-else", 1)))
	claims := jwt.Claims{Issuer: "wxlogin", Subject: "o-someone-else", Audience: jwt.Audience{testbed.App.AppID},
		IssuedAt: jwt.NewNumericDate(time.Now()), Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour)), ID: "x"}
	claimsJSON, _ := json.Marshal(claims)
	hs := forge(t, jose.HS256, []byte(key.Public()), key.KID(), claims)
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT","kid":"`+key.KID()+`"}`)) + "." +
		base64.RawURLEncoding.EncodeToString(claimsJSON) + "."

	for name, auth := range map[string]string{
		"no header":           "",
		"not bearer":          "Basic dXNlcjpwYXNz",
		"empty bearer":        "Bearer ",
		"malformed":           "Bearer not.a.jwt",
		"altered":             "Bearer " + parts[0] + "." + forgedPayload + "." + parts[2],
		"expired":             "Bearer " + expired,
		"unpublished key":     "Bearer " + foreign,
		"alg none":            "Bearer " + none,
		"HS256 with the x":    "Bearer " + hs,
		"oversized":           "Bearer " + strings.Repeat("A", token.MaxLen+1),
		"signature truncated": "Bearer " + res.Token[:len(res.Token)-10],
	} {
		r := session(t, base, auth)
		if r.status != 401 || r.e.Error != protocol.KindInvalidToken || r.e.Retry != protocol.RetryNewCode || r.e.Message == "" {
			t.Errorf("%s: %d %s", name, r.status, r.raw)
		}
		if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: no WWW-Authenticate", name)
		}
	}
	if strings.Contains(b.Logs.String(), parts[2]) || strings.Contains(b.Logs.String(), res2.Token) {
		t.Error("a token reached the log")
	}
}

func forge(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestSessionRotation: the edge learns a key published after its last
// fetch as soon as a token names it, and the old key's tokens still pass.
func TestSessionRotation(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	oldKey, newK := newKey(t), newKey(t)
	cfg := b.WorkerConfig()
	cfg.Tokens = newIssuer(t, nil, oldKey)
	before := b.StartWorker(cfg)
	base := b.StartEdge(3 * time.Second)
	oldTok := openid(t, base, testbed.App.AppID, "rot-1").Token
	if r := session(t, base, "Bearer "+oldTok); r.status != 200 {
		t.Fatalf("old token: %d %s", r.status, r.raw)
	}
	// The rotated worker: the new key first, the old one kept.
	if err := before.Stop(); err != nil {
		t.Fatal(err)
	}
	cfg.Tokens = newIssuer(t, nil, newK, oldKey)
	b.StartWorker(cfg)
	newTok := openid(t, base, testbed.App.AppID, "rot-2").Token
	if kid, _ := token.KeyID(newTok); kid != newK.KID() {
		t.Fatalf("new token signed by %s, want %s", kid, newK.KID())
	}
	for name, tok := range map[string]string{"new": newTok, "old": oldTok} {
		if r := session(t, base, "Bearer "+tok); r.status != 200 || r.s.OpenID != fakewx.OpenID(testbed.App.AppID, "rot-"+map[string]string{"old": "1", "new": "2"}[name]) {
			t.Errorf("%s token after rotation: %d %s", name, r.status, r.raw)
		}
	}
	_, _, doc := jwks(t, base)
	v, err := token.ParseJWKS(doc, "wxlogin")
	if err != nil || !v.Has(oldKey.KID()) || !v.Has(newK.KID()) {
		t.Errorf("jwks after rotation %s: %v", doc, err)
	}
}

// TestSessionWithoutTokenWorkers: with no worker publishing keys, the
// edge says it cannot check, 503, not that the token is bad.
func TestSessionWithoutTokenWorkers(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	base := b.StartEdge(3 * time.Second)
	tok, _, _ := newIssuer(t, nil, newKey(t)).Mint(testbed.App.AppID, "o1", "")
	if r := session(t, base, "Bearer "+tok); r.status != 503 || r.e.Error != protocol.KindUnavailable {
		t.Errorf("session: %d %s", r.status, r.raw)
	}
	if status, _, _ := jwks(t, base); status != 503 {
		t.Errorf("jwks: %d", status)
	}
	// A request without a token is refused without asking anyone.
	if r := session(t, base, ""); r.status != 401 {
		t.Errorf("no token: %d %s", r.status, r.raw)
	}
}
