package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/stack"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

// ChildCommand is the hidden first argument that makes wxbench run
// scenario 3's worker (RunChild) instead of the benchmark, so that the
// worker's memory is measured in a process of its own.
const ChildCommand = "__worker"

// memorySubject is where the child answers with a memSnapshot.
const memorySubject = "wxbench.child.memory"

// memSnapshot is the child's memory after a full GC.
type memSnapshot struct {
	HeapAlloc  uint64 `json:"heap_alloc"` // live heap objects
	StackInuse uint64 `json:"stack_inuse"`
	RSS        uint64 `json:"rss"` // the whole child process, from /proc
	Goroutines int    `json:"goroutines"`
	InFlight   int64  `json:"in_flight"`
}

// goMem is the memory the Go runtime accounts to live data: heap objects
// and goroutine stacks.
func (m memSnapshot) goMem() uint64 { return m.HeapAlloc + m.StackInuse }

// scenario3 holds InFlight exchanges in one worker (upstream latency Hold)
// and measures the worker process's memory before and after, with a GC
// each time. Requests go straight over NATS: 10,000 HTTP connections to
// the edge would measure the edge and this process, not the worker. It
// runs with de-duplication on, as in production, then off, to show its
// share; each with the fake WeChat over plain HTTP, where the worker's
// client speaks HTTP/1.1 and holds a connection per exchange, then over
// HTTPS, where it speaks HTTP/2 and exchanges share connections (Go's
// server allows 250 streams on each), as with a WeChat that offers it.
func scenario3(ctx context.Context, e *env) ([]row, error) {
	var rows []row
	for _, v := range []struct{ http2, dedup bool }{{false, true}, {false, false}, {true, true}, {true, false}} {
		rs, err := holdInFlight(ctx, e, v.http2, v.dedup)
		rows = append(rows, rs...)
		if err != nil {
			return rows, err
		}
	}
	return rows, nil
}

func holdInFlight(ctx context.Context, e *env, http2, dedup bool) ([]row, error) {
	n := e.opts.InFlight
	var cert *fakewx.TLSCert
	if http2 {
		var err error
		if cert, err = fakewx.NewTLSCert(); err != nil {
			return nil, err
		}
	}
	st, err := newRigOver(0, cert, e)
	if err != nil {
		return nil, err
	}
	defer st.close()

	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program to start the worker: %w", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	args := []string{ChildCommand,
		"-nats", st.st.NATSURL(), "-upstream", st.up.URL,
		"-concurrency", strconv.Itoa(n), "-http-timeout", (e.opts.Hold + 15*time.Second).String(),
		"-log-level", e.opts.LogLevel.String(), "-dedup=" + strconv.FormatBool(dedup)}
	if cert != nil {
		// The child trusts the fake's certificate, and only it, as a
		// worker does given it in WX_CA_FILE.
		caFile := filepath.Join(st.storeDir, "fakewx-ca.pem")
		if err := os.WriteFile(caFile, cert.PEM(), 0o644); err != nil {
			return nil, fmt.Errorf("writing the fake's certificate: %w", err)
		}
		args = append(args, "-ca-file", caFile)
	}
	if e.opts.MemProfile != "" {
		// The default rate samples one allocation per 512 KiB: a few
		// dozen samples for the held exchanges, too few to tell their
		// parts apart.
		args = append(args, "-memprofile-rate", "512")
	}
	cmd := exec.CommandContext(cctx, exe, args...)
	cmd.Stdout, cmd.Stderr = e.stderr, e.stderr
	// The child ends when this pipe closes, so it cannot outlive us even
	// if we are killed.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the worker process: %w", err)
	}
	defer func() {
		// The held exchanges would take Hold to finish: kill, do not wait.
		cmd.Process.Kill()
		cmd.Wait()
	}()

	nc, err := st.connect("wxbench-memory")
	if err != nil {
		return nil, err
	}
	if err := waitForChild(ctx, nc); err != nil {
		return nil, err
	}
	// Warm up: a few exchanges fill the worker's pools, as in production.
	subject := protocol.Subject(protocol.DefaultSubjectPrefix)
	prefix := codePrefix()
	for i := range 64 {
		if _, err := request(ctx, nc, subject, prefix+"warm-"+strconv.Itoa(i), 5*time.Second); err != nil {
			return nil, fmt.Errorf("warm-up exchange: %w", err)
		}
	}
	before, err := snapshot(nc, "")
	if err != nil {
		return nil, err
	}

	st.up.fake.SetLatency(e.opts.Hold)
	calls := st.up.fake.TotalCalls()
	rctx, rcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { rcancel(); wg.Wait() }()
	for i := range n {
		wg.Go(func() {
			request(rctx, nc, subject, prefix+"held-"+strconv.Itoa(i), e.opts.Hold+10*time.Second)
		})
	}
	// Every exchange has reached WeChat, which holds its answer.
	deadline := time.Now().Add(e.opts.Hold / 2)
	for st.up.fake.TotalCalls()-calls < int64(n) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("only %d of %d exchanges reached the upstream within %v", st.up.fake.TotalCalls()-calls, n, e.opts.Hold/2)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Over HTTP/2, the spare connections the burst made the worker dial
	// are closed as their handshakes end, some after the calls went out
	// on other connections; measured before, they would count as memory
	// per exchange.
	for http2 && !st.up.settled() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("the worker still has %d spare upstream connections open after %v",
				st.up.conns.Load()-st.up.closed.Load()-st.up.used.Load(), e.opts.Hold/2)
		}
		time.Sleep(20 * time.Millisecond)
	}
	profile := e.opts.MemProfile
	if profile != "" && http2 {
		profile += "-h2"
	}
	if profile != "" && !dedup {
		profile += "-nodedup"
	}
	after, err := snapshot(nc, profile)
	if err != nil {
		return nil, err
	}
	if after.InFlight != int64(n) {
		return nil, fmt.Errorf("the worker has %d exchanges in flight, want %d", after.InFlight, n)
	}

	per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(n) }
	proto, conns := "HTTP/1.1", fmt.Sprintf("%d upstream connections opened", st.up.conns.Load())
	if http2 {
		proto = "HTTP/2"
		conns = fmt.Sprintf("%d upstream connections carry them (%d opened)", st.up.used.Load(), st.up.conns.Load())
	}
	what := fmt.Sprintf("worker process, %s exchanges in flight, %s upstream, dedup %s", thousands(float64(n)), proto, onOff(dedup))
	return []row{
		{scenario: "3", what: what + ": Go heap+stacks",
			note: fmt.Sprintf("%s per exchange (%s → %s; heap %s, stacks %s per exchange)",
				kib(per(before.goMem(), after.goMem())), mib(float64(before.goMem())), mib(float64(after.goMem())),
				kib(per(before.HeapAlloc, after.HeapAlloc)), kib(per(before.StackInuse, after.StackInuse)))},
		{scenario: "3", what: what + ": RSS",
			note: fmt.Sprintf("%s per exchange (%s → %s); %.1f goroutines per exchange; %s",
				kib(per(before.RSS, after.RSS)), mib(float64(before.RSS)), mib(float64(after.RSS)),
				float64(after.Goroutines-before.Goroutines)/float64(n), conns)},
	}, nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func request(ctx context.Context, nc *nats.Conn, subject, code string, budget time.Duration) (protocol.Result, error) {
	data, err := json.Marshal(protocol.Request{AppID: benchApp.AppID, Code: code})
	if err != nil {
		return protocol.Result{}, err
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(protocol.HeaderTimeout, strconv.FormatInt(budget.Milliseconds(), 10))
	ctx, cancel := context.WithTimeout(ctx, budget+time.Second)
	defer cancel()
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return protocol.Result{}, err
	}
	res, e := protocol.DecodeReply(reply)
	if e != nil {
		return res, e
	}
	return res, nil
}

func waitForChild(ctx context.Context, nc *nats.Conn) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := nc.Request(memorySubject, nil, time.Second); err == nil {
			return nil
		} else if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the worker process did not come up: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// snapshot asks the child for its memory and, if profile is not empty,
// to write its heap and goroutine profiles to profile-worker-*.
func snapshot(nc *nats.Conn, profile string) (memSnapshot, error) {
	var m memSnapshot
	reply, err := nc.Request(memorySubject, []byte(profile), 30*time.Second)
	if err != nil {
		return m, fmt.Errorf("asking the worker process for its memory: %w", err)
	}
	return m, json.Unmarshal(reply.Data, &m)
}

// RunChild is scenario 3's worker process: one worker started by package
// stack, plus a memorySubject responder on its connection. It runs until
// ctx ends or stdin closes (the benchmark ended).
func RunChild(ctx context.Context, args []string, stdin io.Reader, stderr io.Writer) error {
	fs := flag.NewFlagSet(ChildCommand, flag.ContinueOnError)
	natsURL := fs.String("nats", "", "NATS URL")
	upstreamURL := fs.String("upstream", "", "WeChat base URL")
	concurrency := fs.Int("concurrency", defaultConcurrency, "WORKER_CONCURRENCY")
	httpTimeout := fs.Duration("http-timeout", 2*time.Second, "WX_HTTP_TIMEOUT")
	level := fs.String("log-level", "WARN", "log level")
	dedup := fs.Bool("dedup", true, "de-duplicate (off: exchange.Config.NoDedup)")
	caFile := fs.String("ca-file", "", "PEM certificates to trust instead of the system's roots (wechat.RootCAs)")
	profileRate := fs.Int("memprofile-rate", 0, "runtime.MemProfileRate; 0 keeps the default")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *profileRate > 0 {
		runtime.MemProfileRate = *profileRate
	}
	ctx, cancel, logger, err := startChild(ctx, *level, stdin, stderr, "wxbench-worker")
	if err != nil {
		return err
	}
	defer cancel()

	var opts []wechat.Option
	if *caFile != "" {
		// Read as a worker reads WX_CA_FILE.
		pool, err := config.ReadRoots(*caFile)
		if err != nil {
			return err
		}
		opts = append(opts, wechat.RootCAs(pool))
	}
	cfg := workerConfig(*concurrency, *dedup)
	cfg.HTTPTimeout = *httpTimeout
	st, err := stack.Start(ctx, stack.Options{
		Logger: logger, NATSURL: *natsURL, Upstream: *upstreamURL, WeChat: opts,
		Workers: 1, Worker: cfg,
	})
	if err != nil {
		return err
	}
	w := st.Workers()[0]
	_, err = w.NC.Subscribe(memorySubject, func(m *nats.Msg) {
		snap := measure()
		if prefix := string(m.Data); prefix != "" {
			if err := writeProfiles(prefix); err != nil {
				logger.Error("writing profiles", "error", err)
			}
		}
		snap.InFlight = w.Stats().InFlight
		data, _ := json.Marshal(snap)
		m.Respond(data)
	})
	if err != nil {
		st.Stop()
		return fmt.Errorf("subscribing to %s: %w", memorySubject, err)
	}
	// Killed by the benchmark once measured: a graceful shutdown would
	// wait for the held exchanges.
	return st.Wait()
}

// writeProfiles writes the heap profile (what the held exchanges keep)
// and the goroutines (who keeps the stacks) of this process.
func writeProfiles(prefix string) error {
	for _, p := range []struct {
		name, file string
		debug      int
	}{{"heap", "-worker-heap.pprof", 0}, {"goroutine", "-worker-goroutines.txt", 1}} {
		f, err := os.Create(prefix + p.file)
		if err != nil {
			return err
		}
		err = pprof.Lookup(p.name).WriteTo(f, p.debug)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// measure collects garbage until the figures settle, then reads them.
func measure() memSnapshot {
	runtime.GC()
	runtime.GC()
	// Hand freed memory back to the OS now rather than over the next
	// minutes, so that RSS too counts what is live: a burst of TLS
	// handshakes (the HTTP/2 variants) leaves megabytes freed but still
	// resident.
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, err := rssBytes()
	if err != nil {
		rss = 0
	}
	return memSnapshot{HeapAlloc: ms.HeapAlloc, StackInuse: ms.StackInuse, RSS: rss, Goroutines: runtime.NumGoroutine()}
}

// rssBytes is this process's resident set size.
func rssBytes() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/self/status")
}

// startChild is what a child process of the benchmark does first: its
// logger, at the level the parent gave, and a context that ends when
// stdin closes, so that the child cannot outlive the benchmark.
func startChild(ctx context.Context, level string, stdin io.Reader, stderr io.Writer, process string) (context.Context, context.CancelFunc, *slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, nil, fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})).With("process", process)
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		io.Copy(io.Discard, stdin)
		cancel()
	}()
	return ctx, cancel, logger, nil
}
