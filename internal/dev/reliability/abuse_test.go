package reliability_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// TestAbuse attacks an edge served as cmd/edge serves it (edge.Serve,
// with httpserver's limits) and checks, for each attack, that a
// well-behaved client keeps getting answers while it lasts, and that
// goroutines and heap come back near their baseline once it ends.
//
// Not parallel: it measures the whole process.
func TestAbuse(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	// Warnings only: the bed keeps its log in memory, and a flood of
	// debug lines would be the heap growth the test measures.
	b.Logger = slog.New(slog.NewJSONHandler(b.Logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b.StartWorker(b.WorkerConfig())
	const budget = 3 * time.Second
	base := serveEdge(t, edgeConn(b), edge.Config{Timeout: budget}, b.Logger)
	host := strings.TrimPrefix(base, "http://")

	// politeCheck makes a few ordinary requests while an attack runs.
	politeCheck := func(t *testing.T) {
		t.Helper()
		c := newClient(t, 2)
		defer c.CloseIdleConnections()
		for i := range 3 {
			code := uniq(fmt.Sprintf("polite%d", i))
			if r := get(c, base+"/v1/openid?code="+code); !r.ok(code) || r.took > budget {
				t.Errorf("a well-behaved client during the attack: %v", r)
			}
		}
	}
	politeCheck(t) // warm-up: connections, pools and lazily built state
	baseline := measure()

	t.Run("slowloris", func(t *testing.T) {
		// Protection: httpserver.ReadHeaderTimeout. Without it, a client
		// sending one header line now and then holds its connection and
		// goroutine for as long as it likes.
		const conns = 200
		var wg sync.WaitGroup
		cut := make(chan time.Duration, conns)
		stop := make(chan struct{})
		for range conns {
			conn, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatal(err)
			}
			opened := time.Now()
			wg.Go(func() { // dribbles a header line every 200ms
				defer conn.Close()
				fmt.Fprintf(conn, "GET /v1/openid?code=%s HTTP/1.1\r\nHost: %s\r\n", uniq("slow"), host)
				tick := time.NewTicker(200 * time.Millisecond)
				defer tick.Stop()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					if _, err := fmt.Fprintf(conn, "X-Pad-%d: y\r\n", i); err != nil {
						return
					}
				}
			})
			wg.Go(func() { // notices when the server hangs up
				conn.Read(make([]byte, 1)) // EOF, reset or a 408, all mean cut off
				cut <- time.Since(opened)
			})
		}
		politeCheck(t)
		timer := time.NewTimer(httpserver.ReadHeaderTimeout + 5*time.Second)
		defer timer.Stop()
		for range conns {
			select {
			case d := <-cut:
				if d < httpserver.ReadHeaderTimeout-100*time.Millisecond || d > httpserver.ReadHeaderTimeout+2*time.Second {
					t.Errorf("cut off after %v, ReadHeaderTimeout is %v", d, httpserver.ReadHeaderTimeout)
				}
			case <-timer.C:
				t.Fatalf("slowloris connections still open %v after ReadHeaderTimeout", 5*time.Second)
			}
		}
		close(stop)
		wg.Wait()
		settles(t, "after slowloris", baseline, 20, 8<<20)
	})

	t.Run("2000 connections held", func(t *testing.T) {
		// Protection: a goroutine per connection and nothing else: holding
		// connections costs the edge little, serves nobody, and ends
		// when the clients let go (or at ReadHeaderTimeout/IdleTimeout).
		// Both ends live in this process: 2 descriptors per connection.
		conns := 2000
		if limit := fdLimit(uint64(2*conns + 1024)); limit < uint64(2*conns+1024) {
			conns = int(limit-1024) / 2
			t.Logf("open-file limit %d: holding %d connections instead of 2000", limit, conns)
		}
		held := make([]net.Conn, 0, conns)
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for i := range conns {
			c, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			held = append(held, c)
			if i%2 == 1 {
				// Half complete one request and keep the connection
				// alive; half never send a byte.
				fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", host)
			}
		}
		for i := 1; i < len(held); i += 2 {
			resp, err := http.ReadResponse(bufio.NewReader(held[i]), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("held connection %d: %v %v", i, resp, err)
			}
			resp.Body.Close()
		}
		if now := measure(); now.goroutines < baseline.goroutines+conns*9/10 {
			t.Fatalf("goroutines %d with %d connections held (baseline %d): the connections are not held",
				now.goroutines, conns, baseline.goroutines)
		}
		politeCheck(t)
		for _, c := range held {
			c.Close()
		}
		held = held[:0]
		settles(t, "after 2000 connections", baseline, 20, 8<<20)
	})

	t.Run("oversized headers", func(t *testing.T) {
		// Protection: httpserver.MaxHeaderBytes; net/http answers 431.
		for name, header := range map[string]string{
			"one huge header": "X-Big: " + strings.Repeat("a", 4*httpserver.MaxHeaderBytes) + "\r\n",
			"many headers":    strings.Repeat("X-Many: aaaaaaaaaaaaaaaaaaaaaaaa\r\n", 4*httpserver.MaxHeaderBytes/32),
		} {
			resp := rawRequest(t, host, "GET /v1/openid?code=x HTTP/1.1\r\nHost: "+host+"\r\n"+header+"\r\n", "")
			if resp.status != http.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("%s: status %d, want 431", name, resp.status)
			}
		}
		politeCheck(t)
		settles(t, "after oversized headers", baseline, 20, 8<<20)
	})

	t.Run("oversized bodies", func(t *testing.T) {
		// Protection: the edge's body limit (EDGE_MAX_BODY: MaxBytesReader
		// and the bounded read in parseRequest), which stops reading at
		// the limit whatever the client sends. Without it the 8 MB body
		// would be read whole and refused as malformed (400), not 413.
		big := strings.Repeat("a", 8<<20)
		for name, req := range map[string]string{
			"declared length": "POST /v1/openid HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: text/plain\r\nContent-Length: " +
				fmt.Sprint(len(big)) + "\r\n\r\n",
			"chunked": "POST /v1/openid HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
				fmt.Sprintf("%x\r\n", len(big)),
		} {
			resp := rawRequest(t, host, req, big)
			if resp.status != http.StatusRequestEntityTooLarge || resp.kind != protocol.KindBadRequest {
				t.Errorf("%s: %d %q, want 413 bad_request", name, resp.status, resp.kind)
			}
		}
		politeCheck(t)
		settles(t, "after oversized bodies", baseline, 20, 8<<20)
	})

	t.Run("garbage methods and paths", func(t *testing.T) {
		// Protection: net/http's request parsing, the mux's routes and
		// the edge's method check. Every case is refused with a 4xx; none
		// reaches a worker or WeChat.
		calls := b.Fake.TotalCalls()
		for _, tc := range []struct {
			name, request string
			want          int // 0: any 4xx
		}{
			{"unknown method", "BREW /v1/openid?code=garbage1 HTTP/1.1\r\nHost: h\r\n\r\n", 405},
			{"DELETE", "DELETE /v1/openid?code=garbage2 HTTP/1.1\r\nHost: h\r\n\r\n", 405},
			{"control byte in method", "G\x01T /v1/openid?code=garbage3 HTTP/1.1\r\nHost: h\r\n\r\n", 400},
			{"very long method", strings.Repeat("X", 5000) + " /v1/openid?code=garbage4 HTTP/1.1\r\nHost: h\r\n\r\n", 0},
			{"unknown path", "GET /v2/anything HTTP/1.1\r\nHost: h\r\n\r\n", 404},
			{"NUL in path", "GET /v1/openid%00?code=garbage5 HTTP/1.1\r\nHost: h\r\n\r\n", 404},
			{"bad escape in query", "GET /v1/openid?code=%zz HTTP/1.1\r\nHost: h\r\n\r\n", 400},
			{"asterisk", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400},
			{"no Host", "GET /v1/openid?code=garbage6 HTTP/1.1\r\n\r\n", 400},
			{"TLS handshake", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400},
			{"long path", "GET /" + strings.Repeat("a", 8000) + " HTTP/1.1\r\nHost: h\r\n\r\n", 404},
		} {
			resp := rawRequest(t, host, tc.request, "")
			if (tc.want != 0 && resp.status != tc.want) || resp.status < 400 || resp.status > 499 {
				t.Errorf("%s: status %d, want %d (a 4xx)", tc.name, resp.status, tc.want)
			}
		}
		// Dot segments: the mux redirects to the clean path, whose handler
		// then refuses it; no handler ever sees the dirty path.
		if resp := rawRequest(t, host, "GET /v1/../../etc/passwd HTTP/1.1\r\nHost: h\r\n\r\n", ""); resp.status < 300 || resp.status > 499 {
			t.Errorf("dot segments: status %d, want a redirect or a 4xx", resp.status)
		}
		if got := b.Fake.TotalCalls(); got != calls {
			t.Errorf("garbage reached WeChat: %d calls", got-calls)
		}
		politeCheck(t)
		settles(t, "after garbage", baseline, 20, 8<<20)
	})
}

// rawResponse is what came back on a raw connection.
type rawResponse struct {
	status int
	kind   protocol.Kind
}

// rawRequest writes head on a fresh connection, then body (in the
// background, since the server may answer and hang up before reading it
// all), and reads the response.
func rawRequest(t *testing.T, host, head, body string) rawResponse {
	t.Helper()
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	if body != "" {
		go io.WriteString(conn, body) // fails once the server hangs up: fine
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no response to %.40q: %v", head, err)
	}
	defer resp.Body.Close()
	var eb protocol.ErrorBody
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	_ = json.Unmarshal(raw, &eb)
	return rawResponse{status: resp.StatusCode, kind: eb.Error}
}
