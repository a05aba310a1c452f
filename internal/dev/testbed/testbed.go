// Package testbed gives tests a real wxlogin stack: an embedded NATS
// server, the fake WeChat over real HTTP on 127.0.0.1, and workers and
// edges built by package stack, as the binaries build theirs, each torn
// down when the test ends. Nothing is mocked.
package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/natstest"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/natsconn"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/stack"
)

// App is the app every bed serves unless told otherwise.
var App = fakewx.App{AppID: "wxtest0000000000a1", Secret: "SECRET-a1-never-logged", UnionID: true}

// Bed is one stack. Fields are ready to use after New.
type Bed struct {
	T        testing.TB
	NATS     *server.Server
	Fake     *fakewx.Server
	Upstream *httptest.Server // serves Fake unless Options.Upstream replaced it
	Logs     *Buffer          // every component logs here, at debug level
	Logger   *slog.Logger

	st *stack.Stack // see Stack
}

// Options shape a bed.
type Options struct {
	Apps     []fakewx.App // default: App
	NoJS     bool         // a plain NATS server without JetStream
	Upstream *httptest.Server
	OnCall   func(fakewx.Call) // sees every call the fake upstream gets
}

// New starts NATS and the fake upstream.
func New(t testing.TB, o Options) *Bed {
	t.Helper()
	return newBed(t, o, natstest.Start(t, o.NoJS))
}

// newBed is a bed on the NATS server ns: logs, the fake and its server.
func newBed(t testing.TB, o Options, ns *server.Server) *Bed {
	if len(o.Apps) == 0 {
		o.Apps = []fakewx.App{App}
	}
	b := &Bed{T: t, Logs: &Buffer{}, NATS: ns}
	b.Logger = slog.New(slog.NewJSONHandler(b.Logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b.Fake = fakewx.New(fakewx.Config{Apps: o.Apps, OnCall: o.OnCall})
	b.Upstream = o.Upstream
	if b.Upstream == nil {
		b.Upstream = httptest.NewServer(b.Fake)
		t.Cleanup(b.Upstream.Close)
	}
	return b
}

// Stack is the stack that runs the bed's workers and edges: on NATS,
// calling Upstream, logging to Logger. It starts on first use, so that a
// test may replace Logger or Upstream before it starts a worker or edge.
func (b *Bed) Stack() *stack.Stack {
	b.T.Helper()
	if b.st == nil {
		st, err := stack.Start(context.Background(), stack.Options{Logger: b.Logger, NATSURL: b.NATS.ClientURL(), Upstream: b.Upstream.URL})
		if err != nil {
			b.T.Fatal(err)
		}
		b.T.Cleanup(func() { st.Stop() })
		b.st = st
	}
	return b.st
}

// WorkerConfig is the config of a worker serving the bed's apps.
func (b *Bed) WorkerConfig(apps ...fakewx.App) exchange.Config {
	if len(apps) == 0 {
		apps = []fakewx.App{App}
	}
	m := map[string]string{}
	for _, a := range apps {
		m[a.AppID] = a.Secret
	}
	return exchange.Config{
		Apps: m, HTTPTimeout: 2 * time.Second, MaxAttempts: 3, Concurrency: 256,
		RequestTimeout: 5 * time.Second, BackoffBase: 10 * time.Millisecond,
	}
}

// Worker is a running worker; Stop shuts it down gracefully (idempotent).
type Worker = stack.Worker

// StartWorker runs a worker with cfg on its own connection.
func (b *Bed) StartWorker(cfg exchange.Config) *Worker {
	b.T.Helper()
	return b.startWorkerOn(b.Connect("worker"), cfg)
}

// startWorkerOn runs a worker with cfg on nc, stopped when the test ends.
func (b *Bed) startWorkerOn(nc *nats.Conn, cfg exchange.Config) *Worker {
	b.T.Helper()
	w, err := b.Stack().StartWorker(cfg, nc)
	if err != nil {
		b.T.Fatal(err)
	}
	b.T.Cleanup(func() { w.Stop() })
	return w
}

// Connect opens a connection to the bed's NATS server the way the
// binaries do, closed when the test ends.
func (b *Bed) Connect(name string, extra ...nats.Option) *nats.Conn {
	b.T.Helper()
	opts := append(natsconn.Resilient(name, b.Logger), extra...)
	nc, err := nats.Connect(b.NATS.ClientURL(), opts...)
	if err != nil {
		b.T.Fatal(err)
	}
	b.T.Cleanup(nc.Close)
	return nc
}

// StartEdge serves an edge over real HTTP on 127.0.0.1, as the binaries
// do, and returns its URL.
func (b *Bed) StartEdge(timeout time.Duration) string {
	b.T.Helper()
	return b.startEdgeOn(b.Connect("edge", nats.ReconnectBufSize(-1)), timeout, edge.ProbeOptions{})
}

// startEdgeOn serves an edge on nc, stopped when the test ends.
func (b *Bed) startEdgeOn(nc *nats.Conn, timeout time.Duration, probe edge.ProbeOptions) string {
	b.T.Helper()
	e, err := b.Stack().StartEdge(stack.EdgeOptions{
		Addr: "127.0.0.1:0", Config: edge.Config{Timeout: timeout, MaxBody: 4096}, Probe: probe,
	}, nc)
	if err != nil {
		b.T.Fatal(err)
	}
	b.T.Cleanup(func() { e.Stop() })
	return e.URL
}

// Request asks the pool over NATS, as another service would.
func (b *Bed) Request(nc *nats.Conn, req protocol.Request, timeout time.Duration) (protocol.Result, *protocol.Error) {
	b.T.Helper()
	data, _ := json.Marshal(req)
	msg := nats.NewMsg(protocol.Subject(protocol.DefaultSubjectPrefix))
	msg.Data = data
	msg.Header.Set(protocol.HeaderTimeout, strconv.FormatInt(timeout.Milliseconds(), 10))
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Second)
	defer cancel()
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return protocol.Result{}, protocol.Wrap(err, protocol.KindUnavailable, "request failed")
	}
	return protocol.DecodeReply(reply)
}

// Eventually polls cond until it holds or d passes.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Buffer is a concurrency-safe log sink.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago, for binaries that must be told their address up front.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// HTTPStatus is the status of GET u, or 0 when nothing answers.
func HTTPStatus(u string) int {
	resp, err := http.Get(u)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
