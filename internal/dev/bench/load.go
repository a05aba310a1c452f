package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// doer makes one request for client c, the seq-th of that client, with a
// login code of its own; it returns an error for anything but a success.
type doer func(ctx context.Context, c, seq int) error

// loadResult is what one closed-loop run measured within its window.
type loadResult struct {
	ok, errs int64
	firstErr error
	lat      []time.Duration // latencies of the successes, sorted
	window   time.Duration
	cpu      time.Duration // user+system CPU during the window (usage)
	allocs   uint64        // heap allocations during the window (usage)
	idle     float64       // the machine's idle share of all CPUs during the window
	usageErr error         // cpu and allocs could not be read
}

// cores is how many CPUs the benchmark's processes kept busy during the
// window.
func (r loadResult) cores() float64 { return r.cpu.Seconds() / r.window.Seconds() }

func (r loadResult) rps() float64 { return float64(r.ok) / r.window.Seconds() }

// pct is the p-quantile (0 < p < 1) of the successes' latencies.
func (r loadResult) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(int(p*float64(len(r.lat))), len(r.lat)-1)]
}

// cpuPerReq is the CPU per success of the whole benchmark (its process
// and the NATS server's): with everything on one CPU-bound machine, it is
// the fairest cost figure.
func (r loadResult) cpuPerReq() time.Duration {
	if r.ok == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.ok)
}

// allocsPerReq is the whole benchmark's heap allocations per success. Unlike
// CPU time it does not depend on what else the machine runs.
func (r loadResult) allocsPerReq() float64 {
	if r.ok == 0 {
		return 0
	}
	return float64(r.allocs) / float64(r.ok)
}

// check turns a run that did not really run into an error: no success at
// all, or more than 1% failures, means the setup is broken and the figures
// would mislead.
func (r loadResult) check(what string) error {
	if r.usageErr != nil {
		return fmt.Errorf("%s: %w", what, r.usageErr)
	}
	if r.ok == 0 || r.errs*100 > r.ok+r.errs {
		return fmt.Errorf("%s: %d successes, %d failures (first: %v)", what, r.ok, r.errs, r.firstErr)
	}
	return nil
}

// closedLoop runs clients that each send requests back to back, first for
// warmup (not measured: connections are dialled and pools filled), then
// for dur. A request counts when it completes within the window; requests
// still running when it closes finish but are not counted, so nothing is
// cancelled into a spurious error.
func closedLoop(ctx context.Context, clients int, warmup, dur time.Duration, do doer) loadResult {
	from := time.Now().Add(warmup)
	to := from.Add(dur)
	res := make([]tally, clients)
	var wg sync.WaitGroup
	as("loadgen", func() {
		for c := range clients {
			wg.Go(func() {
				r := &res[c]
				r.lat = make([]time.Duration, 0, 256)
				for seq := 0; ctx.Err() == nil; seq++ {
					t0 := time.Now()
					if !t0.Before(to) {
						return
					}
					err := do(ctx, c, seq)
					t1 := time.Now()
					if t1.Before(from) || t1.After(to) {
						continue
					}
					if err != nil {
						r.fail(err)
						// A client that failed does not hammer at once; nor
						// should a broken setup spin the CPU the others need.
						time.Sleep(10 * time.Millisecond)
						continue
					}
					r.ok++
					r.lat = append(r.lat, t1.Sub(t0))
				}
			})
		}
	})
	return tallyWindow(ctx, from, to, &wg, res)
}

// tally is what one client or sender saw in the window.
type tally struct {
	ok, errs int64
	firstErr error
	lat      []time.Duration
}

func (t *tally) fail(err error) {
	t.errs++
	if t.firstErr == nil {
		t.firstErr = err
	}
}

// tallyWindow reads the CPU and allocations of this process and of the NATS
// server's (usage), and the machine's idle time, over the window
// [from, to], waits for the load's goroutines
// in wg, and sums their tallies.
func tallyWindow(ctx context.Context, from, to time.Time, wg *sync.WaitGroup, res []tally) loadResult {
	sleepUntil(ctx, from)
	sys0 := readSysCPU()
	cpu0, allocs0, err0 := usage()
	sleepUntil(ctx, to)
	cpu1, allocs1, err1 := usage()
	sys1 := readSysCPU()
	wg.Wait()

	out := loadResult{window: to.Sub(from), cpu: cpu1 - cpu0, allocs: allocs1 - allocs0, idle: sys1.idleSince(sys0),
		usageErr: errors.Join(err0, err1)}
	n := 0
	for i := range res {
		n += len(res[i].lat)
	}
	out.lat = make([]time.Duration, 0, n)
	for i := range res {
		r := &res[i]
		out.ok += r.ok
		out.errs += r.errs
		if out.firstErr == nil {
			out.firstErr = r.firstErr
		}
		out.lat = append(out.lat, r.lat...)
		r.lat = nil
	}
	slices.Sort(out.lat)
	return out
}

// openLoop sends requests at a fixed rate, whatever the server's
// speed: at a rate well below what the machine can do, its latencies are
// what a hop costs a request, not the queueing that a saturated closed
// loop measures. A request's latency runs from when it was due, not from
// when a sender got to it, so a stalled server cannot hide its delay
// (no coordinated omission). senders bounds the requests in flight, as
// the closed loop's clients do; it must be enough for rate × latency.
func openLoop(ctx context.Context, rate float64, senders int, warmup, dur time.Duration, do doer) loadResult {
	start := time.Now()
	from := start.Add(warmup)
	to := from.Add(dur)
	due := make(chan time.Time, senders*4)
	res := make([]tally, senders)
	var wg sync.WaitGroup
	as("loadgen", func() {
		for c := range senders {
			wg.Go(func() {
				r := &res[c]
				seq := 0
				for t0 := range due {
					err := do(ctx, c, seq)
					seq++
					t1 := time.Now()
					if t0.Before(from) || t1.After(to) {
						continue
					}
					if err != nil {
						r.fail(err)
						continue
					}
					r.ok++
					r.lat = append(r.lat, t1.Sub(t0))
				}
			})
		}
		// The pacer hands out each request when it is due, stamped with
		// that time; if the senders fall behind, the stamps do not.
		wg.Go(func() {
			defer close(due)
			interval := time.Duration(float64(time.Second) / rate)
			for next := start; next.Before(to); next = next.Add(interval) {
				if time.Until(next) > 0 {
					sleepUntil(ctx, next)
				}
				select {
				case due <- next:
				case <-ctx.Done():
					return
				}
			}
		})
	})
	return tallyWindow(ctx, from, to, &wg, res)
}

func sleepUntil(ctx context.Context, t time.Time) {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}

// cpuTime is the user and system CPU this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// sysCPU is the machine's CPU time so far, from /proc/stat, in ticks.
type sysCPU struct{ idle, total uint64 }

func readSysCPU() sysCPU {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return sysCPU{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var c sysCPU
	if len(f) < 5 || f[0] != "cpu" {
		return c
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			c.idle += n
		}
		if i < 8 { // user … steal; guest time is already in user
			c.total += n
		}
	}
	return c
}

// idleSince is the idle share of the machine's CPUs between then and c:
// on a shared machine, near zero means the figures are CPU-bound, by
// this benchmark or by others.
func (c sysCPU) idleSince(then sysCPU) float64 {
	if c.total <= then.total {
		return 0
	}
	return float64(c.idle-then.idle) / float64(c.total-then.total)
}

// heapAllocs is how many heap objects this process has allocated so far;
// runtime/metrics reads it without stopping the world.
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// newTransport is the load generator's shared transport: one keep-alive
// connection per client, so the run measures serving, not dialling.
func newTransport(clients int) *http.Transport {
	return &http.Transport{
		Proxy:               nil, // loopback only: never through a proxy
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        clients,
		MaxIdleConnsPerHost: clients,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
}

// httpDoer asks base's /v1/openid with GET ?code=, the most common shape,
// a fresh code every time (prefix, client, sequence): real traffic never
// repeats a code, and de-duplication must pay for every one.
func httpDoer(base, prefix string, tr *http.Transport) doer {
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	path := base + "/v1/openid?code=" + prefix
	return func(ctx context.Context, c, seq int) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, path+strconv.Itoa(c)+"-"+strconv.Itoa(seq), nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return err
	}
}
