package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrRevoked is the verification error of a logged-out token.
var ErrRevoked = errors.New("token revoked")

// Revocations is the set of tokens revoked by logout. The list lives in a
// NATS KV bucket (bus.RevokedTokensBucket) holding each token's expiry;
// every edge replica watches the bucket and keeps the set in memory, so a
// request checks a map, not the network, and a logout on one replica
// reaches the others as fast as NATS delivers it.
type Revocations struct {
	kv  revocationStore
	now func() time.Time

	mu      sync.RWMutex
	revoked map[string]time.Time // revocation key -> token expiry
	watcher jetstream.KeyWatcher
}

// revocationStore is the part of a JetStream key-value bucket the
// revocation list uses: puts, and a watch of every key.
type revocationStore interface {
	Put(ctx context.Context, key string, value []byte) (uint64, error)
	WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error)
}

// NewRevocations keeps the list in kv (bus.RevokedTokensBucket); call
// Start before use.
func NewRevocations(kv revocationStore) *Revocations {
	return &Revocations{kv: kv, now: time.Now}
}

// revocationKey names a token in the bucket: a digest of the whole token,
// so the bucket holds nothing usable.
func revocationKey(token string) string {
	h := sha256.Sum256([]byte(token))
	return "t." + hex.EncodeToString(h[:])
}

// Start loads the current list and keeps following it until Stop. It
// returns once the existing entries are loaded, so no revoked token passes
// after a restart.
func (r *Revocations) Start(ctx context.Context) error {
	r.revoked = map[string]time.Time{}
	// The watch lives until stop, not until ctx (which bounds the loading):
	// a cancelled context ends a watcher.
	w, err := r.kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("watch revoked tokens: %w", err)
	}
	r.watcher = w
	loaded := make(chan struct{})
	go func() {
		once := sync.OnceFunc(func() { close(loaded) })
		defer once()
		for e := range w.Updates() {
			if e == nil { // end of the initial values
				once()
				continue
			}
			r.apply(e)
		}
	}()
	select {
	case <-loaded:
		return nil
	case <-ctx.Done():
		_ = w.Stop()
		return fmt.Errorf("load revoked tokens: %w", ctx.Err())
	}
}

func (r *Revocations) apply(e jetstream.KeyValueEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(r.revoked, e.Key())
		return
	}
	exp, err := time.Parse(time.RFC3339, string(e.Value()))
	if err != nil {
		exp = r.now().Add(TokenTTL) // unreadable: keep it revoked for a token's life
	}
	r.revoked[e.Key()] = exp
	// Forget what expired: an expired token fails verification anyway.
	if len(r.revoked)%1024 == 0 {
		now := r.now()
		for k, x := range r.revoked {
			if now.After(x.Add(time.Minute)) {
				delete(r.revoked, k)
			}
		}
	}
}

func (r *Revocations) isRevoked(key string) bool {
	if r == nil {
		return false
	}
	r.mu.RLock()
	_, ok := r.revoked[key]
	r.mu.RUnlock()
	return ok
}

// Revoke records the token as revoked until exp, in the bucket (durable,
// seen by every replica) and at once in this replica's set.
func (r *Revocations) Revoke(ctx context.Context, token string, exp time.Time) error {
	key := revocationKey(token)
	if _, err := r.kv.Put(ctx, key, []byte(exp.UTC().Format(time.RFC3339))); err != nil {
		return err
	}
	r.mu.Lock()
	r.revoked[key] = exp
	r.mu.Unlock()
	return nil
}

// Stop ends the watch of the bucket.
func (r *Revocations) Stop() {
	if r != nil && r.watcher != nil {
		_ = r.watcher.Stop()
	}
}
