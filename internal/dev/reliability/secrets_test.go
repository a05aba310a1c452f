package reliability_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// Canaries: every code carries codeMark, so a raw code anywhere is found
// by one substring search; the upstream's session_key is sessionKey.
const (
	codeMark    = "CODECANARY"
	sessionKey  = "SESSIONKEY-CANARY-8f7e6d5c4b3a=="
	wrongSecret = "WRONG-SECRET-CANARY-5f4e"
)

// canaryUpstream is WeChat at its most careless: a success carries the
// canary session_key, and codes starting with "echo" get errors that
// quote the request (secret and code included) in the errmsg, in the rid
// and in an HTML error page. Everything else goes to the faithful fake.
func canaryUpstream(t *testing.T) *httptest.Server {
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{testbed.App}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		code := q.Get("js_code")
		echo := fmt.Sprintf("js_code=%s secret=%s url=%s", code, q.Get("secret"), r.URL.String())
		switch {
		case strings.HasPrefix(code, "ok-"):
			fmt.Fprintf(w, `{"openid":%q,"session_key":%q}`, fakewx.OpenID(q.Get("appid"), code), sessionKey)
		case strings.HasPrefix(code, "echo-invalid-"):
			b, _ := json.Marshal(map[string]any{"errcode": 40029, "errmsg": "invalid code " + echo + ", rid: " + code})
			w.Write(b)
		case strings.HasPrefix(code, "echo-busy-"):
			b, _ := json.Marshal(map[string]any{"errcode": -1, "errmsg": "system error " + echo + ", rid: " + q.Get("secret")})
			w.Write(b)
		case strings.HasPrefix(code, "echo-502-"):
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "<html><body>502 for %s</body></html>", echo)
		case strings.HasPrefix(code, "echo-garbage-"):
			fmt.Fprintf(w, "<html>%s session_key=%s</html>", echo, sessionKey)
		default:
			fake.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// exchangeCase is one path through the service, asked over HTTP and
// over NATS.
type exchangeCase struct {
	name, appid, code string
	subject           string // NATS_SUBJECT_PREFIX of the pool to ask
	dedup             bool   // HTTP and NATS send the same code
}

func secretCases() []exchangeCase {
	c := func(name, code string) exchangeCase {
		return exchangeCase{name: name, code: code + "-" + codeMark, subject: "wxlogin"}
	}
	dup := c("the same code twice (de-duplicated)", "ok-0")
	dup.dedup = true
	cases := []exchangeCase{
		dup,
		c("success", "ok-1"),
		c("invalid code, echoed", "echo-invalid-2"),
		c("busy, echoed, retried", "echo-busy-3"),
		c("502 page, echoed", "echo-502-4"),
		c("garbage with the session_key", "echo-garbage-5"),
		c("blocked", "fx-blocked-6"),
		c("frequency limit", "fx-limit99-7"),
		c("hang", "fx-hang-8"),
		c("truncated", "fx-garbage99-9"),
		c("code with a space", "bad 10"),
		c("code too long", strings.Repeat("x", protocol.MaxTokenLen)+"-11"),
		{name: "unknown app", appid: "wxnotours000000000", code: "ok-12-" + codeMark, subject: "wxlogin"},
		{name: "misconfigured secret", code: "plain-13-" + codeMark, subject: "misconf"},
		{name: "no worker", code: "ok-14-" + codeMark, subject: "nobody"},
	}
	return cases
}

// TestSecretsNeverLeave: at every log level and in both log formats, over
// HTTP and over NATS, on success and on every error path, no log line and
// no reply (body or header) holds an AppSecret, the session_key or a raw
// code, even when WeChat echoes all three back.
//
// Protections: the code is logged only as logging.CodeHash; the worker
// never puts the session_key in a reply; wechat scrubs every error cause
// and rid of the secret and code and never keeps *url.Error; error
// messages sent to clients never quote the request.
func TestSecretsNeverLeave(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"json", "text"} {
		for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
			t.Run(format+"/"+level.String(), func(t *testing.T) {
				t.Parallel()
				checkSecrets(t, format, level)
			})
		}
	}
}

func checkSecrets(t *testing.T, format string, level slog.Level) {
	b := testbed.New(t, testbed.Options{Upstream: canaryUpstream(t)})
	b.Logs = &testbed.Buffer{}
	b.Logger = logging.New(b.Logs, level, format)
	cfg := b.WorkerConfig()
	cfg.HTTPTimeout = 300 * time.Millisecond
	b.StartWorker(cfg)
	misconf := b.WorkerConfig()
	misconf.SubjectPrefix = "misconf"
	misconf.Apps = map[string]string{testbed.App.AppID: wrongSecret}
	b.StartWorker(misconf)

	const budget = 800 * time.Millisecond
	edges := map[string]string{}
	for _, subject := range []string{"wxlogin", "misconf", "nobody"} {
		edges[subject] = serveEdge(t, edgeConn(b), edge.Config{Timeout: budget, SubjectPrefix: subject}, b.Logger)
	}
	c := newClient(t, 8)
	nc := b.Connect("client")

	var mu sync.Mutex
	var replies strings.Builder
	recorded := 0
	record := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(&replies, format+"\n", args...)
		recorded++
	}
	var wg sync.WaitGroup
	for _, tc := range secretCases() {
		// Each transport gets its own code, so that each runs every
		// path itself rather than getting the other's stored answer.
		httpCode, natsCode := tc.code+"-h", tc.code+"-n"
		if tc.dedup {
			httpCode, natsCode = tc.code, tc.code
		}
		wg.Go(func() {
			q := url.Values{"code": {httpCode}}
			if tc.appid != "" {
				q.Set("appid", tc.appid)
			}
			resp, err := c.Get(edges[tc.subject] + "/v1/openid?" + q.Encode())
			if err != nil {
				record("%s: HTTP: %v", tc.name, err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			record("%s: HTTP %d %v %s", tc.name, resp.StatusCode, resp.Header, body)
		})
		wg.Go(func() {
			data, _ := json.Marshal(protocol.Request{AppID: tc.appid, Code: natsCode})
			msg := nats.NewMsg(protocol.Subject(tc.subject))
			msg.Data = data
			msg.Header.Set(protocol.HeaderTimeout, strconv.FormatInt(budget.Milliseconds(), 10))
			reply, err := nc.RequestMsg(msg, budget+slack)
			if err != nil {
				record("%s: NATS: %v", tc.name, err)
				return
			}
			record("%s: NATS %v %s", tc.name, reply.Header, reply.Data)
		})
	}
	wg.Wait()

	// Every worker call has ended and logged by now: replies are sent
	// after the log line, and the misconfigured worker answers at once.
	logs := b.Logs.String()
	secrets := []string{
		testbed.App.Secret, url.QueryEscape(testbed.App.Secret), "never-logged",
		wrongSecret, sessionKey, "SESSIONKEY-CANARY", codeMark,
	}
	for what, text := range map[string]string{"logs": logs, "replies": replies.String()} {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s hold %q:\n%s", what, s, text)
			}
		}
	}
	// Prove the search looked at something: the error-level line of the
	// misconfiguration is written at every level, more below it.
	if !strings.Contains(logs, "exchange") {
		t.Fatalf("no exchange line was logged at %s: the check proves nothing\n%s", level, logs)
	}
	if !strings.Contains(replies.String(), "openid") || recorded != 2*len(secretCases()) {
		t.Fatalf("replies missing:\n%s", replies.String())
	}
}
