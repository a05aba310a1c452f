package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/bench"
)

// TestMain lets this test binary stand in for wxbench as its children
// (scenario 3's worker, the NATS server): the benchmark starts
// os.Executable() with bench.ChildCommand or bench.NATSChildCommand.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == bench.ChildCommand || os.Args[1] == bench.NATSChildCommand) {
		if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "wxbench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestQuickRun runs every scenario, tiny, and checks that each printed its
// rows. It asserts no figure: those depend on the machine.
func TestQuickRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, logs bytes.Buffer
	// Small enough for the race detector on two cores: every window sees
	// many completions, so no scenario fails for want of one.
	err := run(ctx, []string{"-quick", "-duration", "500ms", "-warmup", "200ms",
		"-clients2", "50", "-inflight", "100", "-hold", "3s", "-concurrency4", "10"}, &out, &logs)
	if err != nil {
		t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), logs.String())
	}
	for _, want := range []string{
		`(?m)^wxbench: .*GOMAXPROCS=\d+`,
		`(?m)^1 +baseline: .* 0 +$`,
		`(?m)^1 +pipeline: .*dedup on .*× baseline`,
		`(?m)^1 +pipeline: .*dedup off .*× baseline`,
		`(?m)^2 +pipeline: 50 clients.*× ideal 500`,
		`(?m)^3 +worker process, 100 exchanges in flight, HTTP/1.1 upstream, dedup on: Go heap.*KiB per exchange`,
		`(?m)^3 +worker process, 100 exchanges in flight, HTTP/1.1 upstream, dedup off: RSS.*KiB per exchange.*100 upstream connections opened`,
		`(?m)^3 +worker process, 100 exchanges in flight, HTTP/2 upstream, dedup on: Go heap.*KiB per exchange`,
		`(?m)^3 +worker process, 100 exchanges in flight, HTTP/2 upstream, dedup off: RSS.*KiB per exchange.*upstream connections carry them`,
		`(?m)^4 +pipeline: 4 worker.*× concurrency 10, 80 clients.*× 1 worker`,
		`(?m)^5 +NATS only: `,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("output lacks %s:\n%s", want, out.String())
		}
	}
}

// TestNATSChildRun runs scenarios 1 and 5 with the NATS server in a child
// process, scenario 1 with its profiles.
func TestNATSChildRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, logs bytes.Buffer
	prefix := filepath.Join(t.TempDir(), "s1")
	err := run(ctx, []string{"-quick", "-scenarios", "1,5", "-nats-child", "-cpuprofile", prefix,
		"-duration", "500ms", "-warmup", "200ms"}, &out, &logs)
	if err != nil {
		t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), logs.String())
	}
	for _, want := range []string{
		`(?m)^components log at .*the NATS server runs in a child process`,
		`(?m)^1p +pipeline: .*dedup on \(profiled`,
		`(?m)^5 +NATS only: .* 0 +$`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("output lacks %s:\n%s", want, out.String())
		}
	}
	for _, suffix := range []string{".pprof", "-allocs-before.pprof", "-allocs-after.pprof", "-mutex.pprof", "-nats.pprof"} {
		path := prefix + "-pipeline-dedup" + suffix
		if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
			t.Errorf("profile %s: %v", path, err)
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-scenarios", "6"}, {"-duration", "0s"}, {"-log-level", "loud"}} {
		if err := run(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
