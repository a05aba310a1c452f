package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/natsconn"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/version"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

// benchApp is the one app every component serves.
var benchApp = fakewx.App{AppID: "wxbench00000000001", Secret: "bench-secret-not-real", UnionID: true}

// Production defaults (config.Edge and config.Worker), repeated here
// rather than read from the environment so that a stray variable cannot
// change what the benchmark measures.
const (
	edgeTimeout        = 5 * time.Second
	edgeMaxBody        = 4096
	defaultConcurrency = 1024
)

// workerConfig is a worker with the production defaults serving benchApp,
// with de-duplication on or off.
func workerConfig(concurrency int, dedup bool) exchange.Config {
	return exchange.Config{
		Apps:           map[string]string{benchApp.AppID: benchApp.Secret},
		SubjectPrefix:  protocol.DefaultSubjectPrefix,
		HTTPTimeout:    2 * time.Second,
		MaxAttempts:    3,
		Concurrency:    concurrency,
		RequestTimeout: 5 * time.Second,
		ResultTTL:      5 * time.Minute,
		ClaimTTL:       3 * time.Second,
		KVReplicas:     1,
		// A worker on a JetStream-enabled connection de-duplicates
		// unless told not to.
		NoDedup: !dedup,
	}
}

// as runs f with the pprof label component=name, which every goroutine
// that f starts inherits (connections, their read loops, exchanges). A CPU
// profile then tells the load generator, NATS server, fake WeChat, edge,
// workers and baseline apart though they share one process: go tool
// pprof -tags, or -tagfocus component=edge.
func as(name string, f func()) {
	pprof.Do(context.Background(), pprof.Labels("component", name), func(context.Context) { f() })
}

// served is an http.Server on a loopback port of its own, run the way the
// binaries run theirs (internal/httpserver: the same timeouts).
type served struct {
	URL    string
	srv    *http.Server
	cancel context.CancelFunc
	done   chan error
}

func serve(h http.Handler, writeTimeout time.Duration, logger *slog.Logger, name string) (*served, error) {
	return serveWith(httpserver.New(h, writeTimeout, logger), logger, name)
}

// serveWith serves srv, which the caller may have adjusted: before it
// serves, never after.
func serveWith(srv *http.Server, logger *slog.Logger, name string) (*served, error) {
	return serveOver(srv, nil, logger, name)
}

// serveOver is serveWith over HTTPS with cert (HTTP/2 offered, as
// cmd/fakewx serves with FAKEWX_TLS), or over plain HTTP if cert is nil.
func serveOver(srv *http.Server, cert *fakewx.TLSCert, logger *slog.Logger, name string) (*served, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for %s: %w", name, err)
	}
	url := "http://" + ln.Addr().String()
	if cert != nil {
		ln, url = cert.Listener(ln), "https://"+ln.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{URL: url, srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- httpserver.Serve(ctx, srv, ln, time.Second, logger.With("server", name)) }()
	return s, nil
}

// close stops the server; requests still running (a held upstream answer)
// are cut off rather than waited for.
func (s *served) close() {
	s.cancel()
	<-s.done
	s.srv.Close()
}

// upstream is the fake WeChat on a real listener.
type upstream struct {
	*served
	fake  *fakewx.Server
	conns atomic.Int64 // connections accepted: pool churn shows here
	// Over TLS only: the open connections that carry calls (HTTP/2: that got the client's
	// preface), and the connections closed. An HTTP/2 client that finds
	// its connections at their stream limit dials once per call waiting,
	// keeps one new connection and closes the others before their first
	// frame, so conns counts dials and used the connections kept.
	used   atomic.Int64
	closed atomic.Int64
}

// settled reports whether every connection still open over TLS carried
// calls: the spare ones an HTTP/2 client dialled have been closed, so the
// client's memory no longer holds them.
func (u *upstream) settled() bool {
	return u.conns.Load()-u.closed.Load() == u.used.Load()
}

// startUpstream serves the fake over plain HTTP (HTTP/1.1), or over HTTPS
// with cert (HTTP/2 offered) if cert is not nil.
func startUpstream(latency time.Duration, cert *fakewx.TLSCert, logger *slog.Logger) (*upstream, error) {
	u := &upstream{fake: fakewx.New(fakewx.Config{
		Apps:    []fakewx.App{benchApp},
		Latency: latency,
		// Codes are never reused, so the fake need not remember them for
		// WeChat's five minutes; a short memory keeps its heap, and the
		// GC work it causes in this process, small and steady.
		CodeTTL: 2 * time.Second,
	})}
	srv := httpserver.New(u.fake, 5*time.Minute, logger)
	srv.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			u.conns.Add(1)
		}
	}
	if cert != nil {
		var active sync.Map // net.Conn → struct{}
		srv.ConnState = func(c net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				u.conns.Add(1)
			case http.StateActive: // HTTP/2: once the client's preface is in
				if _, seen := active.LoadOrStore(c, struct{}{}); !seen {
					u.used.Add(1)
				}
			case http.StateClosed, http.StateHijacked:
				u.closed.Add(1)
				if _, was := active.LoadAndDelete(c); was {
					u.used.Add(-1) // no longer carries calls
				}
			}
		}
	}
	var s *served
	var err error
	as("fakewx", func() { s, err = serveOver(srv, cert, logger, "fakewx") })
	if err != nil {
		return nil, err
	}
	u.served = s
	return u, nil
}

// stack is one scenario's infrastructure: a NATS server with JetStream in
// a temporary store, the fake WeChat, and whatever runs on them. A fresh
// stack per scenario keeps one scenario's JetStream state and idle
// connections out of the next one's figures.
type stack struct {
	log      *slog.Logger
	nats     natsServer
	storeDir string
	up       *upstream
	closers  []func()
}

func newStack(latency time.Duration, e *env) (*stack, error) {
	return newStackOver(latency, nil, e)
}

// newStackOver is newStack with the fake WeChat served over HTTPS with
// cert, or over plain HTTP if cert is nil. The NATS server runs in this
// process, or in a child process with Options.NATSChild (natsProc).
func newStackOver(latency time.Duration, cert *fakewx.TLSCert, e *env) (*stack, error) {
	dir, err := os.MkdirTemp("", "wxbench-nats-")
	if err != nil {
		return nil, fmt.Errorf("making a JetStream store dir: %w", err)
	}
	s := &stack{log: e.log, storeDir: dir}
	if e.opts.NATSChild {
		var p *natsProc
		if p, err = startNATSProc(dir, e.opts.LogLevel, e.stderr); err == nil {
			s.nats = p
		}
	} else {
		as("nats-server", func() {
			var ns *server.Server
			ns, err = startNATS(dir, e.log)
			if err == nil {
				s.nats = inProcessNATS{ns}
			}
		})
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if s.up, err = startUpstream(latency, cert, e.log); err != nil {
		s.close()
		return nil, fmt.Errorf("starting the fake WeChat: %w", err)
	}
	return s, nil
}

// profileNATS profiles a NATS server process's CPU into path until stop
// is called. A server in this process is in this process's profile.
func (s *stack) profileNATS(path string) (stop func(), err error) {
	p, ok := s.nats.(*natsProc)
	if !ok {
		return func() {}, nil
	}
	if err := p.profile(path); err != nil {
		return nil, err
	}
	return func() {
		if err := p.profile(""); err != nil {
			s.log.Warn("stopping the NATS server's profile", "error", err)
		}
	}, nil
}

// close stops everything started on the stack, newest first.
func (s *stack) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	if s.up != nil {
		s.up.close()
	}
	s.nats.Shutdown()
	os.RemoveAll(s.storeDir)
}

// connect opens a TCP connection to the stack's NATS server the way the
// binaries do: edge and workers are separate processes in production, so
// they talk over the network, not in-process.
func (s *stack) connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(s.nats.ClientURL(), append(natsconn.Resilient(name, s.log), extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connecting %s to nats: %w", name, err)
	}
	s.closers = append(s.closers, nc.Close)
	return nc, nil
}

// startWorker starts a worker on a connection of its own, as cmd/worker
// does. Stop it with its Shutdown.
func (s *stack) startWorker(cfg exchange.Config) (w *exchange.Worker, err error) {
	as("worker", func() { w, err = s.startWorkerHere(cfg) })
	return w, err
}

func (s *stack) startWorkerHere(cfg exchange.Config) (*exchange.Worker, error) {
	// The pool sized as exchange.Serve sizes it in production.
	client, err := wechat.New(s.up.URL, wechat.IdleConns(cfg.Concurrency))
	if err != nil {
		return nil, err
	}
	w, err := exchange.New(cfg, client, s.log)
	if err != nil {
		return nil, err
	}
	nc, err := s.connect("wxbench-worker")
	if err != nil {
		return nil, err
	}
	if err := w.Start(nc, version.Version()); err != nil {
		return nil, fmt.Errorf("starting a worker: %w", err)
	}
	return w, nil
}

// startWorkers starts n workers; stop stops them all.
func (s *stack) startWorkers(n int, cfg exchange.Config) (stop func(), err error) {
	var ws []*exchange.Worker
	stop = func() {
		for _, w := range ws {
			if err := w.Shutdown(); err != nil {
				s.log.Warn("worker shutdown", "error", err)
			}
		}
	}
	for range n {
		w, err := s.startWorker(cfg)
		if err != nil {
			stop()
			return nil, err
		}
		ws = append(ws, w)
	}
	return stop, nil
}

// startEdge serves the edge over real HTTP, as cmd/edge does.
func (s *stack) startEdge() (url string, err error) {
	as("edge", func() { url, err = s.startEdgeHere() })
	return url, err
}

func (s *stack) startEdgeHere() (string, error) {
	nc, err := s.connect("wxbench-edge", nats.ReconnectBufSize(-1))
	if err != nil {
		return "", err
	}
	h := edge.NewServer(edge.Config{Timeout: edgeTimeout, MaxBody: edgeMaxBody}, nc, s.log)
	srv, err := serve(h, edgeTimeout+5*time.Second, s.log, "edge")
	if err != nil {
		return "", err
	}
	s.closers = append(s.closers, srv.close)
	return srv.URL, nil
}

// startBaseline serves the direct handler over real HTTP.
func (s *stack) startBaseline() (url string, err error) {
	as("baseline", func() { url, err = s.startBaselineHere() })
	return url, err
}

func (s *stack) startBaselineHere() (string, error) {
	// A well-configured peer: enough idle connections for the largest
	// scenario's clients, as the worker has for its concurrency.
	client, err := wechat.New(s.up.URL, wechat.IdleConns(4096))
	if err != nil {
		return "", err
	}
	srv, err := serve(baselineHandler(client, benchApp.AppID, benchApp.Secret), edgeTimeout+5*time.Second, s.log, "baseline")
	if err != nil {
		return "", err
	}
	s.closers = append(s.closers, srv.close)
	return srv.URL, nil
}

// baselineHandler is the one-handler server that a project writes without
// wxlogin, written as a fair peer: it reads the code from the query like
// a typical handler, calls WeChat through the same upstream client as the
// worker (the same connection pool, the same parsing), and answers the
// same JSON with the same headers. It leaves out what wxlogin adds (the
// other request shapes, retries, rate limits, logs, stats), which is
// exactly the cost being measured.
func baselineHandler(client *wechat.Client, appid, secret string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/openid", func(w http.ResponseWriter, r *http.Request) {
		code := r.URL.Query().Get("code")
		if code == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "code is required"})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), edgeTimeout)
		defer cancel()
		s, err := client.Code2Session(ctx, appid, secret, code)
		if err != nil {
			e := protocol.As(err)
			writeJSON(w, e.Status, e.Body())
			return
		}
		writeJSON(w, http.StatusOK, protocol.Result{OpenID: s.OpenID, UnionID: s.UnionID})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// probe checks that base answers a fresh code with the right openid, so a
// run never measures a server that answers errors fast.
func probe(ctx context.Context, tr *http.Transport, base, code string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/openid?code="+code, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("probing %s: %w", base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var res protocol.Result
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &res) != nil || res.OpenID != fakewx.OpenID(benchApp.AppID, code) {
		return fmt.Errorf("probing %s: HTTP %d %s", base, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// kvBuckets names the JetStream key-value buckets on the stack's server:
// how the benchmark tells whether the worker really de-duplicated.
func (s *stack) kvBuckets(ctx context.Context) ([]string, error) {
	nc, err := nats.Connect(s.nats.ClientURL())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l := js.KeyValueStoreNames(ctx)
	var names []string
	for n := range l.Name() {
		names = append(names, n)
	}
	return names, l.Error()
}
