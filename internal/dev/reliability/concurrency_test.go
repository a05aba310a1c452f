package reliability_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/fakewx"
)

// TestNoCrossTalkUnderConcurrency: 10,000 requests at once, with distinct
// codes over two apps, through edge, NATS and two workers. Every answer
// is a 200 carrying the openid and unionid of its own appid and code, and
// WeChat is asked exactly once per code.
//
// Protection: per-request state end to end (the edge's per-request NATS
// reply inbox, the worker copying what it needs off each message before
// handing it to a goroutine, one reply per exchange to its own subject).
// Any sharing shows up as an answer carrying another code's openid, and
// under -race as a data race.
//
// Not parallel: it loads both cores, and other tests' time bounds should
// not pay for it. With -short it sends 1,000.
func TestNoCrossTalkUnderConcurrency(t *testing.T) {
	n := 10_000
	if testing.Short() {
		n = 1_000
	}
	apps := []fakewx.App{testbed.App, testbed.App2}
	b := testbed.New(t, testbed.Options{Apps: apps})
	// Warnings only: 20,000 debug and info lines would cost more than the
	// requests under -race, and the secrets test covers what they say.
	b.Logger = slog.New(slog.NewJSONHandler(b.Logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := b.WorkerConfig(apps...)
	b.StartWorker(cfg)
	b.StartWorker(cfg)
	// The budget only has to outlast the queue: 10,000 requests share 512
	// connections and two cores.
	const budget = 60 * time.Second
	base := serveEdge(t, edgeConn(b), edge.Config{Timeout: budget}, b.Logger)
	// 512 connections rather than 10,000: both ends of every connection
	// live in this process, and the file-descriptor limit (often 1024,
	// 20,000 here) must hold for the whole package. Requests beyond that
	// queue in the transport, still all in flight at once from the
	// service's point of view of goroutines and NATS.
	c := newClient(t, 512)

	type job struct{ appid, code string }
	jobs := make([]job, n)
	for i := range jobs {
		jobs[i] = job{apps[i%2].AppID, uniq(fmt.Sprintf("crosstalk%d", i))}
	}
	replies := make([]reply, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Go(func() {
			<-start
			q := url.Values{"appid": {j.appid}, "code": {j.code}}
			replies[i] = get(c, base+"/v1/openid?"+q.Encode())
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d requests answered in %v", n, time.Since(began).Round(time.Millisecond))

	bad := 0
	for i, r := range replies {
		j := jobs[i]
		unionid := "" // App2 is bound to no open-platform account
		if j.appid == testbed.App.AppID {
			unionid = fakewx.UnionID(j.appid, j.code)
		}
		if r.err == nil && r.status == http.StatusOK && r.res.OpenID == fakewx.OpenID(j.appid, j.code) && r.res.UnionID == unionid {
			continue
		}
		if bad++; bad <= 10 {
			t.Errorf("%s/%s: %v", j.appid, j.code, r)
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d answers wrong", bad, n)
	}
	if got := b.Fake.TotalCalls(); got != int64(n) {
		t.Errorf("WeChat was called %d times for %d codes", got, n)
	}
}
