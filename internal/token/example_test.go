package token_test

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/wxlogin/wxlogin/internal/token"
)

// verifyLogin is what a backend service copies: it checks a wxlogin token
// offline against the JWKS served at the edge's /.well-known/jwks.json
// (fetch it at start, cache it, and fetch it again when a token names a
// kid you do not have), for one of your appids. It needs only
// github.com/go-jose/go-jose/v4.
func verifyLogin(jwksJSON []byte, raw, issuer, appid string) (openid, unionid string, err error) {
	var jwks jose.JSONWebKeySet
	if err := json.Unmarshal(jwksJSON, &jwks); err != nil {
		return "", "", fmt.Errorf("reading the JWKS: %w", err)
	}
	// Only EdDSA: this refuses "none" and HS256 signed with the public key.
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return "", "", fmt.Errorf("parsing the token: %w", err)
	}
	keys := jwks.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		return "", "", errors.New("the token's key is not in the JWKS")
	}
	pub, ok := keys[0].Key.(ed25519.PublicKey)
	if !ok {
		return "", "", errors.New("the JWKS key is not Ed25519")
	}
	var claims struct {
		jwt.Claims
		UnionID string `json:"unionid"`
	}
	if err := tok.Claims(pub, &claims); err != nil {
		return "", "", fmt.Errorf("checking the signature: %w", err)
	}
	if claims.Expiry == nil {
		return "", "", errors.New("the token has no exp")
	}
	// wxlogin allows 30 s of clock skew between hosts.
	if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: issuer, AnyAudience: jwt.Audience{appid}}, 30*time.Second); err != nil {
		return "", "", fmt.Errorf("checking the claims: %w", err)
	}
	return claims.Subject, claims.UnionID, nil
}

func Example_verifyOffline() {
	// In production the token comes in an Authorization: Bearer header and
	// the JWKS from GET https://your-edge/.well-known/jwks.json; here a
	// worker's issuer makes both.
	key, _ := token.GenerateKey()
	issuer, _ := token.NewIssuer([]token.Key{key}, token.Options{Issuer: "wxlogin", TTL: 2 * time.Hour})
	raw, _, _ := issuer.Mint("wx1234567890abcdef", "o0IWlytYmoD6bpPR3Hk1CXCfILv-", "")

	openid, _, err := verifyLogin(issuer.JWKS(), raw, "wxlogin", "wx1234567890abcdef")
	fmt.Println(openid, err)
	_, _, err = verifyLogin(issuer.JWKS(), raw, "wxlogin", "wxsomeotherapp00000")
	fmt.Println(err)
	// Output:
	// o0IWlytYmoD6bpPR3Hk1CXCfILv- <nil>
	// checking the claims: go-jose/go-jose/jwt: validation failed, invalid audience claim (aud)
}
