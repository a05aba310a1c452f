package bucket

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/dev/natstest"
)

// A bucket an older version made with limit markers keeps its data and
// loses the markers; per-key TTLs keep working.
func TestOpenWithKeyTTLsDropsMarkers(t *testing.T) {
	ns := natstest.Start(t, false)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := jetstream.KeyValueConfig{Bucket: "answers", TTL: time.Minute, Storage: jetstream.MemoryStorage}

	old := cfg
	old.LimitMarkerTTL = time.Second
	kv, err := Open(ctx, nc, old)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "kept", []byte("v")); err != nil {
		t.Fatal(err)
	}

	kv, err = OpenWithKeyTTLs(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.LimitMarkerTTL() != 0 {
		t.Errorf("limit markers still on: %v", st.LimitMarkerTTL())
	}
	if e, err := kv.Get(ctx, "kept"); err != nil || string(e.Value()) != "v" {
		t.Errorf("existing key: %v", err)
	}
	if _, err := kv.Create(ctx, "short", []byte("v"), jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatalf("a key with its own TTL: %v", err)
	}
	for {
		_, err := kv.Get(ctx, "short")
		if err != nil {
			if err != jetstream.ErrKeyNotFound {
				t.Fatalf("waiting for the key to expire: %v", err)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("a key with a 1s TTL did not expire")
		case <-time.After(50 * time.Millisecond):
		}
	}

	// A second opener (another worker) finds it as it is.
	if _, err := OpenWithKeyTTLs(ctx, nc, cfg); err != nil {
		t.Fatal(err)
	}
}

// A bucket an older version made without a byte limit gets one; one that
// has a limit keeps it. A full bucket's refusal reads as Full.
func TestOpenBoundsBuckets(t *testing.T) {
	ns := natstest.Start(t, false)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	maxBytes := func(name string) int64 {
		st, err := js.Stream(ctx, "KV_"+name)
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().Config.MaxBytes
	}
	cfg := jetstream.KeyValueConfig{Bucket: "unbounded", Storage: jetstream.MemoryStorage}
	if _, err := Open(ctx, nc, cfg); err != nil {
		t.Fatal(err)
	}
	cfg.MaxBytes = 4096
	kv, err := Open(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := maxBytes("unbounded"); got != 4096 {
		t.Fatalf("an unbounded bucket reopened with a limit has max_bytes %d, want 4096", got)
	}
	cfg.MaxBytes = 1 << 20
	if _, err := Open(ctx, nc, cfg); err != nil {
		t.Fatal(err)
	}
	if got := maxBytes("unbounded"); got != 4096 {
		t.Errorf("a bounded bucket's limit changed to %d: the first worker's settings win", got)
	}
	var full error
	for i := 0; full == nil && i < 100; i++ {
		_, full = kv.Put(ctx, "k"+string(rune('a'+i%26))+string(rune('a'+i/26)), make([]byte, 512))
	}
	if !Full(full) {
		t.Errorf("a full bucket's refusal %v does not read as Full", full)
	}
	if Full(jetstream.ErrKeyExists) || Full(nil) {
		t.Error("other errors read as Full")
	}
}
