package edge_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/fakewx"
)

// TestClusterScaleOut is the scale-out proof without Docker (task
// cluster): a real 3-node NATS cluster on loopback, the edge on node 1,
// workers joining and leaving on nodes 2 and 3, requests flowing the
// whole time, and the edge's readiness following the workers.
func TestClusterScaleOut(t *testing.T) {
	c := testbed.NewCluster(t, 3, testbed.Options{})
	probe := edge.ProbeOptions{Interval: 100 * time.Millisecond, Window: 100 * time.Millisecond, MaxAge: time.Second}
	base := c.StartEdgeOn(0, 2*time.Second, probe)
	waitReady := func(want int, what string) {
		t.Helper()
		testbed.Eventually(t, 10*time.Second, what, func() bool { return testbed.HTTPStatus(base+"/readyz") == want })
		t.Logf("readyz %d: %s", want, readyzBody(t, base))
	}

	// No worker anywhere: not ready, and a request is refused at once.
	waitReady(503, "readyz 503 before any worker")
	if body := readyzBody(t, base); !strings.Contains(body, "worker") {
		t.Errorf("readyz body %q does not say that workers are missing", body)
	}
	if r := get(t, base+"/v1/openid?code=cluster-none"); r.status != 503 {
		t.Fatalf("no worker: got %d %s, want 503", r.status, r.raw)
	}

	load := startLoad(t, base)
	defer load.stop()

	// Until node 1 has learnt of a's subscription on node 2, a request
	// may still find no responders; readiness says when it has.
	load.phase("a joining")
	a := c.StartWorkerOn(1, c.WorkerConfig())
	waitReady(200, "readyz 200 once worker a serves from node 2")
	load.phase("a")
	if r := get(t, base+"/v1/openid?code=cluster-full"); r.status != 200 || r.openid != fakewx.OpenID(testbed.App.AppID, "cluster-full") {
		t.Fatalf("through the cluster: got %d %s, want the code's openid", r.status, r.raw)
	}
	load.await(t, "a", 20)

	load.phase("a+b")
	b := c.StartWorkerOn(2, c.WorkerConfig())
	// The queue group spreads requests over both nodes' workers.
	testbed.Eventually(t, 10*time.Second, "both workers serving", func() bool {
		return a.Stats().Requests > 0 && b.Stats().Requests > 0 && load.count("a+b") >= 20
	})

	// a leaves gracefully while requests flow: none is lost, and the
	// edge stays ready because b still answers.
	load.phase("a leaving")
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	load.phase("b")
	before := b.Stats().Requests
	load.await(t, "b", 20)
	if b.Stats().Requests <= before {
		t.Error("b took no requests after a left")
	}

	// b crashes (its connection drops without a drain): no worker is left,
	// so the edge turns unready and refuses requests at once.
	load.phase("b crashed")
	b.NC.Close()
	waitReady(503, "readyz 503 once the last worker is gone")
	load.phase("none")
	load.await(t, "none", 5)

	// c joins on node 3 and the edge is ready again.
	load.phase("c joining")
	c3 := c.StartWorkerOn(2, c.WorkerConfig())
	waitReady(200, "readyz 200 once worker c serves from node 3")
	load.phase("c")
	load.await(t, "c", 20)
	load.stop()

	want := map[string]int{"a": 200, "a+b": 200, "a leaving": 200, "b": 200, "none": 503, "c": 200}
	// While a worker serves throughout, even a request in flight across a
	// join or a graceful leave must succeed.
	for _, span := range []string{"a→a+b", "a+b→a leaving", "a leaving→b"} {
		want[span] = 200
	}
	for phase, want := range want {
		for status, n := range load.results(phase) {
			if status != want {
				t.Errorf("phase %q: %d requests got %d, want every one %d", phase, n, status, want)
			}
		}
	}
	if s := load.slowest("none"); s > time.Second {
		t.Errorf("with no worker a request took %v; want a fast 503", s)
	}
	if c3.Stats().Requests == 0 {
		t.Error("c took no requests")
	}
	t.Logf("requests by phase: %v", load.summary())
}

// load sends requests one after another, each with a new code, and files
// every answer under the phase that was current for its whole flight, or
// under "before→after" when its flight spanned a phase change.
type load struct {
	base string
	cur  atomic.Pointer[string]
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	mu      sync.Mutex
	byPhase map[string]map[int]int
	slow    map[string]time.Duration
}

func startLoad(t *testing.T, base string) *load {
	l := &load{base: base, done: make(chan struct{}), byPhase: map[string]map[int]int{}, slow: map[string]time.Duration{}}
	l.phase("start")
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		client := &http.Client{Timeout: 5 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-l.done:
				return
			default:
			}
			before := l.cur.Load()
			start := time.Now()
			status := 0
			resp, err := client.Get(fmt.Sprintf("%s/v1/openid?appid=%s&code=cluster-%d", base, testbed.App.AppID, i))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			took := time.Since(start)
			phase := *before
			if after := l.cur.Load(); after != before {
				phase += "→" + *after
			}
			l.record(phase, status, took)
		}
	}()
	return l
}

func (l *load) phase(name string) { l.cur.Store(&name) }

func (l *load) stop() {
	l.once.Do(func() { close(l.done) })
	l.wg.Wait()
}

func (l *load) record(phase string, status int, took time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byPhase[phase] == nil {
		l.byPhase[phase] = map[int]int{}
	}
	l.byPhase[phase][status]++
	l.slow[phase] = max(l.slow[phase], took)
}

func (l *load) count(phase string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.byPhase[phase] {
		n += c
	}
	return n
}

// await waits until n answers were filed under phase.
func (l *load) await(t *testing.T, phase string, n int) {
	t.Helper()
	testbed.Eventually(t, 10*time.Second, fmt.Sprintf("%d requests in phase %q", n, phase), func() bool { return l.count(phase) >= n })
}

func (l *load) results(phase string) map[int]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[int]int{}
	for s, n := range l.byPhase[phase] {
		out[s] = n
	}
	return out
}

func (l *load) slowest(phase string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.slow[phase]
}

func (l *load) summary() map[string]map[int]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]map[int]int{}
	for p, m := range l.byPhase {
		out[p] = map[int]int{}
		for s, n := range m {
			out[p][s] = n
		}
	}
	return out
}
