package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

func newKey(t testing.TB) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newIssuer(t testing.TB, now *time.Time, keys ...Key) *Issuer {
	t.Helper()
	if len(keys) == 0 {
		keys = []Key{newKey(t)}
	}
	i, err := NewIssuer(keys, Options{Issuer: "wxlogin-test", TTL: time.Hour, Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// segments decodes a compact JWS's header and payload as JSON objects.
func segments(t *testing.T, tok string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments, want 3", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("segment %d: %v", i, err)
		}
		if err := json.Unmarshal(b, dst); err != nil {
			t.Fatalf("segment %d: %v", i, err)
		}
	}
	return header, claims
}

func keysOf(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func TestClaims(t *testing.T) {
	now := t0
	iss := newIssuer(t, &now)
	tok, exp, err := iss.Mint("wxapp1", "o-openid-1", "u-union-1")
	if err != nil {
		t.Fatal(err)
	}
	if !exp.Equal(t0.Add(time.Hour)) {
		t.Errorf("exp = %v, want %v", exp, t0.Add(time.Hour))
	}
	h, c := segments(t, tok)
	if got := keysOf(h); !slices.Equal(got, []string{"alg", "kid", "typ"}) {
		t.Errorf("header fields %v", got)
	}
	if h["alg"] != "EdDSA" || h["typ"] != "JWT" || h["kid"] != iss.KID() {
		t.Errorf("header %v", h)
	}
	if got := keysOf(c); !slices.Equal(got, []string{"aud", "exp", "iat", "iss", "jti", "sub", "unionid"}) {
		t.Errorf("claims %v: want exactly aud exp iat iss jti sub unionid", got)
	}
	want := map[string]any{
		"iss": "wxlogin-test", "sub": "o-openid-1", "aud": "wxapp1", "unionid": "u-union-1",
		"iat": float64(t0.Unix()), "exp": float64(t0.Add(time.Hour).Unix()),
	}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("claim %s = %#v, want %#v (aud must be a string)", k, c[k], v)
		}
	}

	// Without a unionid the claim is absent, and every jti is new.
	tok2, _, _ := iss.Mint("wxapp1", "o-openid-1", "")
	_, c2 := segments(t, tok2)
	if _, ok := c2["unionid"]; ok {
		t.Error("unionid present though empty")
	}
	if c2["jti"] == c["jti"] || c2["jti"] == "" {
		t.Errorf("jti not unique: %v %v", c["jti"], c2["jti"])
	}
	s, err := iss.Verify(tok2)
	if err != nil {
		t.Fatal(err)
	}
	if s.OpenID != "o-openid-1" || s.AppID != "wxapp1" || s.UnionID != "" || !s.ExpiresAt.Equal(exp) {
		t.Errorf("session %+v", s)
	}
}

// TestStdlibVerifies checks the tokens against an implementation other
// than go-jose: crypto/ed25519 over the JWKS's x and the signing input.
func TestStdlibVerifies(t *testing.T) {
	now := t0
	iss := newIssuer(t, &now)
	tok, _, err := iss.Mint("wxapp1", "o-openid-1", "")
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(iss.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("JWKS has %d keys", len(set.Keys))
	}
	k := set.Keys[0]
	for f, v := range map[string]string{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": iss.KID()} {
		if k[f] != v {
			t.Errorf("JWKS %s = %q, want %q", f, k[f], v)
		}
	}
	x, err := base64.RawURLEncoding.DecodeString(k["x"])
	if err != nil || len(x) != ed25519.PublicKeySize {
		t.Fatalf("x: %v (%d bytes)", err, len(x))
	}
	dot := strings.LastIndexByte(tok, '.')
	sig, err := base64.RawURLEncoding.DecodeString(tok[dot+1:])
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(x, []byte(tok[:dot]), sig) {
		t.Fatal("crypto/ed25519 does not verify the token with the JWKS key")
	}
	altered := []byte(tok[:dot])
	altered[len(altered)-2] ^= 1
	if ed25519.Verify(x, altered, sig) {
		t.Fatal("crypto/ed25519 verifies an altered signing input")
	}
}

// forge signs claims with any algorithm and key, as an attacker would.
func forge(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestRefusals(t *testing.T) {
	now := t0
	key := newKey(t)
	iss := newIssuer(t, &now, key)
	good, _, err := iss.Mint("wxapp1", "o-victim", "")
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(good, ".")
	claims := Claims{Claims: jwt.Claims{
		Issuer: "wxlogin-test", Subject: "o-victim", Audience: jwt.Audience{"wxapp1"},
		IssuedAt: jwt.NewNumericDate(t0), Expiry: jwt.NewNumericDate(t0.Add(time.Hour)), ID: "j1",
	}}
	claimsJSON, _ := json.Marshal(claims)
	other := newIssuer(t, &now) // another key, not published
	fromOther, _, _ := other.Mint("wxapp1", "o-victim", "")
	noExp := claims
	noExp.Expiry = nil
	wrongIss := claims
	wrongIss.Issuer = "someone-else"
	future := claims
	future.IssuedAt = jwt.NewNumericDate(t0.Add(time.Minute))

	cases := []struct {
		name string
		tok  string
		want error
	}{
		{"missing", "", ErrMissing},
		{"garbage", "not-a-token", ErrMalformed},
		{"three garbage segments", "a.b.c", ErrMalformed},
		{"oversized", strings.Repeat("a", MaxLen+1), ErrMalformed},
		{"altered payload", parts[0] + "." + b64(strings.Replace(string(claimsJSON), "o-victim", "o-attacker", 1)) + "." + parts[2], ErrSignature},
		{"altered signature", parts[0] + "." + parts[1] + "." + b64("x"+strings.Repeat("y", 63)), ErrSignature},
		{"unpublished key", fromOther, ErrUnknownKey},
		{"no kid", forge(t, jose.EdDSA, key.priv, "", claims), ErrUnknownKey},
		{"alg none", b64(`{"alg":"none","typ":"JWT","kid":"`+key.kid+`"}`) + "." + b64(string(claimsJSON)) + ".", ErrAlgorithm},
		{"HS256 keyed with the public key", forge(t, jose.HS256, []byte(key.pub), key.kid, claims), ErrAlgorithm},
		{"ES256", forge(t, jose.ES256, ecKey(t), key.kid, claims), ErrAlgorithm},
		{"no exp", forge(t, jose.EdDSA, key.priv, key.kid, noExp), ErrClaims},
		{"another issuer", forge(t, jose.EdDSA, key.priv, key.kid, wrongIss), ErrClaims},
		{"issued in the future", forge(t, jose.EdDSA, key.priv, key.kid, future), ErrClaims},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := iss.Verify(c.tok)
			if !errors.Is(err, c.want) {
				t.Fatalf("Verify = %+v, %v; want %v", s, err, c.want)
			}
			if c.tok != "" && strings.Contains(err.Error(), c.tok) {
				t.Error("the error quotes the token")
			}
		})
	}
	// The forgeries are refused for what they are, not because the helper
	// cannot sign: the same helper's EdDSA token with our key passes.
	if _, err := iss.Verify(forge(t, jose.EdDSA, key.priv, key.kid, claims)); err != nil {
		t.Fatalf("a well-formed token fails: %v", err)
	}
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRotation(t *testing.T) {
	now := t0
	oldKey, newK := newKey(t), newKey(t)
	before := newIssuer(t, &now, oldKey)
	oldTok, _, _ := before.Mint("wxapp1", "o-user", "")

	// The operator puts the new key first and keeps the old one.
	after := newIssuer(t, &now, newK, oldKey)
	newTok, _, _ := after.Mint("wxapp1", "o-user", "")
	if h, _ := segments(t, newTok); h["kid"] != newK.KID() {
		t.Errorf("new token's kid %v, want the new key's %s", h["kid"], newK.KID())
	}
	for name, tok := range map[string]string{"old": oldTok, "new": newTok} {
		if s, err := after.Verify(tok); err != nil || s.OpenID != "o-user" {
			t.Errorf("%s token after rotation: %+v, %v", name, s, err)
		}
	}
	v, err := ParseJWKS(after.JWKS(), "")
	if err != nil {
		t.Fatal(err)
	}
	if !v.Has(oldKey.KID()) || !v.Has(newK.KID()) || len(v.order) != 2 {
		t.Errorf("JWKS lists %v, want both keys", v.order)
	}
	// Once the old key is dropped, its tokens stop.
	dropped := newIssuer(t, &now, newK)
	if _, err := dropped.Verify(oldTok); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("old token after the old key is dropped: %v", err)
	}
}

func TestExpiry(t *testing.T) {
	now := t0
	iss := newIssuer(t, &now)
	tok, exp, _ := iss.Mint("wxapp1", "o-user", "")
	for _, c := range []struct {
		at time.Time
		ok bool
	}{
		{exp.Add(-time.Second), true},
		{exp.Add(Leeway - time.Second), true}, // within the skew allowed
		{exp.Add(Leeway + time.Second), false},
	} {
		now = c.at
		_, err := iss.Verify(tok)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrExpired)) {
			t.Errorf("at exp%+v: %v", c.at.Sub(exp), err)
		}
	}
}

func TestTwoApps(t *testing.T) {
	now := t0
	iss := newIssuer(t, &now)
	for _, app := range []string{"wxapp1", "wxapp2"} {
		tok, _, _ := iss.Mint(app, "o-"+app, "")
		_, c := segments(t, tok)
		if c["aud"] != app {
			t.Errorf("aud %v, want %s", c["aud"], app)
		}
		if s, err := iss.Verify(tok); err != nil || s.AppID != app || s.OpenID != "o-"+app {
			t.Errorf("%s: %+v, %v", app, s, err)
		}
	}
}

func TestParseKeys(t *testing.T) {
	a, b := newKey(t), newKey(t)
	both, _ := EncodePEM(a, b)
	keys, err := ParseKeys(both)
	if err != nil || len(keys) != 2 || keys[0].KID() != a.KID() || keys[1].KID() != b.KID() {
		t.Fatalf("ParseKeys: %v, %v", keys, err)
	}
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ecKey(t))
	ec := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})
	one, _ := EncodePEM(a)
	for name, data := range map[string][]byte{
		"empty":       nil,
		"not PEM":     []byte("hello"),
		"ECDSA":       ec,
		"wrong type":  []byte(strings.Replace(string(one), "PRIVATE KEY", "EC PRIVATE KEY", 2)),
		"cut":         one[:len(one)-40],
		"repeated":    append(append([]byte{}, one...), one...),
		"bad PKCS#8":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("junk")}),
		"second cut ": append(append([]byte{}, one...), one[:60]...),
	} {
		if _, err := ParseKeys(data); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "MC4C") {
			t.Errorf("%s: error quotes the key: %v", name, err)
		}
	}
}

func TestLoadOrCreate(t *testing.T) {
	dir := t.TempDir()
	keys, created, err := LoadOrCreate(dir)
	if err != nil || !created || len(keys) != 1 {
		t.Fatalf("first: %v %v %v", keys, created, err)
	}
	fi, err := os.Stat(filepath.Join(dir, StoredKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	again, created, err := LoadOrCreate(dir)
	if err != nil || created || again[0].KID() != keys[0].KID() {
		t.Fatalf("second: the stored key is not reused: %v %v", created, err)
	}
	fromFile, err := LoadFile(filepath.Join(dir, StoredKeyFile))
	if err != nil || fromFile[0].KID() != keys[0].KID() {
		t.Fatalf("LoadFile: %v", err)
	}
	if _, err := LoadFile(filepath.Join(dir, "absent.pem")); err == nil || !strings.Contains(err.Error(), "WX_TOKEN_KEY_FILE") {
		t.Errorf("absent file: %v", err)
	}
}

// BenchmarkMint is what minting adds to every successful login.
func BenchmarkMint(b *testing.B) {
	now := t0
	iss := newIssuer(b, &now)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := iss.Mint("wx1234567890abcdef", "o0IWlytYmoD6bpPR3Hk1CXCfILv-", "uSGoVuFtSp09hrQj9-uLCn5dw-bB"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify is the cost of /v1/session and PREFIX.session.
func BenchmarkVerify(b *testing.B) {
	now := t0
	iss := newIssuer(b, &now)
	tok, _, _ := iss.Mint("wx1234567890abcdef", "o0IWlytYmoD6bpPR3Hk1CXCfILv-", "uSGoVuFtSp09hrQj9-uLCn5dw-bB")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := iss.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEd25519Sign is the signature alone, the floor under
// BenchmarkMint.
func BenchmarkEd25519Sign(b *testing.B) {
	k := newKey(b)
	msg := make([]byte, 280)
	b.ReportAllocs()
	for b.Loop() {
		ed25519.Sign(k.priv, msg)
	}
}
