package exchange

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/token"
)

// LoadTokens is the start-up step that reads the login-token keys and
// says in the log what the worker will do with them. With
// WX_TOKEN_KEY_FILE set it loads that file. Unset, cmd/worker
// (generate false) mints no tokens; the all-in-one (generate true)
// generates a key, kept in storeDir when that is set so that tokens
// outlive a restart. A nil Issuer means no tokens.
func LoadTokens(cfg config.Tokens, generate bool, storeDir string, logger *slog.Logger) (*token.Issuer, error) {
	var keys []token.Key
	switch {
	case cfg.KeyFile != "":
		var err error
		if keys, err = token.LoadFile(cfg.KeyFile); err != nil {
			return nil, err
		}
	case !generate:
		logger.Warn("login tokens are OFF: WX_TOKEN_KEY_FILE is not set, so replies carry no token and PREFIX.jwks and PREFIX.session are not served")
		return nil, nil
	case storeDir != "":
		var created bool
		var err error
		if keys, created, err = token.LoadOrCreate(storeDir); err != nil {
			return nil, err
		}
		logger.Info("login token key kept in the store dir", "created", created, "dir", storeDir)
	default:
		k, err := token.GenerateKey()
		if err != nil {
			return nil, err
		}
		keys = []token.Key{k}
		logger.Warn("login tokens use a key generated at start and do not survive a restart: set WX_TOKEN_KEY_FILE, or NATS_STORE_DIR to keep the key there")
	}
	iss, err := token.NewIssuer(keys, token.Options{Issuer: cfg.Issuer, TTL: cfg.TTL})
	if err != nil {
		return nil, fmt.Errorf("login tokens: %w", err)
	}
	logger.Info("login tokens on", "kid", iss.KID(), "keys", len(keys), "ttl", cfg.TTL, "issuer", cfg.Issuer)
	return iss, nil
}

// successMsg is the reply to a success. With tokens on, a token is minted
// here, at the moment of replying, and never stored: de-duplication keeps
// only the openid and unionid, so a repeated or duplicated code gets a
// fresh token for the same user.
func (w *Worker) successMsg(appid string, res protocol.Result) *nats.Msg {
	if w.cfg.Tokens == nil {
		return protocol.ResultMsg(res)
	}
	tok, exp, err := w.cfg.Tokens.Mint(appid, res.OpenID, res.UnionID)
	if err != nil {
		// Signing with a loaded Ed25519 key does not fail; should it,
		// a reply without the promised token would be a silent break.
		w.log.Error("minting a login token failed", "appid", appid, logging.Err(err))
		return protocol.ErrorMsg(protocol.Wrap(err, protocol.KindUpstream, "the login token could not be made"))
	}
	res.Token = tok
	res.ExpiresIn = max(exp.Unix()-time.Now().Unix(), 1)
	return protocol.ResultMsg(res)
}

// maxSessionBody bounds PREFIX.session's body: a token is capped at
// token.MaxLen, and the JSON around it is small.
const maxSessionBody = token.MaxLen + 256

// addTokenEndpoints serves PREFIX.jwks and PREFIX.session beside the
// exchange, when the worker mints tokens.
func (w *Worker) addTokenEndpoints(svc micro.Service) error {
	iss := w.cfg.Tokens
	if iss == nil {
		return nil
	}
	jwks := iss.JWKS()
	subject := protocol.JWKSSubject(w.cfg.SubjectPrefix)
	if err := svc.AddEndpoint(protocol.JWKSEndpointName, micro.HandlerFunc(func(req micro.Request) {
		req.Respond(jwks)
	}), micro.WithEndpointSubject(subject)); err != nil {
		return fmt.Errorf("adding endpoint %s: %w", subject, err)
	}
	subject = protocol.SessionSubject(w.cfg.SubjectPrefix)
	if err := svc.AddEndpoint(protocol.SessionEndpointName, micro.HandlerFunc(w.handleSession), micro.WithEndpointSubject(subject)); err != nil {
		return fmt.Errorf("adding endpoint %s: %w", subject, err)
	}
	return nil
}

// handleSession answers PREFIX.session: what a token says, or why it is
// refused. Verifying takes tens of microseconds, so it runs on the
// subscription's goroutine.
func (w *Worker) handleSession(req micro.Request) {
	data := req.Data()
	var body protocol.SessionRequest
	if len(data) > maxSessionBody || json.Unmarshal(data, &body) != nil {
		respondError(req, protocol.New(protocol.KindBadRequest, "want {\"token\":T} of at most %d bytes", maxSessionBody))
		return
	}
	s, err := w.cfg.Tokens.Verify(body.Token)
	if err != nil {
		e := token.Refusal(err)
		w.log.Debug("session refused", logging.Err(e))
		respondError(req, e)
		return
	}
	out, _ := json.Marshal(protocol.Session{OpenID: s.OpenID, AppID: s.AppID, UnionID: s.UnionID, ExpiresAt: s.ExpiresAt.Unix()})
	req.Respond(out)
}

// respondError answers a micro request with e, as protocol.ErrorMsg does
// for the exchange.
func respondError(req micro.Request, e *protocol.Error) {
	body, _ := json.Marshal(e.Body())
	req.Error(strconv.Itoa(e.Status), e.Message, body)
}
