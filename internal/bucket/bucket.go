// Package bucket opens the JetStream key-value buckets the worker pool
// shares (answers for exactly-once, blocks for the rate limit): created by
// whichever worker comes first, used as they are by the others.
package bucket

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNoJetStream means the server (or the account) has JetStream off: the
// pool-wide features then work per worker.
var ErrNoJetStream = errors.New("jetstream is not enabled on the server")

// Name is the bucket for a subject prefix and a purpose: bucket names
// allow no dots.
func Name(subjectPrefix, purpose string) string {
	return strings.ReplaceAll(subjectPrefix, ".", "_") + "_" + purpose
}

// Open creates the bucket described by cfg, or opens it if another worker
// made it first, perhaps with other settings: the first one wins.
func Open(ctx context.Context, nc *nats.Conn, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	kv, err := js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, cfg.Bucket)
	}
	if err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, ErrNoJetStream
		}
		return nil, fmt.Errorf("opening kv bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// OpenWithKeyTTLs is Open for a bucket whose keys may carry a TTL of their
// own (jetstream.KeyTTL). nats.go allows those only together with limit
// markers (LimitMarkerTTL), and a marker is one more stored message for
// every key that expires by the bucket's TTL: for the answers bucket a
// third write per code, kept for watchers that this service does not
// have. So the bucket is made without markers and its stream then allows
// per-message TTLs; a bucket made with markers (by an older version) is
// changed to go without.
func OpenWithKeyTTLs(ctx context.Context, nc *nats.Conn, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.LimitMarkerTTL = 0
	kv, err := Open(ctx, nc, cfg)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	st, err := js.Stream(ctx, "KV_"+cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("reading kv bucket %s: %w", cfg.Bucket, err)
	}
	sc := st.CachedInfo().Config
	if sc.AllowMsgTTL && sc.SubjectDeleteMarkerTTL == 0 {
		return kv, nil
	}
	sc.AllowMsgTTL, sc.SubjectDeleteMarkerTTL = true, 0
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		return nil, fmt.Errorf("allowing per-key TTLs in kv bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}
