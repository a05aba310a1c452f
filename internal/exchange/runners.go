package exchange

import (
	"sync"
	"sync/atomic"
)

// runners keeps a few goroutines alive between requests to take them in
// (job.intake). Each intake still has a goroutine to itself, as if
// started with go; the goroutine is only reused. A fresh goroutine starts
// with a small stack and grows it (a copy each time) on its way through
// JSON and the store's claim: at thousands of exchanges a second that was
// several microseconds of CPU per exchange. Idle runners are kept
// last-in first-out, and at most maxIdleRunners of them: an intake is
// short (the exchange then waits for WeChat on a goroutine of its own),
// so a few serve any rate, and after a burst the rest end at once
// instead of keeping their stacks.
type runners struct {
	mu   sync.Mutex
	idle []*runner
	quit chan struct{} // closed on shutdown: idle runners exit at once
	once sync.Once
	wg   sync.WaitGroup

	started atomic.Int64 // runner goroutines ever started
	live    atomic.Int64 // runner goroutines running now
}

// maxIdleRunners is how many runners wait for work at most.
const maxIdleRunners = 64

type runner struct {
	next chan func() // buffered: give never blocks
}

func (rs *runners) init() { rs.quit = make(chan struct{}) }

// run runs job on an idle runner, or on a new goroutine that becomes one.
func (rs *runners) run(job func()) {
	rs.mu.Lock()
	if n := len(rs.idle); n > 0 {
		r := rs.idle[n-1]
		rs.idle[n-1] = nil
		rs.idle = rs.idle[:n-1]
		rs.mu.Unlock()
		r.next <- job
		return
	}
	rs.mu.Unlock()
	rs.wg.Add(1)
	rs.started.Add(1)
	rs.live.Add(1)
	go rs.loop(job)
}

func (rs *runners) loop(job func()) {
	defer func() {
		rs.live.Add(-1)
		rs.wg.Done()
	}()
	r := &runner{next: make(chan func(), 1)}
	for {
		job()
		rs.mu.Lock()
		if len(rs.idle) >= maxIdleRunners {
			rs.mu.Unlock()
			return
		}
		rs.idle = append(rs.idle, r)
		rs.mu.Unlock()
		select {
		case job = <-r.next:
			continue
		case <-rs.quit:
		}
		if rs.leave(r) {
			return
		}
		// run took this runner off the idle list just now: its job is
		// on the way.
		job = <-r.next
	}
}

// leave takes r off the idle list; false if run already took it.
func (rs *runners) leave(r *runner) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for i, x := range rs.idle {
		if x == r {
			rs.idle = append(rs.idle[:i], rs.idle[i+1:]...)
			return true
		}
	}
	return false
}

// stop makes idle runners exit and waits for every runner to end. Call
// it when no more jobs are given.
func (rs *runners) stop() {
	rs.once.Do(func() { close(rs.quit) })
	rs.wg.Wait()
}
