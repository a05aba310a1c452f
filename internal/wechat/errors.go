package wechat

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// WeChat errcodes that code2Session answers with. Match on these, never on
// errmsg, which WeChat rewords freely.
const (
	ErrcodeBusy          = -1    // system busy: retry with backoff
	ErrcodeInvalidCode   = 40029 // malformed, expired, or from another appid
	ErrcodeCodeUsed      = 40163 // code already exchanged (maybe by a lost earlier attempt)
	ErrcodeUserBlocked   = 40226 // high-risk user, login blocked
	ErrcodeRateLimit     = 45011 // frequency limit ("api minute-quota reach limit")
	ErrcodeInvalidAppID  = 40013 // misconfiguration
	ErrcodeInvalidSecret = 40125 // misconfiguration
)

// verdict is how one errcode is reported. Kind's default status and retry
// hint (from protocol) apply unless retry is set.
type verdict struct {
	kind      protocol.Kind
	retry     protocol.Retry // overrides the kind's default when not empty
	temporary bool           // another upstream attempt may succeed
	misconfig bool           // this service's appid/secret is wrong: page someone
	message   string         // safe to show a client
}

// errcodes is the one errcode table. Codes not listed are terminal
// upstream errors (see errcodeError).
var errcodes = map[int]verdict{
	ErrcodeBusy: {
		kind: protocol.KindUpstream, retry: protocol.RetrySameCode, temporary: true,
		message: "WeChat is busy",
	},
	ErrcodeInvalidCode: {
		kind:    protocol.KindInvalidCode,
		message: "the login code is invalid or expired; call wx.login() again",
	},
	ErrcodeCodeUsed: {
		kind:    protocol.KindCodeUsed,
		message: "the login code was already used; call wx.login() again",
	},
	ErrcodeUserBlocked: {
		kind:    protocol.KindUserBlocked,
		message: "WeChat blocked this user's login",
	},
	ErrcodeRateLimit: {
		// Temporary: the caller may retry after a backoff, within its budget.
		kind: protocol.KindRateLimited, temporary: true,
		message: "WeChat's rate limit was reached; retry later",
	},
	ErrcodeInvalidAppID: {
		kind: protocol.KindUpstream, retry: protocol.RetryNo, misconfig: true,
		message: "WeChat rejected this service's appid (service misconfigured)",
	},
	ErrcodeInvalidSecret: {
		kind: protocol.KindUpstream, retry: protocol.RetryNo, misconfig: true,
		message: "WeChat rejected this service's appid/secret (service misconfigured)",
	},
}

// unknownErrcode is the verdict for errcodes not in the table: retrying
// blindly an answer we do not understand would only burn quota.
var unknownErrcode = verdict{
	kind: protocol.KindUpstream, retry: protocol.RetryNo,
	message: "WeChat refused the login",
}

// errMisconfigured marks errors that mean this service is set up wrong.
// It is reachable with errors.Is through the Cause; see IsMisconfiguration.
var errMisconfigured = errors.New("wechat: appid or secret misconfigured")

// IsMisconfiguration reports whether err means this service's WeChat appid
// or secret is wrong or missing (errcodes 40013 and 40125): no retry or new
// code will help, so the caller should log it at error level and alert.
func IsMisconfiguration(err error) bool { return errors.Is(err, errMisconfigured) }

// RID returns WeChat's request id carried by err, or "". WeChat support asks
// for it; log it as its own field.
func RID(err error) string {
	var c *cause
	if errors.As(err, &c) {
		return c.rid
	}
	return ""
}

// cause is the Cause of every error this package returns. Its text has
// been scrubbed of the secret and the code when it was built, so it can go
// to any log; is optionally names a sentinel for errors.Is
// (context.Canceled, a syscall.Errno, ...) that carries no request data.
type cause struct {
	text string
	rid  string
	is   error
}

func newCause(text, rid string, is error) *cause { return &cause{text: text, rid: rid, is: is} }

func (c *cause) Error() string { return c.text }
func (c *cause) Unwrap() error { return c.is }

// maxCauseText bounds text taken from WeChat or from the network.
const maxCauseText = 200

// maxRID bounds a rid; real ones are about 30 characters.
const maxRID = 64

// redactedMark replaces secrets in cause texts.
const redactedMark = "[redacted]"

// scrubbed builds a cause from text, which may quote the request, after
// removing the secret and the code (raw and URL-encoded), control
// characters (log injection) and invalid UTF-8, and truncating it.
func scrubbed(text, secret, code, rid string) *cause {
	return newCause(scrub(text, secret, code), rid, nil)
}

func scrub(s, secret, code string) string {
	// Redact before truncating, or a secret cut in half would survive.
	for _, x := range [...]string{secret, code} {
		if x == "" {
			continue
		}
		s = strings.ReplaceAll(s, x, redactedMark)
		if q := url.QueryEscape(x); q != x {
			s = strings.ReplaceAll(s, q, redactedMark)
		}
		if p := url.PathEscape(x); p != x {
			s = strings.ReplaceAll(s, p, redactedMark)
		}
	}
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r // invalid UTF-8 arrives as RuneError and leaves as U+FFFD
	}, s)
	return truncate(s, maxCauseText)
}

// truncate cuts s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// splitRID splits WeChat's errmsg ("invalid code, rid: 6654a1b2-...") into
// its text and its rid. A rid that is not a short printable token is
// dropped rather than trusted, and so is one that holds the secret or the
// code (an upstream echoing the request): the rid is logged as it is, and
// the text left with it is scrubbed by the caller.
func splitRID(errmsg, secret, code string) (text, rid string) {
	i := strings.LastIndex(errmsg, "rid:")
	if i < 0 {
		return errmsg, ""
	}
	rid = strings.TrimSpace(errmsg[i+len("rid:"):])
	text = strings.TrimRight(errmsg[:i], " ,;")
	if !protocol.ValidToken(rid) || len(rid) > maxRID || scrub(rid, secret, code) != rid {
		return errmsg, ""
	}
	return text, rid
}

// newError builds the error for a verdict.
func newError(v verdict, errcode int, c *cause, opts ...protocol.Option) *protocol.Error {
	opts = append(opts, protocol.Temporary(v.temporary), protocol.Errcode(errcode))
	if v.retry != "" {
		opts = append(opts, protocol.RetryHint(v.retry))
	}
	if c != nil { // a nil *cause would be a non-nil error
		opts = append(opts, protocol.Cause(c))
	}
	return protocol.Make(v.kind, v.message, opts...)
}

// errcodeError classifies a non-zero errcode. The cause keeps errmsg
// (scrubbed and truncated) and its rid, which is kept whole even when the
// text before it is cut.
func errcodeError(errcode int, errmsg, secret, code string) *protocol.Error {
	v, ok := errcodes[errcode]
	if !ok {
		v = unknownErrcode
	}
	text, rid := splitRID(errmsg, secret, code)
	s := "errmsg: " + scrub(text, secret, code)
	if rid != "" {
		s += ", rid: " + rid
	}
	var is error
	if v.misconfig {
		is = errMisconfigured
	}
	return newError(v, errcode, newCause(s, rid, is))
}

// misconfigured reports a missing appid or secret before any call is made.
func misconfigured(message string) *protocol.Error {
	return newError(verdict{kind: protocol.KindUpstream, retry: protocol.RetryNo, message: message},
		0, newCause("appid or secret is empty", "", errMisconfigured))
}

// garbage reports an answer we cannot use. It is temporary: a broken
// answer is more often a glitch on the way than WeChat's considered reply.
func garbage(message string, c *cause) *protocol.Error {
	return newError(verdict{kind: protocol.KindUpstream, retry: protocol.RetrySameCode, temporary: true, message: message}, 0, c)
}

// statusError classifies an answer whose HTTP status is not 200. The body
// is not quoted: a gateway's error page may echo the request URL.
func statusError(resp *http.Response, secret, code string) *protocol.Error {
	st := resp.StatusCode
	message := "WeChat answered with HTTP " + strconv.Itoa(st)
	c := scrubbed(resp.Status+", Content-Type "+resp.Header.Get("Content-Type"), secret, code, "")
	switch {
	case st == http.StatusTooManyRequests:
		return newError(verdict{kind: protocol.KindRateLimited, temporary: true, message: message}, 0, c,
			protocol.RetryAfter(retryAfter(resp.Header.Get("Retry-After"))))
	case st >= 500:
		return newError(verdict{kind: protocol.KindUpstream, retry: protocol.RetrySameCode, temporary: true, message: message}, 0, c,
			protocol.RetryAfter(retryAfter(resp.Header.Get("Retry-After"))))
	default:
		// 3xx (redirects are not followed), 4xx: retrying will not change
		// what a misrouted or refused request gets.
		return newError(verdict{kind: protocol.KindUpstream, retry: protocol.RetryNo, message: message}, 0, c)
	}
}

// maxRetryAfter caps a server's Retry-After, which we pass on to clients.
const maxRetryAfter = 5 * time.Minute

// retryAfter parses a Retry-After in seconds (the HTTP-date form is not
// worth supporting for a JSON API); 0 when absent or unusable.
func retryAfter(h string) time.Duration {
	if h == "" {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(h))
	if err != nil || n <= 0 {
		return 0
	}
	if n >= int(maxRetryAfter/time.Second) { // also keeps the product below from overflowing
		return maxRetryAfter
	}
	return time.Duration(n) * time.Second
}

// transportError classifies a failure to send the request or to read the
// answer. All but a failed certificate check are temporary: the attempt
// did not get an answer, so another one may. *url.Error is unwrapped
// because its text quotes the full URL, secret included; the rest is
// scrubbed anyway.
func transportError(ctx context.Context, err error, secret, code string) *protocol.Error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var message string
	var is error
	var ne net.Error
	var oe *net.OpError
	var errno syscall.Errno
	var cve *tls.CertificateVerificationError
	temporary := true
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		// The caller gave up; say so, so nobody blames WeChat for it.
		message, is = "the request was cancelled before WeChat answered", context.Canceled
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		message, is = "WeChat did not answer in time", context.DeadlineExceeded
	case errors.As(err, &ne) && ne.Timeout():
		message = "WeChat did not answer in time"
		if errors.As(err, &oe) && oe.Op == "dial" {
			message = "could not connect to WeChat in time"
		}
		is = errTimeout
	case errors.As(err, &cve):
		// The request was never sent, so the code is still good, but
		// another attempt within this request would meet the same
		// certificate: the roots (WX_CA_FILE) or the path to WeChat (an
		// intercepting proxy) need fixing, not a retry.
		message, temporary = "could not verify WeChat's TLS certificate", false
	case errors.As(err, &oe) && oe.Op == "dial":
		message = "could not connect to WeChat"
	case errors.Is(err, io.ErrUnexpectedEOF):
		message, is = "WeChat's answer was cut short", io.ErrUnexpectedEOF
	default:
		message = "the connection to WeChat failed"
	}
	if is == nil && errors.As(err, &errno) {
		is = errno // a number: safe to expose to errors.Is
	}
	c := scrubbed(err.Error(), secret, code, "")
	c.is = is
	return newError(verdict{kind: protocol.KindUpstream, retry: protocol.RetrySameCode, temporary: temporary, message: message}, 0, c)
}

// errTimeout is the sentinel for transport timeouts that are not ctx's.
var errTimeout = timeoutError{}

type timeoutError struct{}

func (timeoutError) Error() string { return "timeout" }
func (timeoutError) Timeout() bool { return true }
