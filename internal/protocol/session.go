package protocol

// The token endpoints of the worker's micro service, beside the exchange:
// PREFIX.jwks answers the public keys that verify login tokens (a JWKS
// document), PREFIX.session checks one token.
const (
	JWKSEndpointName    = "jwks"
	SessionEndpointName = "session"
)

// JWKSSubject returns the subject of the JWKS endpoint for a prefix.
func JWKSSubject(prefix string) string { return prefix + "." + JWKSEndpointName }

// SessionSubject returns the subject of the session endpoint for a prefix.
func SessionSubject(prefix string) string { return prefix + "." + SessionEndpointName }

// SessionRequest is PREFIX.session's body.
type SessionRequest struct {
	Token string `json:"token"`
}

// Session is what a valid login token says: GET /v1/session's and
// PREFIX.session's answer. ExpiresAt is in Unix seconds.
type Session struct {
	OpenID    string `json:"openid"`
	AppID     string `json:"appid"`
	UnionID   string `json:"unionid,omitempty"`
	ExpiresAt int64  `json:"expires_at"`
}
