package exchange

import (
	"sync"
	"testing"
	"time"
)

func TestRunnersReuseGoroutines(t *testing.T) {
	var rs runners
	rs.init()
	defer rs.stop()

	// One at a time: one goroutine does all the work.
	for range 50 {
		done := make(chan struct{})
		rs.run(func() { close(done) })
		<-done
		waitIdle(t, &rs, 1)
	}
	if n := rs.started.Load(); n != 1 {
		t.Fatalf("50 sequential jobs started %d goroutines, want 1", n)
	}

	// Twenty at once need twenty; afterwards they are all reused.
	release := make(chan struct{})
	var running sync.WaitGroup
	running.Add(20)
	for range 20 {
		rs.run(func() { running.Done(); <-release })
	}
	running.Wait()
	close(release)
	waitIdle(t, &rs, 20)
	if n := rs.started.Load(); n != 20 {
		t.Fatalf("20 concurrent jobs: %d goroutines started, want 20", n)
	}
	var again sync.WaitGroup
	again.Add(20)
	for range 20 {
		rs.run(again.Done)
	}
	again.Wait()
	if n := rs.started.Load(); n != 20 {
		t.Fatalf("reusing 20 idle runners started new goroutines: %d in all", n)
	}
}

func TestRunnersKeepFewIdle(t *testing.T) {
	var rs runners
	rs.init()
	defer rs.stop()

	// A burst needs a runner per job; afterwards only maxIdleRunners
	// stay, and the others end.
	const burst = 3 * maxIdleRunners
	release := make(chan struct{})
	var running sync.WaitGroup
	running.Add(burst)
	for range burst {
		rs.run(func() { running.Done(); <-release })
	}
	running.Wait()
	close(release)
	waitIdle(t, &rs, maxIdleRunners)
	deadline := time.Now().Add(5 * time.Second)
	for rs.live.Load() != maxIdleRunners {
		if time.Now().After(deadline) {
			t.Fatalf("%d runners alive after a burst of %d, want %d", rs.live.Load(), burst, maxIdleRunners)
		}
		time.Sleep(time.Millisecond)
	}
	if n := rs.started.Load(); n != burst {
		t.Fatalf("a burst of %d jobs started %d runners", burst, n)
	}
}

func TestRunnersStopEndsEveryGoroutine(t *testing.T) {
	var rs runners
	rs.init()
	release := make(chan struct{})
	var running sync.WaitGroup
	running.Add(5)
	for range 5 {
		rs.run(func() { running.Done(); <-release })
	}
	running.Wait()
	stopped := make(chan struct{})
	go func() { rs.stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("stop returned while jobs were still running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case <-stopped: // every runner, busy or idle, has returned
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not return after the jobs finished")
	}
	rs.stop() // a second stop is harmless
}

// waitIdle waits until n runners are idle.
func waitIdle(t *testing.T, rs *runners, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rs.mu.Lock()
		idle := len(rs.idle)
		rs.mu.Unlock()
		if idle == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d runners idle, want %d", idle, n)
		}
		time.Sleep(time.Millisecond)
	}
}
