package auth

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestThrottleDelayGrows(t *testing.T) {
	r := Rule{free: 3, base: time.Second, max: time.Minute}
	for n, want := range map[int]time.Duration{0: 0, 2: 0, 3: time.Second, 4: 2 * time.Second, 6: 8 * time.Second, 9: time.Minute, 1000: time.Minute} {
		if got := r.delay(n); got != want {
			t.Errorf("delay after %d failures: %v, want %v", n, got, want)
		}
	}
	if PairKey("ann", "1.2.3.4") == PairKey("ann", "1.2.3.5") || PairKey("ann", "1.2.3.4") == AddrKey("1.2.3.4") {
		t.Fatal("throttle keys collide")
	}
}

func TestPasswordHash(t *testing.T) {
	h, err := NewHasher(2)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	phc, err := h.Hash(ctx, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(phc, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("PHC %q", phc)
	}
	other, _ := h.Hash(ctx, "correct horse")
	if other == phc {
		t.Fatal("salt is not random")
	}
	if ok, err := h.Verify(ctx, phc, "correct horse"); !ok || err != nil {
		t.Fatalf("verify: %v %v", ok, err)
	}
	if ok, _ := h.Verify(ctx, phc, "correct horsE"); ok {
		t.Fatal("wrong password verified")
	}
	for _, bad := range []string{"", "plain", "$argon2i$v=19$m=1,t=1,p=1$AA$AA", "$argon2id$v=19$m=99999999,t=1,p=1$AAAA$AAAA", strings.Replace(phc, "v=19", "v=16", 1)} {
		if ok, err := h.Verify(ctx, bad, "x"); ok || err == nil {
			t.Fatalf("malformed hash %q accepted", bad)
		}
	}
}

func TestVerifiedTokenCacheHonoursExpiry(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	tk := &Tokens{secret: make([]byte, 32), issuer: "i", audience: "a", now: func() time.Time { return now }}
	tok, err := tk.Issue("ann")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // second time from the cache
		if v, err := tk.Verify(tok); err != nil || v.Subject != "ann" {
			t.Fatalf("verify %d: %q %v", i, v.Subject, err)
		}
	}
	now = now.Add(TokenTTL + time.Minute)
	if _, err := tk.Verify(tok); err == nil {
		t.Fatal("expired token accepted from the cache")
	}
	if _, err := tk.Verify(tok[:len(tok)-2] + "xx"); err == nil {
		t.Fatal("tampered signature accepted")
	}
}
