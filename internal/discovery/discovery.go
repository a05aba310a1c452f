// Package discovery counts the workers that serve an exchange subject by
// asking NATS micro discovery ($SRV.INFO.wxlogin). The edge's /readyz and
// a worker's share of the pool-wide rate limit both rest on it.
//
// It asks INFO rather than PING because INFO lists each instance's
// endpoints: a worker of another pool on the same NATS account (another
// NATS_SUBJECT_PREFIX) answers discovery too, but does not serve us.
package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// Result is what one round of discovery found.
type Result struct {
	Serving int // distinct instances that serve the subject
	Others  int // instances that answered but serve other subjects
	Bad     int // answers that are not micro info
	// NoResponders says the server knows that nobody listens: no worker
	// of any pool is there.
	NoResponders bool
}

// infoSubject asks every instance of the service for its info.
var infoSubject = "$SRV." + micro.InfoVerb.String() + "." + protocol.ServiceName

// Probe asks every instance of the wxlogin service for its info over nc,
// gathers the answers for window (less if ctx ends first), and counts the
// instances serving subject. seen, when not nil, is called with the count
// so far each time another serving instance answers, so that a caller can
// act before the window is over. It fails with nats.ErrDisconnected while
// nc is not connected.
func Probe(ctx context.Context, nc *nats.Conn, subject string, window time.Duration, seen func(n int)) (Result, error) {
	var res Result
	if !nc.IsConnected() {
		return res, nats.ErrDisconnected
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return res, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(infoSubject, inbox, nil); err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	ids := map[string]bool{}
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if errors.Is(err, nats.ErrNoResponders) {
			// No need to wait out the window.
			res.NoResponders = true
			return res, nil
		}
		if err != nil {
			return res, nil // the window is over
		}
		var info micro.Info
		if err := json.Unmarshal(msg.Data, &info); err != nil {
			res.Bad++
			continue
		}
		if !serves(info, subject) {
			res.Others++
			continue
		}
		if ids[info.ID] {
			continue
		}
		ids[info.ID] = true
		res.Serving++
		if seen != nil {
			seen(res.Serving)
		}
	}
}

func serves(info micro.Info, subject string) bool {
	for _, e := range info.Endpoints {
		if e.Subject == subject {
			return true
		}
	}
	return false
}
