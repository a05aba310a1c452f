package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Leeway is the clock skew allowed between the host that minted a token
// and the one that verifies it, on exp and iat.
const Leeway = 30 * time.Second

// MaxLen bounds a token a verifier will parse. Ours are about 400 bytes.
const MaxLen = 4096

// Algorithm is the only JWS algorithm minted and accepted.
const Algorithm = "EdDSA"

// The reasons a token is refused. Verify's errors wrap one of them.
var (
	ErrMissing    = errors.New("no token")
	ErrMalformed  = errors.New("the token is malformed")
	ErrAlgorithm  = errors.New("the token is not signed with EdDSA")
	ErrUnknownKey = errors.New("the token is signed by a key that is not published")
	ErrSignature  = errors.New("the token's signature does not verify")
	ErrExpired    = errors.New("the token has expired")
	ErrClaims     = errors.New("the token's claims are not ours")
)

// Claims are a token's claims: the registered ones, and the unionid when
// WeChat gave one. Nothing else about the exchange goes in.
type Claims struct {
	jwt.Claims
	UnionID string `json:"unionid,omitempty"`
}

// Session is what a valid token says.
type Session struct {
	OpenID    string
	AppID     string
	UnionID   string
	ExpiresAt time.Time
}

// Issuer mints tokens with the first of its keys and verifies tokens
// signed by any of them. It is safe for concurrent use.
type Issuer struct {
	signer   jose.Signer
	verifier *Verifier
	issuer   string
	ttl      time.Duration
	now      func() time.Time
	jwks     []byte
}

// Options configure an Issuer.
type Options struct {
	Issuer string        // iss; WX_TOKEN_ISSUER
	TTL    time.Duration // exp - iat; WX_TOKEN_TTL
	// Now is the clock; time.Now when nil. Tests set it.
	Now func() time.Time
}

// NewIssuer returns an Issuer signing with keys[0] and publishing and
// accepting every key.
func NewIssuer(keys []Key, o Options) (*Issuer, error) {
	if len(keys) == 0 {
		return nil, errors.New("token issuer: no key")
	}
	if o.TTL < time.Second {
		return nil, errors.New("token issuer: TTL must be at least 1s")
	}
	if o.Issuer == "" {
		return nil, errors.New("token issuer: empty issuer")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	first := keys[0]
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: first.priv, KeyID: first.kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("token signer: %w", err)
	}
	set := jose.JSONWebKeySet{}
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.pub, KeyID: k.kid, Algorithm: Algorithm, Use: "sig"})
	}
	jwks, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("token JWKS: %w", err)
	}
	v, err := ParseJWKS(jwks, o.Issuer)
	if err != nil {
		return nil, err
	}
	v.now = o.Now
	return &Issuer{signer: signer, verifier: v, issuer: o.Issuer, ttl: o.TTL, now: o.Now, jwks: jwks}, nil
}

// TTL is how long a token minted now lives.
func (i *Issuer) TTL() time.Duration { return i.ttl }

// KID is the id of the key that signs.
func (i *Issuer) KID() string { return i.verifier.order[0] }

// JWKS is the public keys as a JWKS document: what PREFIX.jwks and the
// edge's /.well-known/jwks.json answer.
func (i *Issuer) JWKS() []byte { return i.jwks }

// Mint returns a token saying that openid (and unionid, if not empty) is
// a user of appid, and when it expires.
func (i *Issuer) Mint(appid, openid, unionid string) (string, time.Time, error) {
	now := i.now().Truncate(time.Second)
	exp := now.Add(i.ttl)
	var jti [16]byte
	rand.Read(jti[:]) // never fails (crypto/rand's contract since Go 1.24)
	c := Claims{
		Claims: jwt.Claims{
			Issuer:   i.issuer,
			Subject:  openid,
			Audience: jwt.Audience{appid},
			IssuedAt: jwt.NewNumericDate(now),
			Expiry:   jwt.NewNumericDate(exp),
			ID:       base64.RawURLEncoding.EncodeToString(jti[:]),
		},
		UnionID: unionid,
	}
	// jwt.Signed(...).Claims(c) would round-trip the claims through a map
	// to merge them; signing their JSON directly is the same JWS for
	// half the allocations (BenchmarkMint).
	payload, err := json.Marshal(c)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("encoding token claims: %w", err)
	}
	jws, err := i.signer.Sign(payload)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signing a token: %w", err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("serializing a token: %w", err)
	}
	return tok, exp, nil
}

// Verify checks a token against the issuer's own keys.
func (i *Issuer) Verify(raw string) (Session, error) { return i.verifier.Verify(raw) }

// Verifier checks tokens against a set of public keys, offline. It is
// what a service that holds only the JWKS runs; it never needs a secret.
type Verifier struct {
	keys   map[string]ed25519.PublicKey
	order  []string
	issuer string // checked when not empty
	now    func() time.Time
}

// ParseJWKS returns a Verifier for the Ed25519 keys of a JWKS document.
// issuer, when not empty, must be the tokens' iss. Keys of another type
// or algorithm are refused rather than skipped: they are not ours.
func ParseJWKS(data []byte, issuer string) (*Verifier, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("JWKS does not parse: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("JWKS has no key")
	}
	v := &Verifier{keys: map[string]ed25519.PublicKey{}, issuer: issuer, now: time.Now}
	for n, k := range set.Keys {
		pub, ok := k.Key.(ed25519.PublicKey)
		switch {
		case !ok:
			return nil, fmt.Errorf("JWKS key %d is not an Ed25519 public key", n+1)
		case k.KeyID == "":
			return nil, fmt.Errorf("JWKS key %d has no kid", n+1)
		case k.Algorithm != "" && k.Algorithm != Algorithm:
			return nil, fmt.Errorf("JWKS key %d is for %s, not EdDSA", n+1, k.Algorithm)
		case k.Use != "" && k.Use != "sig":
			return nil, fmt.Errorf("JWKS key %d is not for signatures", n+1)
		}
		if _, dup := v.keys[k.KeyID]; dup {
			return nil, fmt.Errorf("JWKS key %d repeats kid %s", n+1, k.KeyID)
		}
		v.keys[k.KeyID] = pub
		v.order = append(v.order, k.KeyID)
	}
	return v, nil
}

// WithClock returns a copy of v that reads the time from now.
func (v *Verifier) WithClock(now func() time.Time) *Verifier {
	c := *v
	c.now = now
	return &c
}

// Has reports whether kid is among v's keys.
func (v *Verifier) Has(kid string) bool {
	_, ok := v.keys[kid]
	return ok
}

// KeyID returns the kid of a token's header without verifying anything,
// so a caller can tell an unknown key (refresh its JWKS) from a bad
// token. ok is false if the token does not parse as an EdDSA JWS.
func KeyID(raw string) (kid string, ok bool) {
	if raw == "" || len(raw) > MaxLen {
		return "", false
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(tok.Headers) != 1 {
		return "", false
	}
	return tok.Headers[0].KeyID, true
}

// namesOtherAlgorithm reports whether a token go-jose refused names an
// algorithm other than EdDSA in its header. It decides only which error
// the caller sees: the token is refused either way.
func namesOtherAlgorithm(raw string) bool {
	head, _, ok := strings.Cut(raw, ".")
	if !ok {
		return false
	}
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return false
	}
	var h struct {
		Alg string `json:"alg"`
	}
	return json.Unmarshal(b, &h) == nil && h.Alg != "" && h.Alg != Algorithm
}

// Verify checks raw's signature, algorithm, key and claims, and returns
// what it says. Errors wrap one of the Err values of this package and
// never quote the token.
func (v *Verifier) Verify(raw string) (Session, error) {
	if raw == "" {
		return Session{}, ErrMissing
	}
	if len(raw) > MaxLen {
		return Session{}, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxLen)
	}
	// Only EdDSA parses: "none", HS256 keyed with our public key and
	// every other algorithm are refused before any key is looked at.
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		if namesOtherAlgorithm(raw) {
			return Session{}, ErrAlgorithm
		}
		return Session{}, ErrMalformed
	}
	if len(tok.Headers) != 1 {
		return Session{}, ErrMalformed
	}
	h := tok.Headers[0]
	if h.Algorithm != Algorithm {
		return Session{}, ErrAlgorithm
	}
	pub, ok := v.keys[h.KeyID]
	if !ok {
		return Session{}, ErrUnknownKey
	}
	var c Claims
	if err := tok.Claims(pub, &c); err != nil {
		return Session{}, ErrSignature
	}
	if c.Subject == "" || len(c.Audience) != 1 || c.Audience[0] == "" || c.Expiry == nil || c.IssuedAt == nil || c.ID == "" {
		return Session{}, fmt.Errorf("%w: sub, aud, iat, exp and jti are required", ErrClaims)
	}
	err = c.ValidateWithLeeway(jwt.Expected{Issuer: v.issuer, Time: v.now()}, Leeway)
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return Session{}, ErrExpired
	case err != nil:
		return Session{}, fmt.Errorf("%w: %v", ErrClaims, err)
	}
	return Session{OpenID: c.Subject, AppID: c.Audience[0], UnionID: c.UnionID, ExpiresAt: c.Expiry.Time().UTC()}, nil
}
