// Package edge is the HTTP front of wxlogin. It holds no secret: it
// parses and validates a login code, asks the worker pool over NATS
// request-reply within one budget (EDGE_TIMEOUT), and maps the reply, or
// the absence of one, to HTTP.
package edge

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// Config is what the edge needs.
type Config struct {
	Timeout       time.Duration // the whole request's budget
	MaxBody       int64
	SubjectPrefix string
	ClientLimit   ClientLimit // per-client limit on /v1/openid; off when zero
	// RefuseGet refuses GET and HEAD on /v1/openid (405, Allow: POST), so
	// that codes never travel in URLs, which access logs keep
	// (EDGE_ALLOW_GET=false). A POST with a code in its query string is
	// refused too (400).
	RefuseGet bool
	// Registry, when set, receives the edge's Prometheus metrics and is
	// served on /metrics: on MetricsAddr when that is set, else on the
	// public handler.
	Registry    *prometheus.Registry
	MetricsAddr string
	// MaxConns caps the open client connections (EDGE_MAX_CONNS); 0 means
	// DefaultMaxConns.
	MaxConns int
	// IdleTimeout closes keep-alive connections left unused
	// (EDGE_IDLE_TIMEOUT); 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
}

// The defaults of Config's zero values, as in internal/config.
const (
	DefaultMaxConns = 4096
	// A mobile client's next login is minutes away, so a long idle
	// connection only holds memory; 30s still covers a retry.
	DefaultIdleTimeout = 30 * time.Second
)

// replySlack is kept back from the budget the worker is told, so its
// answer, even a timeout, travels back before the edge gives up.
const replySlack = 50 * time.Millisecond

// NewServer returns the edge's HTTP handler, asking workers through nc.
func NewServer(cfg Config, nc *nats.Conn, logger *slog.Logger, opts ...Option) http.Handler {
	if cfg.SubjectPrefix == "" {
		cfg.SubjectPrefix = protocol.DefaultSubjectPrefix
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	mux := http.NewServeMux()
	var m *metrics.Edge
	if cfg.Registry != nil {
		m = metrics.NewEdge(cfg.Registry)
		metrics.NATS(cfg.Registry, "edge", nc)
		if cfg.MetricsAddr == "" {
			mux.Handle("GET /metrics", metrics.Handler(cfg.Registry))
		}
	}
	// Only /v1/openid is limited: probes come from the orchestrator's
	// address and must never be refused.
	mux.Handle("/v1/openid", limitClients(cfg.ClientLimit, logger)(handleOpenID(cfg, nc, watchConn(nc), logger, m)))
	keys := newKeyCache(nc, cfg.SubjectPrefix, cfg.Timeout)
	mux.Handle("GET /.well-known/jwks.json", handleJWKS(keys, logger))
	mux.Handle("GET /v1/session", handleSession(keys, logger))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /readyz", handleReady(nc, o.workers))
	return recoverPanics(mux, logger)
}

func handleOpenID(cfg Config, nc *nats.Conn, cw *connWatch, logger *slog.Logger, m *metrics.Edge) http.Handler {
	subject := protocol.Subject(cfg.SubjectPrefix)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, cancel := context.WithTimeout(r.Context(), cfg.Timeout)
		defer cancel()
		r.Body = http.MaxBytesReader(w, r.Body, cfg.MaxBody)

		var req protocol.Request
		e := refuseURLCode(r, cfg.RefuseGet)
		if e == nil {
			req, e = parseRequest(r, cfg.MaxBody)
		}
		var res protocol.Result
		if e == nil {
			res, e = ask(ctx, cancel, nc, cw, subject, req)
		}
		outcome := "ok"
		if e != nil {
			writeError(w, e)
			outcome = string(e.Kind)
		} else {
			writeBody(w, http.StatusOK, protocol.EncodeResult(res))
		}
		took := time.Since(start)
		m.Request(outcome, took.Seconds())
		logRequest(ctx, logger, r, req, e, took)
	})
}

// ask sends req to the worker pool and waits for the reply within ctx;
// cancel is ctx's, called if the connection drops meanwhile.
func ask(ctx context.Context, cancel context.CancelFunc, nc *nats.Conn, cw *connWatch, subject string, req protocol.Request) (protocol.Result, *protocol.Error) {
	epoch := cw.current()
	if !nc.IsConnected() {
		// Publishing now would sit in a reconnect buffer until the
		// deadline; the client is better served by a fast 503, with the
		// same Retry-After as the other 503s so that it backs off.
		return protocol.Result{}, protocol.Make(protocol.KindUnavailable,
			"the service is not connected to its workers; retry shortly", protocol.RetryAfter(time.Second))
	}
	msg := nats.NewMsg(subject)
	msg.Data = protocol.EncodeRequest(req)
	if dl, ok := ctx.Deadline(); ok {
		budget := max(time.Until(dl)-replySlack, time.Millisecond)
		msg.Header.Set(protocol.HeaderTimeout, strconv.FormatInt(budget.Milliseconds(), 10))
	}
	stop := context.AfterFunc(epoch, cancel)
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	stop()
	if err != nil {
		if epoch.Err() != nil && errors.Is(err, context.Canceled) {
			err = errConnLost
		}
		return protocol.Result{}, natsError(err)
	}
	return protocol.DecodeReply(reply)
}

// errConnLost: the connection to NATS dropped while the request waited.
var errConnLost = errors.New("the connection to NATS dropped while waiting for the reply")

// natsError maps a failed request: nobody listening and a lost connection
// are 503 at once; a worker that did not answer in time is 504.
func natsError(err error) *protocol.Error {
	switch {
	case errors.Is(err, errConnLost):
		return protocol.Make(protocol.KindUnavailable, "the service lost its connection to the workers; retry with the same code",
			protocol.Cause(err), protocol.RetryAfter(time.Second))
	case errors.Is(err, nats.ErrNoResponders):
		return protocol.Make(protocol.KindUnavailable, "no worker is available; retry shortly",
			protocol.Cause(err), protocol.RetryAfter(time.Second))
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return protocol.Wrap(err, protocol.KindTimeout, "no answer within the deadline")
	case errors.Is(err, context.Canceled):
		return protocol.Wrap(err, protocol.KindUnavailable, "the request was cancelled")
	default:
		return protocol.Make(protocol.KindUnavailable, "the service cannot reach its workers; retry shortly",
			protocol.Cause(err), protocol.RetryAfter(time.Second))
	}
}

// writeError is the one place an *protocol.Error becomes HTTP.
func writeError(w http.ResponseWriter, e *protocol.Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(protocol.RetryAfterSeconds(e.RetryAfter)))
	}
	if e.Status == http.StatusMethodNotAllowed {
		allow := "GET, HEAD, POST"
		if e == errGetRefused {
			allow = "POST"
		}
		w.Header().Set("Allow", allow)
	}
	writeJSON(w, e.Status, e.Body())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"error":"upstream_error","message":"reply cannot be encoded","retry":"same_code"}`)
	}
	writeBody(w, status, body)
}

// writeBody writes a JSON body: the one place replies get their headers.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	// An openid is personal data: no cache keeps it.
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

func logRequest(ctx context.Context, logger *slog.Logger, r *http.Request, req protocol.Request, e *protocol.Error, d time.Duration) {
	level := slog.LevelDebug
	if e != nil && e.Status >= 500 {
		level = slog.LevelWarn
	}
	if !logger.Enabled(ctx, level) {
		return
	}
	status, kind := http.StatusOK, "ok"
	attrs := []slog.Attr{slog.String("method", r.Method), slog.String("appid", req.AppID)}
	if req.Code != "" {
		attrs = append(attrs, slog.String("code", logging.CodeHash(req.Code)))
	}
	if e != nil {
		status, kind = e.Status, string(e.Kind)
		attrs = append(attrs, logging.Err(e))
	}
	attrs = append(attrs, slog.Int("status", status), slog.String("outcome", kind), slog.Duration("latency", d))
	logger.LogAttrs(context.WithoutCancel(ctx), level, "request", attrs...)
}
