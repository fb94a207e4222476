package auth

import (
	"errors"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/gradeline/gradeline/bus"
)

// TokenTTL is the lifetime of an issued token (expiresIn 43200).
const TokenTTL = 12 * time.Hour

// NewTokens issues and verifies tokens signed with secret, carrying issuer
// and audience; revoked (nil: none) is the logout list.
func NewTokens(secret []byte, issuer, audience string, revoked *Revocations) *Tokens {
	return &Tokens{secret: secret, issuer: issuer, audience: audience, now: time.Now, revoked: revoked}
}

// Tokens issues and verifies HS256 JWTs. Verified tokens are remembered
// until they expire (keyed by the whole token, signature included), so a
// client's every request does not parse and MAC the same token again.
type Tokens struct {
	secret   []byte
	issuer   string
	audience string
	now      func() time.Time

	// revoked is the logout list; nil in tests without a bus.
	revoked *Revocations

	mu       sync.RWMutex
	verified map[string]Verified
}

// Verified is a token that passed Verify.
type Verified struct {
	// Subject is the normalised username, Expires the token's expiry.
	Subject string
	Expires time.Time
	// key is the token's revocation key, computed once per token.
	key string
}

const maxVerifiedTokens = 10_000

// Issue signs a token for sub valid for TokenTTL.
func (t *Tokens) Issue(sub string) (string, error) {
	now := t.now()
	claims := jwt.RegisteredClaims{
		Subject:  sub,
		Issuer:   t.issuer,
		Audience: jwt.ClaimStrings{t.audience},
		IssuedAt: jwt.NewNumericDate(now),
		// A unique id: two tokens issued in the same second differ, so
		// revoking one (logout) leaves the other valid.
		ID:        bus.NewID(),
		ExpiresAt: jwt.NewNumericDate(now.Add(TokenTTL)),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.secret)
}

// Verify checks signature (HS256 only), iss, aud, exp and iat and that the
// token was not revoked.
func (t *Tokens) Verify(token string) (Verified, error) {
	now := t.now()
	t.mu.RLock()
	v, ok := t.verified[token]
	t.mu.RUnlock()
	if ok && now.Before(v.Expires) {
		// The cache holds verification, not permission: a logout on any
		// replica is seen here on the next request.
		if t.revoked.isRevoked(v.key) {
			return Verified{}, ErrRevoked
		}
		return v, nil
	}
	sub, exp, err := t.parse(token)
	if err != nil {
		return Verified{}, err
	}
	v = Verified{Subject: sub, Expires: exp, key: revocationKey(token)}
	if t.revoked.isRevoked(v.key) {
		return Verified{}, ErrRevoked
	}
	t.mu.Lock()
	if t.verified == nil || len(t.verified) >= maxVerifiedTokens {
		t.verified = map[string]Verified{}
	}
	t.verified[token] = v
	t.mu.Unlock()
	return v, nil
}

// Forget drops token from the verified cache (after its logout).
func (t *Tokens) Forget(token string) {
	t.mu.Lock()
	delete(t.verified, token)
	t.mu.Unlock()
}

func (t *Tokens) parse(token string) (string, time.Time, error) {
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return t.secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(t.issuer),
		jwt.WithAudience(t.audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(30*time.Second),
		jwt.WithTimeFunc(t.now),
	)
	if err != nil {
		return "", time.Time{}, err
	}
	if claims.Subject == "" {
		return "", time.Time{}, errors.New("token has no subject")
	}
	return claims.Subject, claims.ExpiresAt.Time, nil
}
