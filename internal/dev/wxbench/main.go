// Command wxbench is wxlogin's performance benchmark (task bench): it
// starts NATS, the fake WeChat, workers, the edge and a direct
// one-handler baseline on 127.0.0.1, drives them with its own closed-loop
// load generator, and prints one table. wxbench -h lists the flags; the
// scenarios are those of issue 7, described in internal/dev/bench.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/wxlogin/wxlogin/internal/dev/bench"
	"github.com/wxlogin/wxlogin/internal/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "wxbench:", err)
		os.Exit(1)
	}
}

// run takes stderr as well as stdout: the table goes to stdout, the
// components' log lines to stderr, so that one never garbles the other.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == bench.ChildCommand {
		return bench.RunChild(ctx, args[1:], os.Stdin, stderr)
	}
	if len(args) > 0 && args[0] == bench.NATSChildCommand {
		return bench.RunNATSChild(ctx, args[1:], os.Stdin, stdout, stderr)
	}

	// Configuration.
	o := bench.DefaultOptions()
	fs := flag.NewFlagSet("wxbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenarios := fs.String("scenarios", "1,2,3,4,5", "scenarios to run, comma separated")
	quick := fs.Bool("quick", false, "a quick look: 1s runs, one round, a tenth of scenario 2's clients and scenario 3's exchanges")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "measured time of each run")
	fs.DurationVar(&o.Warmup, "warmup", o.Warmup, "unmeasured start of each run")
	fs.IntVar(&o.Rounds, "rounds", o.Rounds, "scenario 1: rounds of baseline and pipeline")
	fs.IntVar(&o.Clients2, "clients2", o.Clients2, "scenario 2: concurrent clients")
	fs.IntVar(&o.InFlight, "inflight", o.InFlight, "scenario 3: exchanges held in flight")
	fs.DurationVar(&o.Hold, "hold", o.Hold, "scenario 3: upstream latency that holds them")
	fs.IntVar(&o.PerWorker, "concurrency4", o.PerWorker, "scenario 4: WORKER_CONCURRENCY of each worker")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "scenario 1: also profile one extra run of each variant: CPU into `prefix`-<variant>.pprof, allocations, lock contention and (-nats-child) the NATS server beside it")
	fs.StringVar(&o.MemProfile, "memprofile", "", "scenario 3: the worker's heap profile and goroutines, exchanges held, into `prefix`-worker-*")
	fs.BoolVar(&o.NATSChild, "nats-child", false, "run the NATS server in a child process of its own, as in a split deployment, instead of this process")
	level := fs.String("log-level", "warn", "level of the components' logs (stderr): debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *quick {
		// Flags given explicitly still win over -quick's defaults.
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		q := o
		q.Quick()
		if !given["duration"] {
			o.Duration = q.Duration
		}
		if !given["warmup"] {
			o.Warmup = q.Warmup
		}
		if !given["rounds"] {
			o.Rounds = q.Rounds
		}
		if !given["clients2"] {
			o.Clients2 = q.Clients2
		}
		if !given["inflight"] {
			o.InFlight = q.InFlight
		}
		if !given["hold"] {
			o.Hold = q.Hold
		}
	}
	o.Scenarios = nil
	for s := range strings.SplitSeq(*scenarios, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 5 {
			return fmt.Errorf("-scenarios: %q is not a scenario (1 to 5)", s)
		}
		o.Scenarios = append(o.Scenarios, n)
	}
	if err := o.LogLevel.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	if o.Duration <= 0 || o.Warmup < 0 || o.Rounds < 1 || o.Clients2 < 1 || o.InFlight < 1 || o.Hold <= 0 || o.PerWorker < 1 {
		return errors.New("-duration, -rounds, -clients2, -inflight, -hold and -concurrency4 must be positive, -warmup not negative")
	}
	o.Command = strings.Join(append([]string{"wxbench"}, args...), " ")

	logger := logging.New(stderr, o.LogLevel, "text")
	return bench.Run(ctx, o, stdout, stderr, logger)
}
