// Package bench is wxlogin's performance benchmark (task bench, whose
// binary is internal/dev/wxbench). It starts everything itself on 127.0.0.1 (a NATS server with
// JetStream, the fake WeChat, workers, the edge, and a direct one-handler
// baseline), drives them with its own closed-loop load generator, and
// prints one table. It reports figures and asserts nothing: the targets
// of issue 7 are judged by people, on a machine the output names.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Options say what to run and for how long.
type Options struct {
	Scenarios []int         // which of 1..5 to run, in order
	Duration  time.Duration // measured window of one run
	Warmup    time.Duration // unmeasured start of each run
	Rounds    int           // scenario 1's alternations of baseline and pipeline
	Clients2  int           // scenario 2's clients
	InFlight  int           // scenario 3's exchanges held in flight
	Hold      time.Duration // scenario 3's upstream latency, which holds them
	PerWorker int           // scenario 4's WORKER_CONCURRENCY
	// CPUProfile, when set, adds one unmeasured run per scenario 1 variant
	// under the profilers, written to CPUProfile-<variant>.pprof and the
	// files beside it that profileRun names.
	CPUProfile string
	// MemProfile, when set, makes scenario 3's worker write its heap
	// profile and goroutines, with the exchanges held, to
	// MemProfile[-h2][-nodedup]-worker-heap.pprof and -worker-goroutines.txt.
	MemProfile string
	// NATSChild runs the NATS server in a child process of its own
	// instead of the benchmark's process (see natsProc).
	NATSChild bool
	LogLevel  slog.Level
	Command   string // how the run was invoked, for the report
}

// DefaultOptions is the full benchmark as issue 7 describes it.
func DefaultOptions() Options {
	return Options{
		Scenarios: []int{1, 2, 3, 4, 5},
		Duration:  10 * time.Second,
		Warmup:    time.Second,
		Rounds:    3,
		Clients2:  2000,
		InFlight:  10000,
		Hold:      30 * time.Second,
		PerWorker: 100,
		LogLevel:  slog.LevelWarn,
	}
}

// Quick shortens o for a look that takes well under a minute: 1 s runs,
// one round, a tenth of scenario 2's clients and of scenario 3's
// exchanges. The shapes stay the same; the figures are rougher.
func (o *Options) Quick() {
	o.Duration, o.Warmup, o.Rounds = time.Second, 250*time.Millisecond, 1
	o.Clients2, o.InFlight, o.Hold = o.Clients2/10, o.InFlight/10, 5*time.Second
}

// row is one line of the table.
type row struct {
	scenario, what string
	res            *loadResult // nil for rows that are not a load run
	note           string
}

// env is what every scenario gets.
type env struct {
	opts   Options
	log    *slog.Logger
	stderr io.Writer
}

// Run runs the scenarios and writes the report to stdout. Components log
// to logger. It fails if a scenario cannot run; the table of those that
// did is printed either way.
func Run(ctx context.Context, o Options, stdout, stderr io.Writer, logger *slog.Logger) error {
	if err := raiseFileLimit(o); err != nil {
		return err
	}
	e := &env{opts: o, log: logger, stderr: stderr}
	fmt.Fprintf(stdout, "wxbench: %s\n", machine())
	fmt.Fprintf(stdout, "command: %s (build %s)\n", o.Command, build())
	where := "load generator, NATS server, fake WeChat, edge, workers and baseline share one process"
	if o.NATSChild {
		where = "the NATS server runs in a child process, its CPU and allocations counted with the rest; load generator, fake WeChat, edge, workers and baseline share one process"
	}
	fmt.Fprintf(stdout, "components log at %s; %s (scenario 3's worker runs in a child process)\n", strings.ToLower(o.LogLevel.String()), where)
	fmt.Fprintf(stdout, "load average before: %s\n\n", loadAverage())

	var rows []row
	var errs []error
	for _, n := range o.Scenarios {
		if ctx.Err() != nil {
			break
		}
		run, ok := scenarios[n]
		if !ok {
			errs = append(errs, fmt.Errorf("no scenario %d", n))
			continue
		}
		fmt.Fprintf(stderr, "wxbench: scenario %d...\n", n)
		rs, err := run(ctx, e)
		rows = append(rows, rs...)
		if err != nil {
			errs = append(errs, fmt.Errorf("scenario %d: %w", n, err))
		}
	}
	printTable(stdout, rows)
	fmt.Fprintf(stdout, "\nload average after: %s\n", loadAverage())
	if ctx.Err() != nil {
		errs = append(errs, ctx.Err())
	}
	return errors.Join(errs...)
}

var scenarios = map[int]func(context.Context, *env) ([]row, error){
	1: scenario1, 2: scenario2, 3: scenario3, 4: scenario4, 5: scenario5,
}

func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tsetup\treq/s\tp50\tp99\tCPU/req\tallocs/req\tcores\tidle\terrors\tnotes")
	for _, r := range rows {
		if r.res == nil {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t%s\n", r.scenario, r.what, r.note)
			continue
		}
		res := r.res
		note := r.note
		if res.errs > 0 {
			note = strings.TrimPrefix(note+"; first error: "+res.firstErr.Error(), "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.2f\t%.0f%%\t%d\t%s\n", r.scenario, r.what, thousands(res.rps()),
			ms(res.pct(0.50)), ms(res.pct(0.99)), us(res.cpuPerReq()), res.allocsPerReq(),
			res.cores(), 100*res.idle, res.errs, note)
	}
	tw.Flush()
}

// raiseFileLimit lifts the soft limit on open files to the hard one (Go
// does this itself since 1.19; this makes sure) and fails early when even
// that is too low for the connections the scenarios open.
func raiseFileLimit(o Options) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("reading RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raising RLIMIT_NOFILE: %w", err)
		}
	}
	// Scenario 2 holds four sockets per client in this process: the
	// client's, the edge's, the worker's to WeChat and WeChat's own.
	// Scenario 3 holds one per exchange here, WeChat's side.
	need := uint64(1024)
	if slices.Contains(o.Scenarios, 2) {
		need = max(need, uint64(4*o.Clients2+1024))
	}
	if slices.Contains(o.Scenarios, 3) {
		need = max(need, uint64(o.InFlight+1024))
	}
	if lim.Cur < need {
		return fmt.Errorf("open files limit %d is below the %d these scenarios need (ulimit -n)", lim.Cur, need)
	}
	return nil
}

// machine describes where the figures come from.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s, %d cores, GOMAXPROCS=%d, %s %s/%s%s", model, runtime.NumCPU(),
		runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH, kernel)
}

// build names the commit the benchmark was built from, when the go
// command recorded it.
func build() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "unknown"
	}
	if dirty {
		return rev[:min(12, len(rev))] + " with uncommitted changes"
	}
	return rev[:min(12, len(rev))]
}

// loadAverage is the machine's 1, 5 and 15 minute load: on a shared
// machine, what else ran says how far to trust the figures.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// Formatting for the table.

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }
func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond)) }

func thousands(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func kib(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }
func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
