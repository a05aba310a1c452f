package protocol

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Kind says what went wrong, in words a client can act on. Kinds are part of
// the public contract (HTTP and NATS): never rename one.
type Kind string

// The error kinds of the contract.
const (
	KindBadRequest    Kind = "bad_request"
	KindUnknownApp    Kind = "unknown_app"
	KindAppIDRequired Kind = "appid_required"
	KindInvalidCode   Kind = "invalid_code"
	KindCodeUsed      Kind = "code_used"
	KindUserBlocked   Kind = "user_blocked"
	KindRateLimited   Kind = "rate_limited"
	KindUpstream      Kind = "upstream_error"
	KindUnavailable   Kind = "unavailable"
	KindTimeout       Kind = "timeout"
	// KindInvalidToken: a login token (GET /v1/session, PREFIX.session) is
	// missing, malformed, altered, expired, signed by a key that is not
	// published, or not EdDSA. The client logs in again.
	KindInvalidToken Kind = "invalid_token"
	// KindInternal: a bug on our side (a recovered panic); the reply says
	// nothing more, and the same code may be retried.
	KindInternal Kind = "internal"
)

// Kinds lists every kind, for tests and metrics.
var Kinds = []Kind{
	KindBadRequest, KindUnknownApp, KindAppIDRequired, KindInvalidCode,
	KindCodeUsed, KindUserBlocked, KindRateLimited, KindUpstream,
	KindUnavailable, KindTimeout, KindInvalidToken, KindInternal,
}

// Retry tells the mini-program what to do after an error.
type Retry string

// The retry hints of the contract.
const (
	RetryNewCode  Retry = "new_code"  // call wx.login() again, then retry
	RetrySameCode Retry = "same_code" // retry as is, after Retry-After if given
	RetryNo       Retry = "no"
)

// defaults holds each kind's HTTP status and retry hint.
var defaults = map[Kind]struct {
	status int
	retry  Retry
}{
	KindBadRequest:    {http.StatusBadRequest, RetryNo},
	KindUnknownApp:    {http.StatusBadRequest, RetryNo},
	KindAppIDRequired: {http.StatusBadRequest, RetryNo},
	KindInvalidCode:   {http.StatusUnauthorized, RetryNewCode},
	KindCodeUsed:      {http.StatusUnauthorized, RetryNewCode},
	KindUserBlocked:   {http.StatusForbidden, RetryNo},
	KindRateLimited:   {http.StatusTooManyRequests, RetrySameCode},
	KindUpstream:      {http.StatusBadGateway, RetrySameCode},
	KindUnavailable:   {http.StatusServiceUnavailable, RetrySameCode},
	KindTimeout:       {http.StatusGatewayTimeout, RetrySameCode},
	KindInvalidToken:  {http.StatusUnauthorized, RetryNewCode},
	KindInternal:      {http.StatusInternalServerError, RetrySameCode},
}

// Error is the one error type of wxlogin. Message, Kind, Retry, Status and
// WxErrcode may be shown to clients; Cause is for the log only. Nothing in
// an Error may hold an AppSecret, a session_key or a raw code: the code that
// builds one is responsible for that, and tests check it.
//
// An Error is not changed once made, for it may be shared: the one error
// of an exchange goes to the requester, the log, the stats and the
// de-duplication store, and duplicates of the code get it too. Its fields
// are set through Options when it is made (New, Wrap, Make), and With
// makes a changed copy.
type Error struct {
	Kind       Kind
	Status     int    // HTTP status; also the NATS Nats-Service-Error-Code
	Message    string // safe to show a client
	Retry      Retry
	WxErrcode  int           // WeChat's errcode, 0 when WeChat gave none
	RetryAfter time.Duration // > 0 when the client should wait before retrying
	// Temporary marks a failure that the worker may retry upstream (busy,
	// 5xx, network, garbage). It never leaves the worker.
	Temporary bool
	Cause     error // detail for the log; never sent to a client
}

// New returns an Error of the given kind with the kind's status and hint.
func New(kind Kind, format string, args ...any) *Error {
	return Make(kind, fmt.Sprintf(format, args...))
}

// Wrap is New with a cause for the log.
func Wrap(cause error, kind Kind, format string, args ...any) *Error {
	return Make(kind, fmt.Sprintf(format, args...), Cause(cause))
}

// Make returns an Error of the given kind with the kind's status and hint,
// then opts applied.
func Make(kind Kind, message string, opts ...Option) *Error {
	d, ok := defaults[kind]
	if !ok {
		d = defaults[KindUpstream]
	}
	e := &Error{Kind: kind, Status: d.status, Retry: d.retry, Message: message}
	for _, o := range opts {
		o(e)
	}
	return e
}

// With returns a copy of e with opts applied; e itself is unchanged.
func (e *Error) With(opts ...Option) *Error {
	c := *e
	for _, o := range opts {
		o(&c)
	}
	return &c
}

// An Option sets a field of an Error as it is made (Make, With).
type Option func(*Error)

// Status sets the HTTP status (and NATS error code) in place of the kind's.
func Status(code int) Option { return func(e *Error) { e.Status = code } }

// Message sets the client-visible message.
func Message(m string) Option { return func(e *Error) { e.Message = m } }

// RetryHint sets the retry hint in place of the kind's.
func RetryHint(r Retry) Option { return func(e *Error) { e.Retry = r } }

// RetryAfter sets how long the client should wait before retrying.
func RetryAfter(d time.Duration) Option { return func(e *Error) { e.RetryAfter = d } }

// Errcode sets WeChat's errcode.
func Errcode(n int) Option { return func(e *Error) { e.WxErrcode = n } }

// Temporary marks the error as worth another upstream attempt, or not.
func Temporary(t bool) Option { return func(e *Error) { e.Temporary = t } }

// Cause sets the detail for the log.
func Cause(err error) Option { return func(e *Error) { e.Cause = err } }

func (e *Error) Error() string {
	s := string(e.Kind) + ": " + e.Message
	if e.WxErrcode != 0 {
		s += fmt.Sprintf(" (errcode %d)", e.WxErrcode)
	}
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Cause }

// As returns err as an *Error. Errors of another type become an
// upstream_error whose cause is err, so callers always get the contract's shape.
func As(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Wrap(err, KindUpstream, "internal error")
}

// ErrorBody is the JSON body of every error reply, over HTTP and NATS.
type ErrorBody struct {
	Error     Kind   `json:"error"`
	Message   string `json:"message"`
	Retry     Retry  `json:"retry"`
	WxErrcode int    `json:"wx_errcode,omitempty"`
}

// Body returns the client-visible part of e.
func (e *Error) Body() ErrorBody {
	return ErrorBody{Error: e.Kind, Message: e.Message, Retry: e.Retry, WxErrcode: e.WxErrcode}
}

// FromBody rebuilds an Error from a reply body and status, as a client of
// the worker (the edge, another service) sees it.
func FromBody(b ErrorBody, status int) *Error {
	kind := b.Error
	if _, ok := defaults[kind]; !ok {
		kind = KindUpstream
	}
	opts := []Option{Errcode(b.WxErrcode)}
	if status != 0 {
		opts = append(opts, Status(status))
	}
	if b.Retry != "" {
		opts = append(opts, RetryHint(b.Retry))
	}
	return Make(kind, b.Message, opts...)
}
