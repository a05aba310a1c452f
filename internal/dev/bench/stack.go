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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/embednats"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/stack"
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

// rig is one scenario's infrastructure: the fake WeChat, and a stack
// (package stack, as the binaries assemble theirs) on a NATS server with
// JetStream in a temporary store, to which the scenario adds workers and
// edges. A fresh rig per scenario keeps one scenario's JetStream state
// and idle connections out of the next one's figures.
type rig struct {
	log      *slog.Logger
	st       *stack.Stack
	proc     *natsProc // the NATS server's process with Options.NATSChild; nil in this process
	storeDir string
	up       *upstream
	closers  []func()
}

func newRig(latency time.Duration, e *env) (*rig, error) {
	return newRigOver(latency, nil, e)
}

// newRigOver is newRig with the fake WeChat served over HTTPS with cert,
// or over plain HTTP if cert is nil. The NATS server runs in this
// process, or in a child process with Options.NATSChild (natsProc).
func newRigOver(latency time.Duration, cert *fakewx.TLSCert, e *env) (*rig, error) {
	dir, err := os.MkdirTemp("", "wxbench-nats-")
	if err != nil {
		return nil, fmt.Errorf("making a JetStream store dir: %w", err)
	}
	r := &rig{log: e.log, storeDir: dir}
	if r.up, err = startUpstream(latency, cert, e.log); err != nil {
		r.close()
		return nil, fmt.Errorf("starting the fake WeChat: %w", err)
	}
	o := stack.Options{
		Logger:   e.log,
		Embedded: embednats.Options{Name: "wxbench", Port: -1, JetStream: true, StoreDir: dir},
		Upstream: r.up.URL,
	}
	if e.opts.NATSChild {
		if r.proc, err = startNATSProc(dir, e.opts.LogLevel, e.stderr); err != nil {
			r.close()
			return nil, err
		}
		o.NATSURL = r.proc.ClientURL()
	}
	as("nats-server", func() { r.st, err = stack.Start(context.Background(), o) })
	if err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

// profileNATS profiles a NATS server process's CPU into path until stop
// is called. A server in this process is in this process's profile.
func (r *rig) profileNATS(path string) (stop func(), err error) {
	if r.proc == nil {
		return func() {}, nil
	}
	if err := r.proc.profile(path); err != nil {
		return nil, err
	}
	return func() {
		if err := r.proc.profile(""); err != nil {
			r.log.Warn("stopping the NATS server's profile", "error", err)
		}
	}, nil
}

// close stops everything started on the rig: its own clients newest
// first, then the stack (edges, workers, NATS), then the fake WeChat.
func (r *rig) close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		r.closers[i]()
	}
	if r.st != nil {
		if err := r.st.Stop(); err != nil {
			r.log.Warn("stopping the stack", "error", err)
		}
	}
	if r.proc != nil {
		r.proc.Shutdown()
	}
	if r.up != nil {
		r.up.close()
	}
	os.RemoveAll(r.storeDir)
}

// connect opens a client's TCP connection to the rig's NATS server.
func (r *rig) connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	nc, err := r.st.Connect(name, extra...)
	if err != nil {
		return nil, err
	}
	r.closers = append(r.closers, nc.Close)
	return nc, nil
}

// startWorker starts a worker on a TCP connection of its own, as
// cmd/worker runs: edge and workers are separate processes in
// production. Stop it with its Stop.
func (r *rig) startWorker(cfg exchange.Config) (w *stack.Worker, err error) {
	as("worker", func() { w, err = r.st.StartWorker(cfg, nil) })
	return w, err
}

// startWorkers starts n workers; stop stops them all.
func (r *rig) startWorkers(n int, cfg exchange.Config) (stop func(), err error) {
	var ws []*stack.Worker
	stop = func() {
		for _, w := range ws {
			if err := w.Stop(); err != nil {
				r.log.Warn("worker shutdown", "error", err)
			}
		}
	}
	for range n {
		w, err := r.startWorker(cfg)
		if err != nil {
			stop()
			return nil, err
		}
		ws = append(ws, w)
	}
	return stop, nil
}

// startEdge serves the edge over real HTTP, as cmd/edge does.
func (r *rig) startEdge() (url string, err error) {
	as("edge", func() {
		var e *stack.Edge
		e, err = r.st.StartEdge(stack.EdgeOptions{
			Addr: "127.0.0.1:0", Config: edge.Config{Timeout: edgeTimeout, MaxBody: edgeMaxBody},
		}, nil)
		if err == nil {
			url = e.URL
		}
	})
	return url, err
}

// startBaseline serves the direct handler over real HTTP.
func (r *rig) startBaseline() (url string, err error) {
	as("baseline", func() { url, err = r.startBaselineHere() })
	return url, err
}

func (r *rig) startBaselineHere() (string, error) {
	// A well-configured peer: enough idle connections for the largest
	// scenario's clients, as the worker has for its concurrency.
	client, err := wechat.New(r.up.URL, wechat.IdleConns(4096))
	if err != nil {
		return "", err
	}
	srv, err := serve(baselineHandler(client, benchApp.AppID, benchApp.Secret), edgeTimeout+5*time.Second, r.log, "baseline")
	if err != nil {
		return "", err
	}
	r.closers = append(r.closers, srv.close)
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

// kvBuckets names the JetStream key-value buckets on the rig's server:
// how the benchmark tells whether the worker really de-duplicated.
func (r *rig) kvBuckets(ctx context.Context) ([]string, error) {
	nc, err := nats.Connect(r.st.NATSURL())
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
