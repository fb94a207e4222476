package ingest

import (
	"sync"
	"time"
)

// failureLimiter counts failures per key in a sliding window: a key with
// max failures within window is blocked until the oldest one ages out.
// In memory per replica, which bounds brute force per replica; a shared
// limiter would need a shared store.
type failureLimiter struct {
	mu     sync.Mutex
	max    int
	window time.Duration
	keys   map[string][]time.Time
	now    func() time.Time
	// maxKeys bounds memory when an attacker sprays distinct keys; when
	// exceeded, expired keys are swept first, then the map is reset.
	maxKeys int
}

func newFailureLimiter(max int, window time.Duration) *failureLimiter {
	return &failureLimiter{max: max, window: window, keys: map[string][]time.Time{}, now: time.Now, maxKeys: 100_000}
}

// prune drops failures older than the window; callers hold mu.
func (l *failureLimiter) prune(key string, now time.Time) []time.Time {
	ts := l.keys[key]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= l.window {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(l.keys, key)
		return nil
	}
	l.keys[key] = ts
	return ts
}

// blocked returns how long key must wait, or 0 when it may try.
func (l *failureLimiter) blocked(key string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	ts := l.prune(key, now)
	if len(ts) < l.max {
		return 0
	}
	return ts[len(ts)-l.max].Add(l.window).Sub(now)
}

// fail records a failure of key.
func (l *failureLimiter) fail(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	ts := l.prune(key, now)
	if ts == nil && len(l.keys) >= l.maxKeys {
		for k := range l.keys {
			l.prune(k, now)
		}
		if len(l.keys) >= l.maxKeys {
			l.keys = map[string][]time.Time{}
		}
	}
	ts = append(ts, now)
	if len(ts) > l.max {
		ts = ts[len(ts)-l.max:]
	}
	l.keys[key] = ts
}

// reset forgets the failures of key (after a successful login).
func (l *failureLimiter) reset(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.keys, key)
}
