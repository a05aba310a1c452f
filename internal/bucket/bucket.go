// Package bucket opens the JetStream key-value buckets the worker pool
// shares (answers for exactly-once, blocks for the rate limit): created by
// whichever worker comes first, used as they are by the others, except
// that a bucket without a byte limit gets one.
//
// Every bucket has a byte limit of its own (WORKER_KV_MAX_BYTES for the
// answers, WORKER_RATE_KV_MAX_BYTES for the rate limit), so that one
// cannot starve the other. A full bucket refuses new records (key-value
// buckets discard new, not old): the worker then serves without that
// record, counts it in wxlogin_store_unstored_total and logs it at warn at
// most once a minute (see Reporter); what that costs is each user's
// package's to say.
package bucket

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/metrics"
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
	existed := errors.Is(err, jetstream.ErrBucketExists)
	if existed {
		kv, err = js.KeyValue(ctx, cfg.Bucket)
	}
	if err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, ErrNoJetStream
		}
		return nil, fmt.Errorf("opening kv bucket %s: %w", cfg.Bucket, err)
	}
	if existed && cfg.MaxBytes > 0 {
		if err := bound(ctx, js, cfg.Bucket, cfg.MaxBytes); err != nil {
			return nil, err
		}
	}
	return kv, nil
}

// bound gives an existing bucket that has no byte limit (made by an
// earlier version) the limit maxBytes. A bucket that has a limit keeps it:
// the first worker's settings win, as for the rest of the configuration.
func bound(ctx context.Context, js jetstream.JetStream, name string, maxBytes int64) error {
	st, err := js.Stream(ctx, "KV_"+name)
	if err != nil {
		return fmt.Errorf("reading kv bucket %s: %w", name, err)
	}
	sc := st.CachedInfo().Config
	if sc.MaxBytes > 0 {
		return nil
	}
	sc.MaxBytes = maxBytes
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		return fmt.Errorf("limiting kv bucket %s to %d bytes: %w", name, maxBytes, err)
	}
	return nil
}

// Reporter reports what one bucket refused a worker: values that failed
// their check or did not make sense (Rejected), and records it did not
// take (Unstored). Each is counted in a metric and logged at warn at most
// once a minute, without the value or its key.
type Reporter struct {
	name           string
	log            *slog.Logger
	m              *metrics.Stores
	reject, unstor logging.Throttle
}

// NewReporter returns the Reporter of bucket name; m may be nil.
func NewReporter(name string, logger *slog.Logger, m *metrics.Stores) *Reporter {
	return &Reporter{name: name, log: logger, m: m,
		reject: logging.Throttle{Every: time.Minute}, unstor: logging.Throttle{Every: time.Minute}}
}

// Rejected records a value treated as absent, and why (a fixed phrase,
// never the value).
func (r *Reporter) Rejected(why string) {
	r.m.Rejected(r.name)
	if r.reject.Allow() {
		r.log.Warn("a stored value was treated as absent (forged, moved, written under other keys, or out of range); more are counted in wxlogin_store_rejected_total",
			"bucket", r.name, "why", why)
	}
}

// Unstored records a record the bucket did not take.
func (r *Reporter) Unstored(what string, err error) {
	r.m.Unstored(r.name)
	if r.unstor.Allow() {
		msg := what + "; more are counted in wxlogin_store_unstored_total"
		if Full(err) {
			msg = what + ": the bucket is full; more are counted in wxlogin_store_unstored_total"
		}
		r.log.Warn(msg, "bucket", r.name, logging.Err(err))
	}
}

// Full reports whether err is a bucket's refusal for want of room.
func Full(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 10047 is "insufficient resources", 10028 "maximum bytes
		// exceeded" (a message that alone is bigger than the limit);
		// a stream at its limit refuses with 10077, "store failed",
		// whose description names the limit.
		return apiErr.ErrorCode == 10047 || apiErr.ErrorCode == 10028 ||
			strings.Contains(apiErr.Description, "maximum bytes")
	}
	return errors.Is(err, jetstream.ErrMaxBytesExceeded) || (err != nil && strings.Contains(err.Error(), "maximum bytes"))
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
