package edge

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/token"
)

// The edge verifies login tokens itself, from the public keys it learns
// over PREFIX.jwks, rather than forwarding each token to PREFIX.session:
// a check is then some 100 µs of CPU here instead of a NATS round trip
// that takes a worker's time from exchanges, and sessions keep working
// while the workers are busy or briefly away. The edge still holds no
// secret: a JWKS is public.

const (
	// jwksMaxAge is the JWKS's Cache-Control max-age. A verifier that
	// cached it sees a key at most this late; the rotation steps wait
	// this long (plus jwksRefresh) between publishing a key and signing
	// with it.
	jwksMaxAge = 5 * time.Minute
	// jwksRefresh is how old the edge's own copy may get before the next
	// request fetches it again.
	jwksRefresh = time.Minute
	// jwksStale is how long a copy still serves while the workers cannot
	// be asked: keys change rarely, and an edge cut off from its workers
	// should not start refusing every token.
	jwksStale = time.Hour
	// jwksForceEvery limits refetches for tokens naming a kid we do not
	// know, so that a stream of forged kids cannot hammer the workers.
	jwksForceEvery = 5 * time.Second
)

// keyCache holds the JWKS learned from the workers.
type keyCache struct {
	nc      *nats.Conn
	subject string
	timeout time.Duration

	mu       sync.Mutex // held while fetching: concurrent requests wait for one fetch
	doc      []byte
	verifier *token.Verifier
	fetched  time.Time
	forced   time.Time
}

func newKeyCache(nc *nats.Conn, prefix string, timeout time.Duration) *keyCache {
	return &keyCache{nc: nc, subject: protocol.JWKSSubject(prefix), timeout: min(timeout, 2*time.Second)}
}

// get returns the keys, fetching them when the copy is older than
// jwksRefresh, or when force is set (a token named an unknown kid) and
// the last forced fetch is older than jwksForceEvery.
func (c *keyCache) get(ctx context.Context, force bool) (*token.Verifier, []byte, *protocol.Error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	due := c.doc == nil || now.Sub(c.fetched) > jwksRefresh
	if force && now.Sub(c.forced) > jwksForceEvery {
		due, c.forced = true, now
	}
	if !due {
		return c.verifier, c.doc, nil
	}
	e := c.fetch(ctx)
	if e != nil && (c.doc == nil || now.Sub(c.fetched) > jwksStale) {
		return nil, nil, e
	}
	return c.verifier, c.doc, nil
}

func (c *keyCache) fetch(ctx context.Context) *protocol.Error {
	if !c.nc.IsConnected() {
		return protocol.Make(protocol.KindUnavailable, "the service is not connected to its workers; retry shortly",
			protocol.RetryAfter(time.Second))
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	reply, err := c.nc.RequestWithContext(ctx, c.subject, nil)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			// Workers without WX_TOKEN_KEY_FILE serve no keys.
			return protocol.Make(protocol.KindUnavailable, "no worker publishes login token keys",
				protocol.Cause(err), protocol.RetryAfter(time.Second))
		}
		return natsError(err)
	}
	v, err := token.ParseJWKS(reply.Data, "")
	if err != nil {
		return protocol.Wrap(err, protocol.KindUpstream, "a worker sent an unreadable JWKS")
	}
	c.doc, c.verifier, c.fetched = reply.Data, v, time.Now()
	return nil
}

// handleJWKS serves the workers' public keys, for services that verify
// tokens offline.
func handleJWKS(keys *keyCache, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, doc, e := keys.get(r.Context(), false)
		if e != nil {
			logger.Warn("jwks unavailable", logging.Err(e))
			writeError(w, e)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "public, max-age="+strconv.Itoa(int(jwksMaxAge/time.Second)))
		w.Write(doc)
	})
}

// handleSession answers what the bearer token of a request says, or 401
// invalid_token.
func handleSession(keys *keyCache, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, e := verifyBearer(r, keys)
		if e != nil {
			if e.Kind == protocol.KindInvalidToken {
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
				logger.Debug("session refused", logging.Err(e))
			} else {
				logger.Warn("session not checked", logging.Err(e))
			}
			writeError(w, e)
			return
		}
		body, _ := json.Marshal(protocol.Session{OpenID: s.OpenID, AppID: s.AppID, UnionID: s.UnionID, ExpiresAt: s.ExpiresAt.Unix()})
		writeBody(w, http.StatusOK, body)
	})
}

func verifyBearer(r *http.Request, keys *keyCache) (token.Session, *protocol.Error) {
	raw, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		return token.Session{}, token.Refusal(token.ErrMissing)
	}
	v, _, e := keys.get(r.Context(), false)
	if e != nil {
		return token.Session{}, e
	}
	if kid, ok := token.KeyID(raw); ok && !v.Has(kid) {
		// Perhaps a key published since our last fetch.
		if v, _, e = keys.get(r.Context(), true); e != nil {
			return token.Session{}, e
		}
	}
	s, err := v.Verify(raw)
	if err != nil {
		return token.Session{}, token.Refusal(err)
	}
	return s, nil
}

// bearer takes the token out of an Authorization header; the scheme is
// case-insensitive (RFC 9110).
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
