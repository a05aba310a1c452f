package dedup

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/dev/natstest"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// Answers that expire by the bucket's TTL must not leave a marker each:
// in steady state that would be a third stored message per code.
func TestExpiredAnswersLeaveNoMarkers(t *testing.T) {
	ns := natstest.Start(t, false)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := New(Options{ResultTTL: time.Second, ClaimTTL: time.Second, Bucket: "expiry"}, logging.Discard())
	if err := s.Bind(ctx, nc); err != nil {
		t.Fatal(err)
	}
	const codes = 3
	for i := range codes {
		lead, _, e, src := s.Begin(ctx, testRef("k"+strconv.Itoa(i)))
		if lead == nil {
			t.Fatalf("exchange %d: answered without running (%v from %s)", i, e, src)
		}
		if _, e := lead.End(ctx, protocol.Result{OpenID: "o"}, nil); e != nil {
			t.Fatalf("exchange %d: %v", i, e)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_expiry")
	if err != nil {
		t.Fatal(err)
	}
	// A claim and an answer per code; then the answers expire.
	for {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			if info.State.LastSeq != 2*codes {
				t.Fatalf("after the answers expired the stream's last sequence is %d, want %d: something was stored as they expired", info.State.LastSeq, 2*codes)
			}
			break
		}
		if info.State.LastSeq > 2*codes {
			t.Fatalf("stream holds %d messages up to sequence %d, want at most %d stored: markers for expired answers?", info.State.Msgs, info.State.LastSeq, 2*codes)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("answers did not expire: %d messages left", info.State.Msgs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if cfg := st.CachedInfo().Config; !cfg.AllowMsgTTL || cfg.SubjectDeleteMarkerTTL != 0 {
		t.Errorf("stream allows per-message TTLs %v, marker TTL %v; want true, 0", cfg.AllowMsgTTL, cfg.SubjectDeleteMarkerTTL)
	}
}
