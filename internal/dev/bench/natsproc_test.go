package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestMain lets this test binary stand in for wxbench as the NATS child:
// startNATSProc starts os.Executable() with NATSChildCommand.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == NATSChildCommand {
		if err := RunNATSChild(context.Background(), os.Args[2:], os.Stdin, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "nats child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A NATS server in a child process serves, its CPU and allocations count
// in usage while it runs, it profiles on request, and after Shutdown it
// is gone and no longer counted.
func TestNATSChild(t *testing.T) {
	p, err := startNATSProc(t.TempDir(), slog.LevelWarn, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown()

	nc, err := nats.Connect(p.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Subscribe("echo", func(m *nats.Msg) { m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	profile := filepath.Join(t.TempDir(), "nats.pprof")
	if err := p.profile(profile); err != nil {
		t.Fatal(err)
	}
	before, err := p.usage()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		if _, err := nc.Request("echo", []byte("x"), 5*time.Second); err != nil {
			t.Fatalf("request %d through the child: %v", i, err)
		}
	}
	after, err := p.usage()
	if err != nil {
		t.Fatal(err)
	}
	if after.CPU <= before.CPU || after.Allocs <= before.Allocs {
		t.Errorf("the child's usage did not grow with 2,000 round trips through it: %+v → %+v", before, after)
	}
	if err := p.profile(""); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(profile); err != nil || fi.Size() == 0 {
		t.Errorf("no CPU profile from the child: %v", err)
	}
	if err := p.profile(""); err == nil {
		t.Error("stopping a profile that is not running: no error")
	}

	// While it runs, the child's CPU adds to this process's.
	own := cpuTime()
	cpu, _, err := usage()
	if err != nil {
		t.Fatal(err)
	}
	if cpu < own+after.CPU {
		t.Errorf("usage %v, want at least this process's %v plus the child's %v", cpu, own, after.CPU)
	}

	p.Shutdown()
	if p.cmd.ProcessState == nil || !p.cmd.ProcessState.Exited() {
		t.Errorf("the child did not exit on Shutdown: %v", p.cmd.ProcessState)
	}
	if cpu, _, err := usage(); err != nil || cpu > cpuTime() {
		t.Errorf("after Shutdown, usage %v (%v) counts more than this process", cpu, err)
	}
}
