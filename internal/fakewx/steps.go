package fakewx

import (
	"strconv"
	"time"
)

// Step is one scripted answer; see Server.Script. Build Steps with the
// constructors in this package. The zero Step answers normally.
type Step struct {
	kind    stepKind
	errcode int
	status  int
	body    string
	d       time.Duration
	n       int
}

type stepKind uint8

const (
	kindJSON             stepKind = iota // a JSON answer: normal, or Errcode
	kindSlow                             // normal answer after a delay
	kindDrip                             // normal answer, one byte at a time
	kindWrongContentType                 // normal answer labelled text/html
	kindHTTPStatus
	kindGarbage
	kindTruncated
	kindHang
	kindReset
	kindHuge
	kindErrcode // a JSON error with a given errcode (only in scripts)
)

// answersNormally reports whether a step changes only how the normal answer
// is delivered, so the code's normal state machine (success or 40163) still
// decides what is said.
func (k stepKind) answersNormally() bool {
	switch k {
	case kindJSON, kindSlow, kindDrip, kindWrongContentType:
		return true
	}
	return false
}

// isFault reports whether the answer is not WeChat JSON at all.
func (k stepKind) isFault() bool {
	switch k {
	case kindHTTPStatus, kindGarbage, kindTruncated, kindHang, kindReset, kindHuge:
		return true
	}
	return false
}

// String describes the step, for test failure messages.
func (st Step) String() string {
	switch st.kind {
	case kindErrcode:
		return "Errcode(" + strconv.Itoa(st.errcode) + ")"
	case kindSlow:
		return "Slow(" + st.d.String() + ")"
	case kindDrip:
		return "Drip(" + st.d.String() + ")"
	case kindWrongContentType:
		return "WrongContentType()"
	case kindHTTPStatus:
		return "HTTPStatus(" + strconv.Itoa(st.status) + ")"
	case kindGarbage:
		return "Garbage()"
	case kindTruncated:
		return "Truncated()"
	case kindHang:
		return "Hang()"
	case kindReset:
		return "Reset()"
	case kindHuge:
		return "Huge(" + strconv.Itoa(st.n) + ")"
	}
	return "Normal()"
}

// Errcode answers {"errcode":n,"errmsg":"… rid: …"} with HTTP 200, as WeChat
// does for every error. Errcode(0) gives the degenerate answer some clients
// mistake for a success: errcode 0 and no openid.
func Errcode(n int) Step { return Step{kind: kindErrcode, errcode: n} }

// Busy answers errcode -1, "system error": WeChat's transient failure.
func Busy() Step { return Errcode(-1) }

// HTTPStatus answers status with body, as a proxy in front of WeChat does
// (for example 502 with an HTML page). The Content-Type is sniffed from body.
func HTTPStatus(status int, body string) Step {
	return Step{kind: kindHTTPStatus, status: status, body: body}
}

// Garbage answers 200 with a body that is not JSON.
func Garbage() Step { return Step{kind: kindGarbage} }

// Truncated answers 200 with JSON cut short: {"openid":"o
func Truncated() Step { return Step{kind: kindTruncated} }

// Slow waits d, or until the client gives up, then answers normally. The
// code is consumed when the request arrives (see the package doc).
func Slow(d time.Duration) Step { return Step{kind: kindSlow, d: d} }

// Hang never answers; the request ends only when the client gives up. It
// does not consume the code.
func Hang() Step { return Step{kind: kindHang} }

// Reset closes the connection without an answer, so the client sees a
// connection reset. It does not consume the code. Note that Go's
// http.Transport silently retries an idempotent request once when a reused
// keep-alive connection fails this way; the retry is a new call and takes
// the next step.
func Reset() Step { return Step{kind: kindReset} }

// Huge answers 200 with an n-byte body, streamed so that the fake never holds
// n bytes. The body is valid JSON without an openid when n is at least 13
// bytes, so only a client that limits the body size fails early.
func Huge(n int) Step { return Step{kind: kindHuge, n: max(n, 0)} }

// Drip answers normally, but sends the body one byte every d, like a
// connection that barely moves. Only a deadline on the whole exchange, not a
// per-read timeout, catches it.
func Drip(d time.Duration) Step { return Step{kind: kindDrip, d: d} }

// WrongContentType answers normally, but labels the JSON text/html.
func WrongContentType() Step { return Step{kind: kindWrongContentType} }
