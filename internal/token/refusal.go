package token

import (
	"errors"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// Refusal is the contract's answer to a refused token: invalid_token
// (401, retry new_code), with a message saying why that never quotes
// the token.
func Refusal(err error) *protocol.Error {
	why := "the token is invalid"
	for _, known := range []error{ErrMissing, ErrMalformed, ErrAlgorithm, ErrUnknownKey, ErrSignature, ErrExpired, ErrClaims} {
		if errors.Is(err, known) {
			why = known.Error()
			break
		}
	}
	return protocol.Wrap(err, protocol.KindInvalidToken, "%s; call wx.login() and exchange the new code", why)
}
