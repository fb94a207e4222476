package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"
)

// throttleRule is a growing delay: the first free failures cost nothing,
// each one after doubles the wait from base up to max. A delay instead of
// a lock: nobody can shut an owner out for long, and guessing stays slow.
type throttleRule struct {
	free      int
	base, max time.Duration
}

var (
	// pairRule throttles one account from one client address: the owner
	// mistyping, or one attacker guessing one account.
	pairRule = throttleRule{free: 5, base: 30 * time.Second, max: 15 * time.Minute}
	// addrRule throttles one client address over all accounts (password
	// spraying, signup-code guessing). Generous, since an office or a
	// carrier NAT shares an address.
	addrRule = throttleRule{free: 20, base: 30 * time.Second, max: 15 * time.Minute}
)

// delay is the wait after n failures.
func (r throttleRule) delay(n int) time.Duration {
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

// throttle keeps failure counts in a NATS KV bucket (bus.LoginThrottleBucket)
// shared by every edge replica, so N replicas do not multiply the limits.
// When the bucket cannot be reached it lets the attempt through and logs:
// logins should not fail because throttling state is unavailable.
type throttle struct {
	kv  jetstream.KeyValue
	log *slog.Logger
	now func() time.Time
}

// throttleKey hashes what identifies the attempt: keys stay within the
// bucket's alphabet and the bucket holds no usernames or addresses.
func throttleKey(kind string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return kind + "." + hex.EncodeToString(h[:20])
}

func pairKey(account, addr string) string { return throttleKey("pair", account, addr) }
func addrKey(addr string) string          { return throttleKey("addr", addr) }

// wait returns how long key must wait before its next attempt (0: now).
func (t *throttle) wait(ctx context.Context, rule throttleRule, key string) time.Duration {
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

func (t *throttle) get(ctx context.Context, key string) (throttleState, uint64, error) {
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

// fail records a failure of key: a compare-and-set on the entry's
// revision, so concurrent failures on several replicas all count.
func (t *throttle) fail(ctx context.Context, key string) {
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

// reset forgets the failures of key (after a successful login).
func (t *throttle) reset(ctx context.Context, key string) {
	if err := t.kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.log.Warn("login throttle unavailable", "err", err)
	}
}

// ParseTrustedProxies parses a comma-separated list of CIDRs or single
// addresses (GRADELINE_TRUSTED_PROXIES).
func ParseTrustedProxies(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("trusted proxies: %q is neither a CIDR nor an address", f)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

func (s *Server) trustedProxy(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientIP is the address of the client: the direct peer, unless the peer
// is a trusted proxy, in which case the forwarding headers are read from
// the right (each proxy appends the address it saw) and the first address
// that is not a trusted proxy is the client. Whatever a client writes into
// the headers itself sits to the left of that and is ignored.
func (s *Server) clientIP(c *fiber.Ctx) string {
	peer, ok := netip.AddrFromSlice(c.Context().RemoteIP())
	if !ok {
		return c.Context().RemoteIP().String()
	}
	peer = peer.Unmap()
	if !s.trustedProxy(peer) {
		return peer.String()
	}
	hops := forwardedFor(c.Get("Forwarded"))
	if len(hops) == 0 {
		hops = strings.Split(c.Get(fiber.HeaderXForwardedFor), ",")
	}
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseHop(hops[i])
		if !ok {
			break // unparsable: trust nothing further left
		}
		client = a
		if !s.trustedProxy(a) {
			break
		}
	}
	return client.String()
}

// forwardedFor returns the for= values of an RFC 7239 Forwarded header.
func forwardedFor(h string) []string {
	var out []string
	for _, elem := range strings.Split(h, ",") {
		for _, pair := range strings.Split(elem, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
			if ok && strings.EqualFold(k, "for") {
				out = append(out, strings.Trim(v, `"`))
			}
		}
	}
	return out
}

// parseHop reads "1.2.3.4", "1.2.3.4:80", "[2001:db8::1]:80" or "2001:db8::1".
func parseHop(v string) (netip.Addr, bool) {
	v = strings.TrimSpace(v)
	if a, err := netip.ParseAddr(strings.Trim(v, "[]")); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(v); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}
