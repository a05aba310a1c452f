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
