package edge

import (
	"context"
	"sync/atomic"

	"github.com/nats-io/nats.go"
)

// connWatch tells requests in flight that the connection to NATS dropped.
// nats.go keeps such requests waiting while it reconnects, though their
// replies are as good as lost: the worker answered to a subscription the
// server no longer has. Without this they would wait out EDGE_TIMEOUT and
// get 504; with it they get a 503 at once, and the client's retry with the
// same code is answered from the de-duplication store.
type connWatch struct {
	cur atomic.Pointer[epoch]
}

// epoch is one stretch of connectedness; ctx is done when it ends.
type epoch struct {
	ctx  context.Context
	lose context.CancelFunc
}

func newEpoch() *epoch {
	ctx, lose := context.WithCancel(context.Background())
	return &epoch{ctx, lose}
}

func watchConn(nc *nats.Conn) *connWatch {
	cw := &connWatch{}
	cw.cur.Store(newEpoch())
	prev := nc.DisconnectErrHandler()
	nc.SetDisconnectErrHandler(func(c *nats.Conn, err error) {
		cw.cur.Swap(newEpoch()).lose()
		if prev != nil {
			prev(c, err)
		}
	})
	return cw
}

// current is done once the connection drops. Take it before checking that
// the connection is up, so that a drop in between is not missed.
func (cw *connWatch) current() context.Context { return cw.cur.Load().ctx }
