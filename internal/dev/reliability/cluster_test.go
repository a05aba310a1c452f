package reliability_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/natstest"
	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/natsconn"
)

// TestClusterNodeLossFailover: in a 3-node cluster, the node the edge is
// connected to goes down. The edge, given all three URLs, moves to
// another node and keeps serving; no request waits past its budget.
//
// Protection: connecting with every cluster URL and reconnecting for
// ever (natsconn.Resilient). With only its own node's URL, or with a
// reconnect limit, the edge would answer 503 for as long as that node is
// down.
func TestClusterNodeLossFailover(t *testing.T) {
	t.Parallel()
	nodes := natstest.StartCluster(t, 3)
	b := testbed.New(t, testbed.Options{NoJS: true}) // its single server is unused; the fake and logs are
	urls := make([]string, len(nodes))
	for i, s := range nodes {
		urls[i] = s.ClientURL()
	}
	connect := func(name string, urls []string, extra ...nats.Option) *nats.Conn {
		opts := append(natsconn.Resilient(name, b.Logger), extra...)
		nc, err := nats.Connect(strings.Join(urls, ","), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	edgeNC := connect("wxlogin-edge", urls, nats.ReconnectBufSize(-1))
	testbed.Eventually(t, 5*time.Second, "edge connected", edgeNC.IsConnected)
	lost := -1
	for i, s := range nodes {
		if s.Name() == edgeNC.ConnectedServerName() {
			lost = i
		}
	}
	if lost < 0 {
		t.Fatalf("edge connected to %q, not a node of the cluster", edgeNC.ConnectedServerName())
	}
	// One worker sits on a node that survives; another knows every URL
	// and may share the edge's fate and fail over too.
	startWorker := func(nc *nats.Conn) {
		w, err := b.Stack().StartWorker(b.WorkerConfig(), nc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Stop() })
	}
	startWorker(connect("worker-pinned", []string{urls[(lost+1)%3]}, nats.IgnoreDiscoveredServers()))
	startWorker(connect("worker-roaming", urls))

	const budget = 2 * time.Second
	base := serveEdge(t, edgeNC, edge.Config{Timeout: budget}, b.Logger)
	c := newClient(t, 16)
	testbed.Eventually(t, 10*time.Second, "a success through the cluster", func() bool {
		code := uniq("cluster-before")
		return get(c, base+"/v1/openid?code="+code).ok(code)
	})
	l := startLoad(c, base, 4)
	defer l.finish()
	testbed.Eventually(t, 10*time.Second, "load flowing", func() bool { return l.successesSince(time.Now().Add(-time.Second)) >= 10 })

	l.phase("failover")
	nodes[lost].Shutdown()
	gone := time.Now()
	testbed.Eventually(t, 10*time.Second, "edge on another node", func() bool {
		return edgeNC.IsConnected() && edgeNC.ConnectedServerName() != nodes[lost].Name()
	})
	testbed.Eventually(t, 10*time.Second, "successes after the node loss", func() bool { return l.successesSince(gone) >= 20 })
	l.phase("after")
	after := time.Now()
	testbed.Eventually(t, 10*time.Second, "steady after failover", func() bool { return l.successesSince(after) >= 20 })

	replies := l.finish()
	kinds := checkBounded(t, replies, budget)
	for _, r := range replies {
		if r.phase == "after" && r.status != http.StatusOK {
			t.Errorf("after failover: %v", r.reply)
		}
	}
	t.Logf("edge moved from %s to %s; replies by phase and kind: %v", nodes[lost].Name(), edgeNC.ConnectedServerName(), kinds)
}
