package reliability_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// slack is what an answer may take beyond its budget: scheduling on a
// loaded 2-core CI machine under -race, not waiting.
const slack = time.Second

// reply is one HTTP answer of the edge, as a mini-program sees it.
type reply struct {
	status     int
	retryAfter string
	res        protocol.Result
	body       protocol.ErrorBody
	raw        string
	took       time.Duration
	err        error // transport failure: no answer at all
}

func (r reply) String() string {
	if r.err != nil {
		return fmt.Sprintf("no answer after %v: %v", r.took, r.err)
	}
	return fmt.Sprintf("%d %s after %v", r.status, r.raw, r.took.Round(time.Millisecond))
}

// kind is the reply's error kind, or "ok".
func (r reply) kind() string {
	switch {
	case r.err != nil:
		return "no_answer"
	case r.status == http.StatusOK:
		return "ok"
	}
	return string(r.body.Error)
}

// ok reports whether r is a success carrying code's own openid.
func (r reply) ok(code string) bool {
	return r.err == nil && r.status == http.StatusOK && r.res.OpenID == fakewx.OpenID(testbed.App.AppID, code)
}

// newClient returns a client that keeps up to conns connections to the
// edge, closed when the test ends. The default transport keeps 2 idle
// connections per host: under concurrency every other request would dial
// anew and the test would measure TIME_WAIT, not the service.
func newClient(t testing.TB, conns int) *http.Client {
	tr := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     30 * time.Second,
	}
	t.Cleanup(tr.CloseIdleConnections)
	// The timeout only stops a broken test from hanging; every bound the
	// tests check is far below it. It counts time queued in the transport
	// too, which under 10,000 requests at once is most of it.
	return &http.Client{Transport: tr, Timeout: 120 * time.Second}
}

// get asks u and reads the answer. It never calls t, so it may run in
// any goroutine.
func get(c *http.Client, u string) reply {
	start := time.Now()
	resp, err := c.Get(u)
	if err != nil {
		return reply{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	r := reply{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), raw: string(raw), took: time.Since(start), err: err}
	if resp.StatusCode == http.StatusOK {
		if e := json.Unmarshal(raw, &r.res); e != nil && r.err == nil {
			r.err = fmt.Errorf("200 with an unreadable body: %w", e)
		}
	} else if e := json.Unmarshal(raw, &r.body); (e != nil || r.body.Error == "") && r.err == nil {
		r.err = fmt.Errorf("%d without the contract's error body", resp.StatusCode)
	}
	return r
}

// edgeConn connects an edge to the bed's NATS the way cmd/edge does:
// without a reconnect buffer, so that an outage answers 503 at once.
func edgeConn(b *testbed.Bed) *nats.Conn {
	return b.Connect("wxlogin-edge", nats.ReconnectBufSize(-1))
}

// serveEdge runs an edge through edge.Serve, as cmd/edge does, so that
// httpserver's real limits apply, on a loopback port; it returns the base
// URL once the edge answers, and stops it when the test ends.
func serveEdge(t testing.TB, nc *nats.Conn, cfg edge.Config, logger *slog.Logger) string {
	t.Helper()
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 4096
	}
	addr := testbed.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- edge.Serve(ctx, cfg, addr, nc, logger) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("edge: %v", err)
			}
		case <-time.After(cfg.Timeout + 5*time.Second):
			t.Error("edge did not stop within its grace period")
		}
	})
	base := "http://" + addr
	testbed.Eventually(t, 5*time.Second, "edge listening", func() bool {
		select {
		case err := <-done:
			t.Fatalf("edge stopped: %v", err)
		default:
		}
		return testbed.HTTPStatus(base+"/healthz") == http.StatusOK
	})
	return base
}

// uniq makes codes unique across tests and runs (the fake and the
// de-duplication store remember codes).
var uniqSeq atomic.Int64

func uniq(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano(), uniqSeq.Add(1))
}

// processLoad is what the process holds: goroutines, and heap in use
// after a collection.
type processLoad struct {
	goroutines int
	heap       uint64
}

func measure() processLoad {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return processLoad{goroutines: runtime.NumGoroutine(), heap: m.HeapAlloc}
}

// settles waits until the process is back near base: at most
// extraGoroutines more goroutines and extraHeap more heap. It polls, since
// connections and their goroutines wind down asynchronously after an
// attack.
func settles(t *testing.T, what string, base processLoad, extraGoroutines int, extraHeap uint64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		now := measure()
		if now.goroutines <= base.goroutines+extraGoroutines && now.heap <= base.heap+extraHeap {
			t.Logf("%s: goroutines %d (baseline %d), heap %.1f MB (baseline %.1f MB)",
				what, now.goroutines, base.goroutines, mb(now.heap), mb(base.heap))
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%s: goroutines %d (baseline %d), heap %.1f MB (baseline %.1f MB) after 15s\n%s",
				what, now.goroutines, base.goroutines, mb(now.heap), mb(base.heap), buf[:n])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }
