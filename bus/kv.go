package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Key-value buckets of the edge, defined here beside the streams so every
// replica of ingest (and the NATS permissions) agree on them. Both hold
// only short-lived security state: losing them weakens throttling or
// forgets a logout, never loses data.
const (
	// LoginThrottleBucket holds failed-login counts per (account, client
	// address) and per client address, shared by every edge replica, so
	// limits hold with N replicas. An entry expires LoginThrottleTTL after
	// its last failure.
	LoginThrottleBucket = "gradeline-login-throttle"
	LoginThrottleTTL    = time.Hour
	// RevokedTokensBucket holds the tokens revoked by logout, keyed by the
	// token's id, valued with its expiry; an entry outlives every token
	// (RevokedTokensTTL is above the token lifetime).
	RevokedTokensBucket = "gradeline-revoked-tokens"
	RevokedTokensTTL    = 13 * time.Hour
)

// BucketOIPStats is the edge's key-value bucket of the Open Inference
// Protocol's statistics: one entry per model version with the counts of
// every replica's inference requests, merged by compare-and-set, so every
// replica answers GET /v2/models/{m}/stats alike. No expiry: the counts
// are cumulative, as Triton's are (losing the bucket only zeroes them).
const BucketOIPStats = "gradeline-oip-stats"

// KVBucket returns the bucket named name, creating it with ttl (history 1,
// file storage, replicas) when it does not exist yet.
func KVBucket(ctx context.Context, js jetstream.JetStream, name string, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, name)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("bus: key-value bucket %s: %w", name, err)
	}
	kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:   name,
		History:  1,
		TTL:      ttl,
		Storage:  jetstream.FileStorage,
		Replicas: max(1, replicas),
	})
	if err != nil {
		return nil, fmt.Errorf("bus: key-value bucket %s: %w", name, err)
	}
	return kv, nil
}
