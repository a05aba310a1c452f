package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// A request of the mix: the share of traffic, and how its code is made.
// The magic codes of fakewx make WeChat misbehave; see its package doc.
type kindOfCode struct {
	share int // percent
	code  func(seq int64, recent *recentCodes) string
}

func magic(prefix string) func(int64, *recentCodes) string {
	return func(seq int64, _ *recentCodes) string { return prefix + strconv.FormatInt(seq, 36) }
}

// mix is the traffic: mostly ordinary logins, and every kind of trouble
// WeChat and clients cause, so that every path runs for the whole soak.
var mix = []kindOfCode{
	{70, magic("soak-")},       // ordinary: 200
	{5, magic("fx-busy1-")},    // -1 once, then 200 on the retry
	{4, magic("fx-5xx1-")},     // an HTML 502 once, then 200
	{3, magic("fx-garbage1-")}, // not JSON once, then 200
	{3, magic("fx-limit1-")},   // 45011 once: a longer backoff, then 200
	{2, magic("fx-slow300-")},  // 300ms more: 200
	{3, magic("fx-invalid-")},  // 401 invalid_code
	{2, magic("fx-blocked-")},  // 403 user_blocked
	{1, magic("fx-hang-")},     // no answer: 504 at EDGE_TIMEOUT
	{3, magic("bad code ")},    // a space: 400 bad_request at the edge
	{4, func(seq int64, r *recentCodes) string { return r.pick(seq) }}, // a repeat: the first answer again
}

// recentCodes remembers recent ordinary codes, for repeats.
type recentCodes struct {
	mu    sync.Mutex
	codes [256]string
	n     int
}

func (r *recentCodes) add(code string) {
	r.mu.Lock()
	r.codes[r.n%len(r.codes)] = code
	r.n++
	r.mu.Unlock()
}

func (r *recentCodes) pick(seq int64) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == 0 {
		return "soak-" + strconv.FormatInt(seq, 36)
	}
	return r.codes[rand.IntN(min(r.n, len(r.codes)))]
}

// window gathers one report interval.
type window struct {
	mu        sync.Mutex
	latencies []time.Duration
	kinds     map[string]int
}

func (w *window) add(kind string, d time.Duration) {
	w.mu.Lock()
	w.latencies = append(w.latencies, d)
	w.kinds[kind]++
	w.mu.Unlock()
}

func (w *window) take() ([]time.Duration, map[string]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	l, k := w.latencies, w.kinds
	w.latencies, w.kinds = nil, map[string]int{}
	return l, k
}

// sample is the process's memory at one moment.
type sample struct {
	at   time.Duration
	rss  uint64
	heap uint64
}

// result is what the whole run saw.
type result struct {
	sent, skipped  int64
	kinds          map[string]int
	latencies      []time.Duration
	wrongOpenID    atomic.Int64
	late           atomic.Int64 // answers later than EDGE_TIMEOUT + 1s
	samples        []sample
	goroutinesLast int
	sending        time.Duration // time spent sending
	elapsed        time.Duration // and waiting for the last answers
}

// drive sends o.rate requests per second for o.duration, open loop (a
// slow service does not slow the pace), printing a line every o.every.
func drive(ctx context.Context, o options, base string, stdout io.Writer) *result {
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, IdleConnTimeout: 30 * time.Second},
		Timeout:   o.timeout + 5*time.Second,
	}
	defer client.CloseIdleConnections()
	// Requests in flight are capped so that a stalled service cannot make
	// the driver itself grow without bound; those not sent are counted.
	maxInFlight := int64(o.rate*(o.timeout+time.Second).Seconds()) * 2
	var inFlight atomic.Int64

	res := &result{kinds: map[string]int{}}
	cur := &window{kinds: map[string]int{}}
	var recent recentCodes
	var wg sync.WaitGroup
	start := time.Now()

	fmt.Fprintf(stdout, "soak: %v at %g requests/s, %d workers, WeChat latency %v, EDGE_TIMEOUT %v; memory verdict after a %v warm-up\n",
		o.duration, o.rate, o.workers, o.latency, o.timeout, o.warmup)
	fmt.Fprintf(stdout, "%8s %7s %8s %8s %6s %9s %9s  %s\n", "time", "answers", "p50", "p99", "gorout", "rss", "heap", "answers by kind")

	// Every tick sends what is due since the start, so the pace holds on
	// average even when a busy scheduler delivers ticks late.
	pace := time.NewTicker(10 * time.Millisecond)
	defer pace.Stop()
	// Memory is sampled every second (more often with short reports), so
	// that the verdict averages many samples rather than a few reports.
	memTick := time.NewTicker(min(time.Second, o.every/2))
	defer memTick.Stop()
	report := time.NewTicker(o.every)
	defer report.Stop()
	end := time.NewTimer(o.duration)
	defer end.Stop()

	// flush prints the interval's line and adds it to the totals.
	flush := func() {
		lat, kinds := cur.take()
		res.latencies = append(res.latencies, lat...)
		for k, n := range kinds {
			res.kinds[k] += n
		}
		s := memory(time.Since(start))
		if n := len(res.samples); n > 0 {
			s = res.samples[n-1]
		}
		fmt.Fprintf(stdout, "%8s %7d %8s %8s %6d %8.1fM %8.1fM  %s\n",
			time.Since(start).Round(time.Second), len(lat), pct(lat, 50), pct(lat, 99),
			runtime.NumGoroutine(), mib(s.rss), mib(s.heap), formatKinds(kinds))
	}
	var seq int64
	pick := func() string {
		n := rand.IntN(100)
		for _, k := range mix {
			if n < k.share {
				return k.code(seq, &recent)
			}
			n -= k.share
		}
		return mix[0].code(seq, &recent)
	}
loop:
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout, "soak: interrupted")
			break loop
		case <-end.C:
			break loop
		case <-memTick.C:
			s := memory(time.Since(start))
			res.samples = append(res.samples, s)
		case <-report.C:
			flush()
		case <-pace.C:
			for due := int64(o.rate * time.Since(start).Seconds()); seq < due; {
				seq++
				if inFlight.Load() >= maxInFlight {
					res.skipped++
					continue
				}
				code := pick()
				res.sent++
				inFlight.Add(1)
				wg.Go(func() {
					defer inFlight.Add(-1)
					kind, d, wrong := ask(client, base, code)
					if wrong {
						res.wrongOpenID.Add(1)
					}
					if d > o.timeout+time.Second {
						res.late.Add(1)
					}
					if kind == "ok" && strings.HasPrefix(code, "soak-") {
						recent.add(code)
					}
					cur.add(kind, d)
				})
			}
		}
	}
	res.sending = time.Since(start)
	wg.Wait() // the last answers come within EDGE_TIMEOUT
	res.samples = append(res.samples, memory(time.Since(start)))
	flush()
	res.elapsed = time.Since(start)
	res.goroutinesLast = runtime.NumGoroutine()
	return res
}

// ask sends one request and classifies the answer: its kind ("ok", an
// error kind, or "no_answer"), how long it took, and whether a 200
// carried an openid other than the code's own.
func ask(c *http.Client, base, code string) (kind string, took time.Duration, wrong bool) {
	start := time.Now()
	resp, err := c.Get(base + "/v1/openid?code=" + url.QueryEscape(code))
	if err != nil {
		return "no_answer", time.Since(start), false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	took = time.Since(start)
	if resp.StatusCode == http.StatusOK {
		var r protocol.Result
		if json.Unmarshal(body, &r) != nil || r.OpenID != fakewx.OpenID(fakewx.DemoAppID, code) {
			return "wrong_openid", took, true
		}
		return "ok", took, false
	}
	var e protocol.ErrorBody
	if json.Unmarshal(body, &e) != nil || e.Error == "" {
		return "not_contract_" + strconv.Itoa(resp.StatusCode), took, false
	}
	return string(e.Error), took, false
}

// memory reads the process's resident set (VmRSS) and the Go heap in use.
func memory(at time.Duration) sample {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return sample{at: at, rss: rss(m.Sys), heap: m.HeapInuse}
}

// rss is VmRSS from /proc/self/status, or fallback where there is none.
func rss(fallback uint64) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return fallback
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return fallback
}

func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)*p/100, len(s)-1)].Round(time.Millisecond).String()
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func formatKinds(kinds map[string]int) string {
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return kinds[names[i]] > kinds[names[j]] })
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = k + "=" + strconv.Itoa(kinds[k])
	}
	return strings.Join(parts, " ")
}

// verdict prints the totals and decides: memory flat (the mean of the
// last third of the measured samples within max-growth of the first
// third's), no wrong openid, no answer past EDGE_TIMEOUT + 1s.
func (r *result) verdict(o options, stdout io.Writer) error {
	fmt.Fprintf(stdout, "\ntotal: %d sent in %v (%.0f/s), %d not sent (driver's in-flight cap), p50 %s, p99 %s\n",
		r.sent, r.sending.Round(time.Second), float64(r.sent)/r.sending.Seconds(), r.skipped, pct(r.latencies, 50), pct(r.latencies, 99))
	fmt.Fprintf(stdout, "answers: %s\n", formatKinds(r.kinds))
	var problems []string
	if n := r.wrongOpenID.Load(); n > 0 {
		problems = append(problems, fmt.Sprintf("%d answers carried the wrong openid", n))
	}
	if n := r.late.Load(); n > 0 {
		problems = append(problems, fmt.Sprintf("%d answers came later than EDGE_TIMEOUT + 1s", n))
	}
	if n := r.kinds["no_answer"]; n > 0 {
		problems = append(problems, fmt.Sprintf("%d requests got no HTTP answer", n))
	}

	var measured []sample
	for _, s := range r.samples {
		if s.at >= o.warmup {
			measured = append(measured, s)
		}
	}
	if len(measured) < 6 {
		fmt.Fprintf(stdout, "memory: only %d samples after the %v warm-up, no verdict: run longer, or shorten -result-ttl and -code-ttl\n",
			len(measured), o.warmup)
	} else {
		third := len(measured) / 3
		first, last := measured[:third], measured[len(measured)-third:]
		for _, m := range []struct {
			name string
			get  func(sample) uint64
		}{{"RSS", func(s sample) uint64 { return s.rss }}, {"heap", func(s sample) uint64 { return s.heap }}} {
			a, b := mean(first, m.get), mean(last, m.get)
			growth := 100 * (b - a) / a
			flat := growth <= o.maxGrowth || b-a <= 8<<20
			verdict := "flat"
			if !flat {
				verdict = "GREW"
				problems = append(problems, fmt.Sprintf("%s grew %.1f%%", m.name, growth))
			}
			fmt.Fprintf(stdout, "memory: %s %.1f MiB over %v..%v, %.1f MiB over %v..%v: %+.1f%% (limit %g%% and 8 MiB): %s\n",
				m.name, a/(1<<20), first[0].at.Round(time.Second), first[len(first)-1].at.Round(time.Second),
				b/(1<<20), last[0].at.Round(time.Second), last[len(last)-1].at.Round(time.Second), growth, o.maxGrowth, verdict)
		}
	}
	fmt.Fprintf(stdout, "goroutines at the end: %d\n", r.goroutinesLast)
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	fmt.Fprintln(stdout, "soak: PASS")
	return nil
}

func mean(s []sample, get func(sample) uint64) float64 {
	var sum float64
	for _, x := range s {
		sum += float64(get(x))
	}
	return sum / float64(len(s))
}
