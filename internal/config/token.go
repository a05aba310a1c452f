package config

import (
	"errors"
	"time"
)

// Tokens configures the login tokens a worker mints (package token). The
// key file is not read here: validation only checks values, and the
// binary loads the keys in a step of its own (exchange.LoadTokens), so a
// key never sits in a config struct that might be logged.
type Tokens struct {
	KeyFile string        `envconfig:"WX_TOKEN_KEY_FILE" desc:"PEM file of PKCS#8 Ed25519 PRIVATE KEY blocks; the first signs login tokens, all are published and accepted; unset on worker: no tokens; unset on the all-in-one: a generated key"`
	TTL     time.Duration `envconfig:"WX_TOKEN_TTL" default:"2h" desc:"lifetime of a login token (at least 1s)"`
	Issuer  string        `envconfig:"WX_TOKEN_ISSUER" default:"wxlogin" desc:"iss claim of login tokens"`
}

func (t *Tokens) validate() error {
	var errs []error
	if t.TTL < time.Second {
		errs = append(errs, errors.New("WX_TOKEN_TTL: must be at least 1s"))
	}
	if t.Issuer == "" {
		errs = append(errs, errors.New("WX_TOKEN_ISSUER: must not be empty"))
	}
	return errors.Join(errs...)
}
