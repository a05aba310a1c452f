package embednats

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ForTest starts a real server on a random loopback port for t and shuts
// it down when t ends. JetStream is on, in t's temp dir, unless noJS.
func ForTest(t testing.TB, noJS bool) *server.Server {
	t.Helper()
	o := Options{Port: -1, JetStream: !noJS}
	if o.JetStream {
		o.StoreDir = t.TempDir()
	}
	s, err := Start(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// ClusterForTest starts an n-node cluster with JetStream on loopback and
// waits until every node sees all its routes and JetStream has a leader.
func ClusterForTest(t testing.TB, n int) []*server.Server {
	t.Helper()
	var nodes []*server.Server
	var seed string
	for i := range n {
		o := Options{
			Name: fmt.Sprintf("n%d", i+1), Port: -1,
			JetStream: true, StoreDir: t.TempDir(),
			ClusterName: "wxtest", ClusterPort: -1,
		}
		if seed != "" {
			o.Routes = []string{seed}
		}
		s, err := Start(o, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		if seed == "" {
			seed = ClusterURL(s)
		}
		nodes = append(nodes, s)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ready := true
		for _, s := range nodes {
			if s.NumRoutes() < n-1 || (s.JetStreamEnabled() && !s.JetStreamIsCurrent()) {
				ready = false
			}
		}
		if ready {
			return nodes
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster of %d did not form within 20s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
