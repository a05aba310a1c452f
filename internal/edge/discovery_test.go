package edge_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
)

// TestReadinessFollowsWorkers: /readyz is 200 only while a worker of the
// edge's own subject answers discovery, and says why when it is not.
func TestReadinessFollowsWorkers(t *testing.T) {
	b := testbed.New(t, testbed.Options{NoJS: true})
	nc := b.Connect("edge")
	workers := edge.NewWorkers(nc, "", edge.ProbeOptions{Interval: 50 * time.Millisecond, Window: 50 * time.Millisecond, MaxAge: 300 * time.Millisecond}, b.Logger)
	ctx, cancel := context.WithCancel(context.Background())
	probing := make(chan struct{})
	go func() { defer close(probing); workers.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-probing })
	srv := httptest.NewServer(edge.NewServer(edge.Config{Timeout: time.Second, MaxBody: 4096}, nc, b.Logger, edge.WithWorkers(workers)))
	t.Cleanup(srv.Close)

	wait := func(status int, body, what string) {
		t.Helper()
		testbed.Eventually(t, 5*time.Second, what, func() bool {
			return testbed.HTTPStatus(srv.URL+"/readyz") == status && strings.Contains(readyzBody(t, srv.URL), body)
		})
	}
	wait(503, "no worker is subscribed", "not ready without workers")

	// Another pool's worker answers discovery but serves another subject.
	other := b.WorkerConfig()
	other.SubjectPrefix = "staging.wxlogin"
	b.StartWorker(other)
	wait(503, "none serves wxlogin.code2session", "not ready with another pool's worker only")

	ours := b.StartWorker(b.WorkerConfig())
	wait(200, "worker(s) answered discovery", "ready with a worker")

	// Our worker leaves while the other still answers: readiness lapses
	// once the last answer is older than MaxAge.
	if err := ours.Stop(); err != nil {
		t.Fatal(err)
	}
	wait(503, "none serves wxlogin.code2session", "not ready once our worker left")
}

func readyzBody(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}
