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
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/embednats"
)

// NATSChildCommand, as wxbench's first argument, makes it the benchmark's
// NATS server process (RunNATSChild).
const NATSChildCommand = "__nats"

// The NATS child's control subjects: what it has used so far, and CPU
// profiling on (a file name) or off (nothing).
const (
	natsUsageSubject   = "wxbench.child.nats.usage"
	natsProfileSubject = "wxbench.child.nats.profile"
)

// startNATS starts the benchmark's NATS server, with JetStream storing
// in dir, in this process.
func startNATS(dir string, logger *slog.Logger) (*server.Server, error) {
	return embednats.Start(embednats.Options{Name: "wxbench", Port: -1, JetStream: true, StoreDir: dir}, logger)
}

// natsProc is the NATS server in a process of its own (-nats-child), as
// in a split deployment. Its JetStream store holds every code's answer for
// WX_RESULT_TTL, a heap that grows through scenario 1. In the benchmark's
// process, every garbage collection set off by the load generator, the
// fake, the edge and the workers marks that heap too, which lengthens
// every setup's tail, the baseline's included. Apart, the store costs
// only its own process; but two Go runtimes then share the cores, and
// waking the server's threads for each message costs CPU that a server in
// the same process does not spend. Its CPU and allocations count as the
// benchmark's (usage).
type natsProc struct {
	url   string
	cmd   *exec.Cmd
	stdin io.Closer
	ctl   *nats.Conn
}

// usageOf is what a NATS child has used so far.
type usageOf struct {
	CPU    time.Duration `json:"cpu_ns"`
	Allocs uint64        `json:"allocs"`
}

func startNATSProc(storeDir string, level slog.Level, stderr io.Writer) (*natsProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program to start the NATS server: %w", err)
	}
	cmd := exec.Command(exe, NATSChildCommand, "-store", storeDir, "-log-level", level.String())
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// The child ends when this pipe closes, so it cannot outlive us even
	// if we are killed.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the NATS server process: %w", err)
	}
	p := &natsProc{cmd: cmd, stdin: stdin}
	// Its first line is its client URL; EOF if it failed to start.
	line, err := bufio.NewReader(out).ReadString('\n')
	if p.url = strings.TrimSpace(line); err != nil || !strings.HasPrefix(p.url, "nats://") {
		p.Shutdown()
		return nil, fmt.Errorf("the NATS server process did not start (said %q): %v", p.url, err)
	}
	if p.ctl, err = nats.Connect(p.url, nats.Name("wxbench-control")); err != nil {
		p.Shutdown()
		return nil, fmt.Errorf("connecting to the NATS server process: %w", err)
	}
	counted.add(p)
	return p, nil
}

func (p *natsProc) ClientURL() string { return p.url }

// Shutdown asks the child to stop and waits for it, killing it if it
// takes longer than a few seconds.
func (p *natsProc) Shutdown() {
	counted.remove(p)
	if p.ctl != nil {
		p.ctl.Close()
	}
	p.stdin.Close()
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func (p *natsProc) usage() (usageOf, error) {
	var u usageOf
	m, err := p.ctl.Request(natsUsageSubject, nil, 5*time.Second)
	if err != nil {
		return u, fmt.Errorf("asking the NATS server process for its CPU time: %w", err)
	}
	return u, json.Unmarshal(m.Data, &u)
}

// profile starts the child's CPU profile into path, or stops it if path
// is empty.
func (p *natsProc) profile(path string) error {
	m, err := p.ctl.Request(natsProfileSubject, []byte(path), 10*time.Second)
	if err != nil {
		return fmt.Errorf("NATS server process profile: %w", err)
	}
	if len(m.Data) > 0 {
		return fmt.Errorf("NATS server process profile: %s", m.Data)
	}
	return nil
}

// counted are the NATS server processes running, whose CPU and
// allocations count as this process's own in every run's figures.
var counted procSet

type procSet struct {
	mu    sync.Mutex
	procs []*natsProc
}

func (s *procSet) add(p *natsProc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs = append(s.procs, p)
}

func (s *procSet) remove(p *natsProc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs = slices.DeleteFunc(s.procs, func(q *natsProc) bool { return q == p })
}

func (s *procSet) list() []*natsProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.procs)
}

// usage is the CPU and heap allocations used so far by this process and
// the NATS server processes running.
func usage() (cpu time.Duration, allocs uint64, err error) {
	cpu, allocs = cpuTime(), heapAllocs()
	for _, p := range counted.list() {
		u, uerr := p.usage()
		if uerr != nil {
			return 0, 0, uerr
		}
		cpu += u.CPU
		allocs += u.Allocs
	}
	return cpu, allocs, nil
}

// RunNATSChild is the benchmark's NATS server process: a server with
// JetStream storing in -store, as embednats runs it for the all-in-one.
// It prints its client URL on stdout, answers the control subjects, and
// runs until ctx ends or stdin closes (the benchmark ended).
func RunNATSChild(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(NATSChildCommand, flag.ContinueOnError)
	dir := fs.String("store", "", "JetStream store directory")
	level := fs.String("log-level", "WARN", "log level")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("-store is required")
	}
	ctx, cancel, logger, err := startChild(ctx, *level, stdin, stderr, "wxbench-nats")
	if err != nil {
		return err
	}
	defer cancel()

	ns, err := startNATS(*dir, logger)
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	nc, err := nats.Connect(ns.ClientURL(), nats.InProcessServer(ns))
	if err != nil {
		return err
	}
	defer nc.Close()
	if _, err := nc.Subscribe(natsUsageSubject, func(m *nats.Msg) {
		b, _ := json.Marshal(usageOf{CPU: cpuTime(), Allocs: heapAllocs()})
		m.Respond(b)
	}); err != nil {
		return err
	}
	var prof *os.File
	defer func() {
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
		}
	}()
	if _, err := nc.Subscribe(natsProfileSubject, func(m *nats.Msg) {
		m.Respond([]byte(switchProfile(&prof, string(m.Data))))
	}); err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, ns.ClientURL())
	<-ctx.Done()
	return nil
}

// switchProfile starts a CPU profile into path, or stops the running one
// if path is empty; it returns what went wrong, or "".
func switchProfile(prof **os.File, path string) string {
	if path == "" {
		if *prof == nil {
			return "no profile is running"
		}
		pprof.StopCPUProfile()
		err := (*prof).Close()
		*prof = nil
		if err != nil {
			return err.Error()
		}
		return ""
	}
	if *prof != nil {
		return "a profile is already running"
	}
	f, err := os.Create(path)
	if err != nil {
		return err.Error()
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err.Error()
	}
	*prof = f
	return ""
}
