package edge

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// errGetRefused answers GET and HEAD when codes may not travel in URLs.
// 405 with Allow: POST tells a client what to do instead; the body is the
// contract's bad_request, since the client must change its request.
var errGetRefused = protocol.Make(protocol.KindBadRequest, "codes in URLs are refused here (access logs keep URLs): POST the code in the body",
	protocol.Status(http.StatusMethodNotAllowed))

// refuseURLCode refuses, when refuse is set, every request that puts a
// code in the URL: GET and HEAD altogether, and a POST whose query string
// names one. The code is not read, so it appears in no log of ours.
func refuseURLCode(r *http.Request, refuse bool) *protocol.Error {
	if !refuse {
		return nil
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return errGetRefused
	}
	if strings.Contains(r.URL.RawQuery, "code") && r.URL.Query().Has("code") {
		return protocol.New(protocol.KindBadRequest, "codes in URLs are refused here (access logs keep URLs): send the code in the body only")
	}
	return nil
}

// recoverPanics keeps a panic in a handler from taking the process down
// with every request in flight: the client gets the contract's internal
// error without detail, the log gets the panic's value type and stack
// (never the request, which may hold a code), and the server carries on.
// http.ErrAbortHandler is net/http's own way to cut a reply short and
// passes through.
func recoverPanics(next http.Handler, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w := &startedWriter{ResponseWriter: rw}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			// The value itself may quote request data; its type and the
			// stack say where it came from.
			logger.Error("http handler panicked",
				slog.String("path", r.URL.Path), slog.String("panic_type", panicType(v)),
				slog.Bool("reply_started", w.started), slog.String("stack", string(debug.Stack())))
			if !w.started {
				writeError(w, protocol.New(protocol.KindInternal, "internal error"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// startedWriter notes whether the reply has begun, so that a recovered
// panic does not write a second one after it.
type startedWriter struct {
	http.ResponseWriter
	started bool
}

func (w *startedWriter) WriteHeader(status int) {
	w.started = true
	w.ResponseWriter.WriteHeader(status)
}

func (w *startedWriter) Write(b []byte) (int, error) {
	w.started = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *startedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// panicType names the type of a panic's value, such as runtime.Error.
func panicType(v any) string { return fmt.Sprintf("%T", v) }
