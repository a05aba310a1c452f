package fakewx

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"time"
)

// wait sleeps for the configured latency plus extra, or until ctx ends. It
// reports whether the caller should still answer.
func (s *Server) wait(ctx context.Context, extra time.Duration) bool {
	return sleep(ctx, time.Duration(s.latency.Load())+extra)
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// deliver writes a decided answer.
func (s *Server) deliver(w http.ResponseWriter, r *http.Request, a answer) {
	ctx := r.Context()
	var extra time.Duration
	if a.step.kind == kindSlow {
		extra = a.step.d
	}
	if !s.wait(ctx, extra) {
		return // the client is gone; nobody to answer
	}
	switch a.step.kind {
	case kindJSON, kindErrcode, kindSlow:
		writeBody(w, http.StatusOK, "text/plain", a.body())
	case kindWrongContentType:
		writeBody(w, http.StatusOK, "text/html; charset=utf-8", a.body())
	case kindDrip:
		drip(ctx, w, a.body(), a.step.d)
	case kindHTTPStatus:
		writeBody(w, a.step.status, http.DetectContentType([]byte(a.step.body)), []byte(a.step.body))
	case kindGarbage:
		writeBody(w, http.StatusOK, "text/plain", []byte(garbageBody))
	case kindTruncated:
		writeBody(w, http.StatusOK, "text/plain", []byte(truncatedBody))
	case kindHuge:
		huge(w, a.step.n)
	case kindHang:
		<-ctx.Done()
	case kindReset:
		reset(w)
	}
}

// body renders the JSON answer.
func (a *answer) body() []byte {
	b := make([]byte, 0, 160)
	if !a.success {
		return appendError(b, a.code)
	}
	var key [16]byte
	rand.Read(key[:]) // never fails (crypto/rand, Go 1.24+)
	b = append(b, `{"session_key":"`...)
	b = base64.StdEncoding.AppendEncode(b, key[:])
	b = append(b, `","openid":"`...)
	b = append(b, OpenID(a.appid, a.jscode)...)
	if a.app.UnionID {
		b = append(b, `","unionid":"`...)
		b = append(b, UnionID(a.appid, a.jscode)...)
	}
	return append(b, `"}`...)
}

// errmsgs are WeChat's messages for the errcodes the fake produces; none
// contains a request parameter, so nothing secret can leak through them.
var errmsgs = map[int]string{
	-1:    "system error",
	40002: "invalid grant_type",
	40013: "invalid appid",
	40029: "invalid code",
	40125: "invalid appsecret",
	40163: "code been used",
	40226: "high risk user, login blocked",
	41008: "missing code",
	45009: "reach max api daily quota limit",
	45011: "api minute-quota reach limit mustslower retry next minute",
}

func appendError(b []byte, code int) []byte {
	msg, ok := errmsgs[code]
	if !ok {
		msg = "unknown error"
	}
	b = append(b, `{"errcode":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"errmsg":"`...)
	b = append(b, msg...)
	b = append(b, ", rid: "...)
	b = appendRID(b)
	return append(b, `"}`...)
}

// appendRID appends a request id shaped like WeChat's: the unix time and two
// random words, each as eight hex digits.
func appendRID(b []byte) []byte {
	b = appendHex32(b, uint32(time.Now().Unix()))
	b = append(b, '-')
	b = appendHex32(b, mrand.Uint32())
	b = append(b, '-')
	return appendHex32(b, mrand.Uint32())
}

func appendHex32(b []byte, v uint32) []byte {
	const digits = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, digits[(v>>uint(shift))&0xf])
	}
	return b
}

func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) // the client may be gone; nothing to do about it
}

// drip writes body one byte every d, flushing each byte so the client
// really receives it slowly.
func drip(ctx context.Context, w http.ResponseWriter, body []byte, d time.Duration) {
	h := w.Header()
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	for i := range body {
		if i > 0 && !sleep(ctx, d) {
			return
		}
		if _, err := w.Write(body[i : i+1]); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// hugeChunk is the filler streamed by huge, shared so that a huge answer
// costs no allocation proportional to its size.
var hugeChunk = bytes.Repeat([]byte{'x'}, 32<<10)

// huge streams an n-byte body. When n allows, it is a valid JSON object
// without openid, {"errmsg":"xxx…"}, so that a client without a body size
// limit reads all of it and must still reject the answer.
func huge(w http.ResponseWriter, n int) {
	const head, tail = `{"errmsg":"`, `"}`
	h := w.Header()
	h.Set("Content-Type", "text/plain")
	h.Set("Content-Length", strconv.Itoa(n))
	w.WriteHeader(http.StatusOK)
	fill := n
	if n >= len(head)+len(tail) {
		if _, err := w.Write([]byte(head)); err != nil {
			return
		}
		fill = n - len(head) - len(tail)
	}
	for fill > 0 {
		c := min(fill, len(hugeChunk))
		if _, err := w.Write(hugeChunk[:c]); err != nil {
			return
		}
		fill -= c
	}
	if n >= len(head)+len(tail) {
		w.Write([]byte(tail))
	}
}

// reset drops the connection without an answer. Over HTTP/1 it hijacks the
// connection and closes it with SO_LINGER 0, so the client sees a TCP RST
// ("connection reset by peer") rather than a clean EOF. Where hijacking is
// impossible (HTTP/2), aborting the handler resets the stream instead.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // net/http aborts quietly on this value
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// garbageBody is what a misbehaving proxy or captive portal sends: a 200
// that is not JSON at all.
const garbageBody = "<html><head><title>Service Unavailable</title></head>" +
	"<body><p>The upstream server is temporarily unavailable.</p></body></html>\n"

// truncatedBody is a success cut short, as when a connection drops mid-body
// behind a proxy that still reports 200.
const truncatedBody = `{"openid":"o`

// badGateway is what WeChat's front proxies answer when the service behind
// them fails.
var badGateway = HTTPStatus(http.StatusBadGateway,
	"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n"+
		"<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"+
		"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
