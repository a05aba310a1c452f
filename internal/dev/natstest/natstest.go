// Package natstest starts real NATS servers for tests: one embedded
// server, or a cluster of them routed on loopback, each shut down when
// the test ends. It lives under internal/dev because it links package
// testing, which no production binary may carry.
package natstest

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/wxlogin/wxlogin/internal/embednats"
)

// Start starts a real server on a random loopback port for t and shuts
// it down when t ends. JetStream is on, in t's temp dir, unless noJS.
func Start(t testing.TB, noJS bool) *server.Server {
	t.Helper()
	o := embednats.Options{Port: -1, JetStream: !noJS}
	if o.JetStream {
		o.StoreDir = t.TempDir()
	}
	s, err := embednats.Start(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// StartCluster starts an n-node cluster with JetStream on loopback and
// waits until every node sees all its routes and JetStream has a leader.
func StartCluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	// A JetStream cluster refuses to start on a node with no configured
	// routes, the first one included; so every node is told every other
	// node's cluster port up front, and the ports are picked beforehand.
	ports := freePorts(t, n)
	var nodes []*server.Server
	for i := range n {
		o := embednats.Options{
			Name: fmt.Sprintf("n%d", i+1), Port: -1,
			JetStream: true, StoreDir: t.TempDir(),
			ClusterName: "wxtest", ClusterPort: ports[i],
		}
		for j, p := range ports {
			if j != i {
				o.Routes = append(o.Routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
			}
		}
		s, err := embednats.Start(o, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
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
			for _, s := range nodes {
				t.Logf("%s routes=%d js=%v current=%v leader=%v", s.Name(), s.NumRoutes(), s.JetStreamEnabled(), s.JetStreamIsCurrent(), s.JetStreamIsLeader())
			}
			t.Fatalf("cluster of %d did not form within 20s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freePorts returns n loopback ports that were free a moment ago. They are
// held open together, so they differ from each other.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
