package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Rule is a growing delay: the first free failures cost nothing,
// each one after doubles the wait from base up to max. A delay instead of
// a lock: nobody can shut an owner out for long, and guessing stays slow.
type Rule struct {
	free      int
	base, max time.Duration
}

var (
	// PairRule throttles one account from one client address: the owner
	// mistyping, or one attacker guessing one account.
	PairRule = Rule{free: 5, base: 30 * time.Second, max: 15 * time.Minute}
	// AddrRule throttles one client address over all accounts (password
	// spraying, signup-code guessing). Generous, since an office or a
	// carrier NAT shares an address.
	AddrRule = Rule{free: 20, base: 30 * time.Second, max: 15 * time.Minute}
)

// delay is the wait after n failures.
func (r Rule) delay(n int) time.Duration {
	if n < r.free {
		return 0
	}
	return min(r.base<<min(n-r.free, 20), r.max)
}

// throttleState is one key's value in the bucket.
type throttleState struct {
	Failures int       `json:"n"`
	Last     time.Time `json:"last"`
}

// Throttle keeps failure counts in a NATS KV bucket (bus.LoginThrottleBucket)
// shared by every edge replica, so N replicas do not multiply the limits.
// When the bucket cannot be reached it lets the attempt through and logs:
// logins should not fail because throttling state is unavailable.
type Throttle struct {
	kv  throttleStore
	log *slog.Logger
	now func() time.Time
}

// throttleStore is the part of a JetStream key-value bucket the throttle
// uses: compare-and-set updates of one entry per key.
type throttleStore interface {
	Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error)
	Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error)
	Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error)
	Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error
}

// NewThrottle keeps the failure counts in kv (bus.LoginThrottleBucket).
func NewThrottle(kv throttleStore, log *slog.Logger) *Throttle {
	return &Throttle{kv: kv, log: log, now: time.Now}
}

// throttleKey hashes what identifies the attempt: keys stay within the
// bucket's alphabet and the bucket holds no usernames or addresses.
func throttleKey(kind string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return kind + "." + hex.EncodeToString(h[:20])
}

// PairKey names the attempts on one account from one client address.
func PairKey(account, addr string) string { return throttleKey("pair", account, addr) }

// AddrKey names the attempts from one client address.
func AddrKey(addr string) string { return throttleKey("addr", addr) }

// Wait returns how long key must wait before its next attempt (0: now).
func (t *Throttle) Wait(ctx context.Context, rule Rule, key string) time.Duration {
	st, _, err := t.get(ctx, key)
	if err != nil {
		t.log.Warn("login throttle unavailable", "err", err)
		return 0
	}
	until := st.Last.Add(rule.delay(st.Failures))
	if d := until.Sub(t.now()); d > 0 {
		return d
	}
	return 0
}

func (t *Throttle) get(ctx context.Context, key string) (throttleState, uint64, error) {
	e, err := t.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return throttleState{}, 0, nil
	}
	if err != nil {
		return throttleState{}, 0, err
	}
	var st throttleState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return throttleState{}, e.Revision(), nil // unreadable: start over
	}
	return st, e.Revision(), nil
}

// Fail records a failure of key: a compare-and-set on the entry's
// revision, so concurrent failures on several replicas all count.
func (t *Throttle) Fail(ctx context.Context, key string) {
	for range 8 {
		st, rev, err := t.get(ctx, key)
		if err != nil {
			t.log.Warn("login throttle unavailable", "err", err)
			return
		}
		data, _ := json.Marshal(throttleState{Failures: st.Failures + 1, Last: t.now()})
		if rev == 0 {
			_, err = t.kv.Create(ctx, key, data)
		} else {
			_, err = t.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !strings.Contains(err.Error(), "wrong last sequence") {
			t.log.Warn("login throttle unavailable", "err", err)
			return
		}
	}
}

// Reset forgets the failures of key (after a successful login).
func (t *Throttle) Reset(ctx context.Context, key string) {
	if err := t.kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.log.Warn("login throttle unavailable", "err", err)
	}
}
