// Package protocol is the contract between the edge, the workers and any
// other service that asks for openids: the NATS subject, the request and
// reply shapes, and the one error type with its kinds, HTTP statuses and
// retry hints. Every other package speaks in these terms.
package protocol

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Names fixed by the contract.
const (
	// ServiceName is the micro service name workers register under.
	ServiceName = "wxlogin"
	// EndpointName is the micro endpoint that exchanges codes.
	EndpointName = "code2session"
	// QueueGroup is the one queue group all workers share.
	QueueGroup = "wxlogin"
	// DefaultSubjectPrefix is NATS_SUBJECT_PREFIX's default.
	DefaultSubjectPrefix = "wxlogin"

	// HeaderTimeout carries the requester's remaining budget in
	// milliseconds, so the worker never works (or retries) past it. A
	// relative budget, not a deadline, because clocks of the edge and the
	// worker hosts need not agree.
	HeaderTimeout = "Wxlogin-Timeout-Ms"
	// HeaderRetryAfter carries Retry-After seconds on NATS error replies.
	HeaderRetryAfter = "Retry-After"

	// MaxTokenLen caps codes and appids. Real codes are 32 characters.
	MaxTokenLen = 128

	// MaxMessage caps the request and reply bodies that are decoded. The
	// largest valid request (both tokens at MaxTokenLen, every character
	// escaped) is under 2 KiB; anything longer is refused before
	// encoding/json sees it.
	MaxMessage = 4 << 10
)

// Subject returns the exchange subject for a NATS_SUBJECT_PREFIX.
func Subject(prefix string) string { return prefix + "." + EndpointName }

// Request asks for the openid behind a login code. AppID may be empty when
// the worker serves exactly one app.
type Request struct {
	AppID string `json:"appid,omitempty"`
	Code  string `json:"code"`
}

// Result is a successful exchange as clients see it: never the session_key.
// Token and ExpiresIn are there when the worker mints login tokens
// (WX_TOKEN_KEY_FILE, or the all-in-one): a JWT naming the user, and the
// seconds until it expires.
type Result struct {
	OpenID    string `json:"openid"`
	UnionID   string `json:"unionid,omitempty"`
	Token     string `json:"token,omitempty"`
	ExpiresIn int64  `json:"expires_in,omitempty"`
}

// EncodeRequest is r as JSON, the body of a NATS request.
func EncodeRequest(r Request) []byte { return marshal(r) }

// EncodeResult is r as JSON, the body of a success reply.
func EncodeResult(r Result) []byte { return marshal(r) }

// marshal is json.Marshal of a value that always encodes: a struct of
// strings.
func marshal(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// ValidToken reports whether s may be a code or an appid: 1 to MaxTokenLen
// printable ASCII characters, no spaces. Anything else (control characters,
// spaces, invalid or non-ASCII UTF-8) is refused, never altered.
func ValidToken(s string) bool {
	if len(s) == 0 || len(s) > MaxTokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// Validate checks a request's fields. The messages never echo the code.
func (r Request) Validate() *Error {
	if r.Code == "" {
		return New(KindBadRequest, "code is required")
	}
	if !ValidToken(r.Code) {
		return New(KindBadRequest, "code must be 1 to %d printable ASCII characters without spaces", MaxTokenLen)
	}
	if r.AppID != "" && !ValidToken(r.AppID) {
		return New(KindBadRequest, "appid must be 1 to %d printable ASCII characters without spaces", MaxTokenLen)
	}
	return nil
}

// DecodeRequest parses and validates a NATS request body.
func DecodeRequest(data []byte) (Request, *Error) {
	var r Request
	if len(data) == 0 {
		return r, New(KindBadRequest, "empty request: want {\"appid\":A,\"code\":C}")
	}
	if len(data) > MaxMessage {
		return r, New(KindBadRequest, "request is larger than %d bytes", MaxMessage)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, New(KindBadRequest, "request is not a JSON object {\"appid\":A,\"code\":C}")
	}
	if e := r.Validate(); e != nil {
		return r, e
	}
	return r, nil
}

// ErrorMsg builds the NATS reply for e: the micro error headers, with the
// HTTP status as the error code, and the JSON error body.
func ErrorMsg(e *Error) *nats.Msg {
	body, _ := json.Marshal(e.Body())
	m := &nats.Msg{Header: nats.Header{}, Data: body}
	m.Header.Set(micro.ErrorCodeHeader, strconv.Itoa(e.Status))
	m.Header.Set(micro.ErrorHeader, e.Message)
	if e.RetryAfter > 0 {
		m.Header.Set(HeaderRetryAfter, strconv.Itoa(RetryAfterSeconds(e.RetryAfter)))
	}
	return m
}

// ResultMsg builds the NATS reply for a success.
func ResultMsg(r Result) *nats.Msg {
	return &nats.Msg{Data: EncodeResult(r)}
}

// DecodeReply turns a worker's reply into a Result or an *Error.
func DecodeReply(m *nats.Msg) (Result, *Error) {
	var res Result
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		status, _ := strconv.Atoi(code)
		var b ErrorBody
		if len(m.Data) > MaxMessage || json.Unmarshal(m.Data, &b) != nil || b.Error == "" {
			var opts []Option
			if status >= 400 && status < 600 {
				opts = append(opts, Status(status))
			}
			return res, Make(KindUpstream, "worker error: "+m.Header.Get(micro.ErrorHeader), opts...)
		}
		e := FromBody(b, status)
		if s, err := strconv.Atoi(m.Header.Get(HeaderRetryAfter)); err == nil && s > 0 {
			e = e.With(RetryAfter(time.Duration(s) * time.Second))
		}
		return res, e
	}
	if len(m.Data) > MaxMessage || json.Unmarshal(m.Data, &res) != nil || res.OpenID == "" {
		return Result{}, New(KindUpstream, "worker sent an unreadable reply")
	}
	return res, nil
}

// RetryAfterSeconds rounds d up to whole seconds, at least 1, as
// Retry-After wants.
func RetryAfterSeconds(d time.Duration) int {
	const most = 24 * time.Hour
	if d > most {
		d = most
	}
	return max(int((d+time.Second-1)/time.Second), 1)
}
