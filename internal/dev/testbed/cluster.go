package testbed

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/natstest"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/natsconn"
)

// Cluster is a bed whose NATS is a cluster of embedded servers routed on
// loopback, so that edge and workers can sit on different nodes as they
// do in production. Bed.NATS is the first node.
type Cluster struct {
	*Bed
	Nodes []*server.Server
}

// NewCluster starts an n-node NATS cluster with JetStream and the fake
// upstream. Options.NoJS is ignored: a cluster always has JetStream.
func NewCluster(t testing.TB, n int, o Options) *Cluster {
	t.Helper()
	nodes := natstest.StartCluster(t, n)
	return &Cluster{Bed: newBed(t, o, nodes[0]), Nodes: nodes}
}

// ConnectTo opens a connection to node i only (no other node's URL, so
// it cannot drift to another), closed when the test ends.
func (c *Cluster) ConnectTo(i int, name string, extra ...nats.Option) *nats.Conn {
	c.T.Helper()
	opts := append(natsconn.Resilient(name, c.Logger), extra...)
	opts = append(opts, nats.DontRandomize(), nats.IgnoreDiscoveredServers())
	nc, err := nats.Connect(c.Nodes[i].ClientURL(), opts...)
	if err != nil {
		c.T.Fatal(err)
	}
	c.T.Cleanup(nc.Close)
	return nc
}

// StartWorkerOn runs a worker with cfg on its own connection to node i.
func (c *Cluster) StartWorkerOn(i int, cfg exchange.Config) *Worker {
	c.T.Helper()
	return c.startWorkerOn(c.ConnectTo(i, "worker"), cfg)
}

// StartEdgeOn serves an edge connected to node i over real HTTP on
// 127.0.0.1, with /readyz following the workers as probe says, and
// returns its URL.
func (c *Cluster) StartEdgeOn(i int, timeout time.Duration, probe edge.ProbeOptions) string {
	c.T.Helper()
	return c.startEdgeOn(c.ConnectTo(i, "edge", nats.ReconnectBufSize(-1)), timeout, probe)
}
