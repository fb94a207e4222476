package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"
)

// errRevoked is the verification error of a logged-out token.
var errRevoked = errors.New("token revoked")

// revocations is the set of tokens revoked by logout. The list lives in a
// NATS KV bucket (bus.RevokedTokensBucket) holding each token's expiry;
// every edge replica watches the bucket and keeps the set in memory, so a
// request checks a map, not the network, and a logout on one replica
// reaches the others as fast as NATS delivers it.
type revocations struct {
	kv  jetstream.KeyValue
	log *slog.Logger
	now func() time.Time

	mu      sync.RWMutex
	revoked map[string]time.Time // revocation key -> token expiry
	watcher jetstream.KeyWatcher
}

// revocationKey names a token in the bucket: a digest of the whole token,
// so the bucket holds nothing usable.
func revocationKey(token string) string {
	h := sha256.Sum256([]byte(token))
	return "t." + hex.EncodeToString(h[:])
}

// start loads the current list and keeps following it. It returns once the
// existing entries are loaded, so no revoked token passes after a restart.
func (r *revocations) start(ctx context.Context) error {
	r.revoked = map[string]time.Time{}
	// The watch lives until stop, not until ctx (which bounds the loading):
	// a cancelled context ends a watcher.
	w, err := r.kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("ingest: watch revoked tokens: %w", err)
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
		return fmt.Errorf("ingest: load revoked tokens: %w", ctx.Err())
	}
}

func (r *revocations) apply(e jetstream.KeyValueEntry) {
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

func (r *revocations) isRevoked(key string) bool {
	if r == nil {
		return false
	}
	r.mu.RLock()
	_, ok := r.revoked[key]
	r.mu.RUnlock()
	return ok
}

// revoke records the token as revoked until exp, in the bucket (durable,
// seen by every replica) and at once in this replica's set.
func (r *revocations) revoke(ctx context.Context, token string, exp time.Time) error {
	key := revocationKey(token)
	if _, err := r.kv.Put(ctx, key, []byte(exp.UTC().Format(time.RFC3339))); err != nil {
		return err
	}
	r.mu.Lock()
	r.revoked[key] = exp
	r.mu.Unlock()
	return nil
}

func (r *revocations) stop() {
	if r != nil && r.watcher != nil {
		_ = r.watcher.Stop()
	}
}

// logout revokes the token the request was authenticated with and clears
// the cookie. Other tokens of the same user stay valid.
func (s *Server) logout(c *fiber.Ctx) error {
	token, _ := c.Locals(localToken).(string)
	exp, _ := c.Locals(localTokenExp).(time.Time)
	ctx, cancel := context.WithTimeout(c.UserContext(), 5*time.Second)
	defer cancel()
	if err := s.revoked.revoke(ctx, token, exp); err != nil {
		return &apiError{Status: http.StatusServiceUnavailable, Message: "the token could not be revoked; try again", Cause: err}
	}
	s.tokens.forget(token)
	c.Cookie(&fiber.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, Expires: time.Unix(0, 0),
		HTTPOnly: true, Secure: !s.cfg.Local, SameSite: fiber.CookieSameSiteStrictMode})
	return c.JSON(fiber.Map{"status": "logged out"})
}
