package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// runSeq makes every run's codes differ from every other run's.
var runSeq atomic.Int64

// codePrefix starts the codes of one run: unique across runs and
// processes, so that no code is ever sent twice, as in real traffic.
func codePrefix() string {
	return fmt.Sprintf("b%x-%d-", time.Now().UnixNano()&0xffffffff, runSeq.Add(1))
}

// merge sums runs of one setup: the rate over all their windows, the
// quantiles over all their requests.
func merge(runs []loadResult) loadResult {
	var out loadResult
	for _, r := range runs {
		out.ok += r.ok
		out.errs += r.errs
		out.window += r.window
		out.cpu += r.cpu
		out.allocs += r.allocs
		out.idle += r.idle / float64(len(runs))
		out.lat = append(out.lat, r.lat...)
		if out.firstErr == nil {
			out.firstErr = r.firstErr
		}
	}
	slices.Sort(out.lat)
	return out
}

func roundsNote(runs []loadResult) string {
	if len(runs) < 2 {
		return ""
	}
	var s []string
	for _, r := range runs {
		s = append(s, thousands(r.rps()))
	}
	return "rounds " + strings.Join(s, " / ")
}

// scenario1 is the cost of the pipeline against the direct handler: zero
// upstream latency, so only our own CPU and hops count; 64 clients;
// baseline and pipeline alternate so that the machine's drift hits both.
func scenario1(ctx context.Context, e *env) ([]row, error) {
	const clients = 64
	st, err := newRig(0, e)
	if err != nil {
		return nil, err
	}
	defer st.close()
	edgeURL, err := st.startEdge()
	if err != nil {
		return nil, err
	}
	baseURL, err := st.startBaseline()
	if err != nil {
		return nil, err
	}

	type variant struct {
		name, slug      string
		pipeline, dedup bool
		runs            []loadResult
	}
	vs := []*variant{
		{name: "baseline: direct handler, 64 clients, 0 ms upstream", slug: "baseline"},
		{name: "pipeline: edge+NATS+worker, dedup on", slug: "pipeline-dedup", pipeline: true, dedup: true},
		{name: "pipeline: edge+NATS+worker, dedup off", slug: "pipeline-nodedup", pipeline: true},
	}
	closed := func(do doer) loadResult { return closedLoop(ctx, clients, e.opts.Warmup, e.opts.Duration, do) }
	runOne := func(v *variant, profile string, load func(doer) loadResult) (loadResult, error) {
		target := baseURL
		if v.pipeline {
			stop, err := st.startWorkers(1, workerConfig(defaultConcurrency, v.dedup))
			if err != nil {
				return loadResult{}, err
			}
			defer stop()
			target = edgeURL
		}
		tr := newTransport(clients)
		defer tr.CloseIdleConnections()
		if err := probe(ctx, tr, target, codePrefix()+"probe"); err != nil {
			return loadResult{}, err
		}
		if profile != "" {
			stop, err := profileRun(st, profile)
			if err != nil {
				return loadResult{}, err
			}
			defer stop()
		}
		res := load(httpDoer(target, codePrefix(), tr))
		return res, res.check(v.name)
	}
	for range e.opts.Rounds {
		for _, v := range vs {
			res, err := runOne(v, "", closed)
			if err != nil {
				return nil, err
			}
			v.runs = append(v.runs, res)
		}
	}

	// Whether "dedup on" really de-duplicated: a de-duplicating worker
	// keeps its codes in a JetStream key-value bucket.
	buckets, err := st.kvBuckets(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing key-value buckets: %w", err)
	}
	if len(buckets) == 0 {
		return nil, errors.New("the de-duplicating worker left no key-value bucket: is de-duplication on?")
	}

	base := merge(vs[0].runs)
	rows := []row{{scenario: "1", what: vs[0].name, res: &base, note: roundsNote(vs[0].runs)}}
	for _, v := range vs[1:] {
		m := merge(v.runs)
		note := fmt.Sprintf("%.2f× baseline; p99 %+.2fms", m.rps()/base.rps(), msDiff(m.pct(0.99), base.pct(0.99)))
		if r := roundsNote(v.runs); r != "" {
			note += "; " + r
		}
		rows = append(rows, row{scenario: "1", what: v.name, res: &m, note: note})
	}

	// The closed loop keeps the CPUs saturated, so its latencies are
	// mostly queueing: 64 clients over the rate. What the hops themselves
	// add to a request shows at a fixed rate the machine handles with
	// room to spare: a tenth of the baseline's closed-loop rate, the
	// variants alternating over the same rounds.
	rate := max(100, math.Round(base.rps()/10/100)*100)
	fixed := func(do doer) loadResult { return openLoop(ctx, rate, clients, e.opts.Warmup, e.opts.Duration, do) }
	atRate := make([][]loadResult, len(vs))
	for range e.opts.Rounds {
		for i, v := range vs {
			res, err := runOne(v, "", fixed)
			if err != nil {
				return rows, err
			}
			atRate[i] = append(atRate[i], res)
		}
	}
	fixedBase := merge(atRate[0])
	for i, v := range vs {
		m := merge(atRate[i])
		what := fmt.Sprintf("%s at a fixed %s req/s", strings.Replace(v.name, ", 64 clients, 0 ms upstream", "", 1), thousands(rate))
		note := "open loop; latency counts from each request's due time"
		if i > 0 {
			note = fmt.Sprintf("p50 %+.2fms, p99 %+.2fms against the baseline at this rate", msDiff(m.pct(0.5), fixedBase.pct(0.5)),
				msDiff(m.pct(0.99), fixedBase.pct(0.99)))
		}
		rows = append(rows, row{scenario: "1f", what: what, res: &m, note: note})
	}

	if e.opts.CPUProfile != "" {
		for _, v := range vs {
			path := e.opts.CPUProfile + "-" + v.slug + ".pprof"
			res, err := runOne(v, path, closed)
			if err != nil {
				return rows, err
			}
			rows = append(rows, row{scenario: "1p", what: v.name + " (profiled, not counted)", res: &res, note: path})
		}
	}
	return rows, nil
}

// msDiff is a-b in milliseconds.
func msDiff(a, b time.Duration) float64 { return float64(a-b) / float64(time.Millisecond) }

// profileRun starts the profiles of one run, into files named after path
// (…/prefix-variant.pprof): CPU into path; allocations into
// -allocs-before and -allocs-after, which are cumulative, so the run's
// own are the difference (go tool pprof -base); lock contention into
// -mutex; with -nats-child, the NATS server's CPU into -nats. stop ends
// them and writes what is written at the end.
func profileRun(st *rig, path string) (stop func(), err error) {
	base := strings.TrimSuffix(path, ".pprof")
	var undo []func()
	stop = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	undo = append(undo, func() { f.Close() })
	if err := pprof.StartCPUProfile(f); err != nil {
		stop()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	undo = append(undo, pprof.StopCPUProfile)
	if err := writeProfile("allocs", base+"-allocs-before.pprof"); err != nil {
		stop()
		return nil, err
	}
	undo = append(undo, func() { writeProfile("allocs", base+"-allocs-after.pprof") })
	// One contended lock in five sampled: enough to rank the waits, little
	// enough not to change them.
	runtime.SetMutexProfileFraction(5)
	undo = append(undo, func() {
		writeProfile("mutex", base+"-mutex.pprof")
		runtime.SetMutexProfileFraction(0)
	})
	stopNATS, err := st.profileNATS(base + "-nats.pprof")
	if err != nil {
		stop()
		return nil, err
	}
	undo = append(undo, stopNATS)
	return stop, nil
}

// writeProfile writes the named runtime profile so far to path.
func writeProfile(name, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("%s profile: %w", name, err)
	}
	defer f.Close()
	return pprof.Lookup(name).WriteTo(f, 0)
}

// scenario2 shows whether one worker is bound by WeChat's latency: 2,000
// clients against 100 ms upstream can at best do 20,000 req/s. The worker
// gets room for all of them (WORKER_CONCURRENCY 2× clients); at the
// default 1024 it would cap at 10,240/s by design. The baseline under the
// same load shows what this machine can do at all.
func scenario2(ctx context.Context, e *env) ([]row, error) {
	const latency = 100 * time.Millisecond
	clients := e.opts.Clients2
	ideal := float64(clients) / latency.Seconds()
	st, err := newRig(latency, e)
	if err != nil {
		return nil, err
	}
	defer st.close()
	edgeURL, err := st.startEdge()
	if err != nil {
		return nil, err
	}
	baseURL, err := st.startBaseline()
	if err != nil {
		return nil, err
	}
	stop, err := st.startWorkers(1, workerConfig(2*clients, true))
	if err != nil {
		return nil, err
	}
	defer stop()

	var rows []row
	for _, t := range []struct{ what, url string }{
		{fmt.Sprintf("pipeline: %s clients, 100 ms upstream, 1 worker (concurrency %d)", thousands(float64(clients)), 2*clients), edgeURL},
		{"baseline: direct handler, same load", baseURL},
	} {
		tr := newTransport(clients)
		if err := probe(ctx, tr, t.url, codePrefix()+"probe"); err != nil {
			return rows, err
		}
		conns := st.up.conns.Load()
		// Dialling thousands of connections takes a moment: warm up longer.
		res := closedLoop(ctx, clients, 2*e.opts.Warmup, e.opts.Duration, httpDoer(t.url, codePrefix(), tr))
		tr.CloseIdleConnections()
		rows = append(rows, row{scenario: "2", what: t.what, res: &res,
			note: fmt.Sprintf("%.2f× ideal %s (%s); %d upstream connections opened", res.rps()/ideal, thousands(ideal),
				coresForIdeal(ideal, res), st.up.conns.Load()-conns)})
		if err := res.check(t.what); err != nil {
			return rows, err
		}
	}
	return rows, nil
}

// coresForIdeal says how many CPUs the ideal rate takes at the CPU per
// request measured: more than the machine has means the run is bound by
// CPU, not by the upstream's latency.
func coresForIdeal(ideal float64, res loadResult) string {
	return fmt.Sprintf("needs %.1f cores at this CPU/req", ideal*res.cpuPerReq().Seconds())
}

// scenario4 is scale-out: workers with WORKER_CONCURRENCY=100 against 50 ms
// upstream can each do at most 2,000 req/s. Clients are twice the
// workers' slots, so that the queue group's random spread never leaves a
// worker idle for want of requests.
func scenario4(ctx context.Context, e *env) ([]row, error) {
	const latency = 50 * time.Millisecond
	perWorker := e.opts.PerWorker
	st, err := newRig(latency, e)
	if err != nil {
		return nil, err
	}
	defer st.close()
	edgeURL, err := st.startEdge()
	if err != nil {
		return nil, err
	}
	var rows []row
	var one float64
	for _, n := range []int{1, 2, 4} {
		stop, err := st.startWorkers(n, workerConfig(perWorker, true))
		if err != nil {
			return rows, err
		}
		clients := 2 * perWorker * n
		tr := newTransport(clients)
		err = probe(ctx, tr, edgeURL, codePrefix()+"probe")
		var res loadResult
		if err == nil {
			res = closedLoop(ctx, clients, e.opts.Warmup, e.opts.Duration, httpDoer(edgeURL, codePrefix(), tr))
			err = res.check(fmt.Sprintf("%d workers", n))
		}
		tr.CloseIdleConnections()
		stop()
		if err != nil {
			return rows, err
		}
		ideal := float64(n*perWorker) / latency.Seconds()
		if n == 1 {
			one = res.rps()
		}
		rows = append(rows, row{scenario: "4", res: &res,
			what: fmt.Sprintf("pipeline: %d worker(s) × concurrency %d, %d clients, 50 ms upstream", n, perWorker, clients),
			note: fmt.Sprintf("%.2f× ideal %s (%s); %.2f× 1 worker", res.rps()/ideal, thousands(ideal),
				coresForIdeal(ideal, res), res.rps()/one)})
	}
	return rows, nil
}

// scenario5 is other services' path: a Go client asking
// wxlogin.code2session over NATS, without the edge.
func scenario5(ctx context.Context, e *env) ([]row, error) {
	const clients = 64
	st, err := newRig(0, e)
	if err != nil {
		return nil, err
	}
	defer st.close()
	stop, err := st.startWorkers(1, workerConfig(defaultConcurrency, true))
	if err != nil {
		return nil, err
	}
	defer stop()
	nc, err := st.connect("wxbench-client")
	if err != nil {
		return nil, err
	}
	prefix := codePrefix()
	subject := protocol.Subject(protocol.DefaultSubjectPrefix)
	budget := strconv.FormatInt(edgeTimeout.Milliseconds(), 10)
	// Written as a service would: marshal the request, send the budget,
	// decode the reply.
	do := func(ctx context.Context, c, seq int) error {
		data, err := json.Marshal(protocol.Request{AppID: benchApp.AppID, Code: prefix + strconv.Itoa(c) + "-" + strconv.Itoa(seq)})
		if err != nil {
			return err
		}
		msg := nats.NewMsg(subject)
		msg.Data = data
		msg.Header.Set(protocol.HeaderTimeout, budget)
		reply, err := nc.RequestMsg(msg, edgeTimeout)
		if err != nil {
			return err
		}
		if _, e := protocol.DecodeReply(reply); e != nil {
			return e
		}
		return nil
	}
	res := closedLoop(ctx, clients, e.opts.Warmup, e.opts.Duration, do)
	return []row{{scenario: "5", what: "NATS only: 64 requesters on one connection, 1 worker, 0 ms upstream", res: &res}},
		res.check("NATS only")
}
