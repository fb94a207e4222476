package ingest

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"
	"github.com/golang-jwt/jwt/v5"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/bus"
)

// Names shared by handlers.
const (
	// CookieName holds the token for browser clients.
	CookieName = "gradeline_token"
	localUser  = "user"
	// localToken and localTokenExp hold the verified token and its expiry
	// (for logout).
	localToken    = "token"
	localTokenExp = "token_exp"

	usersCollection = "users"
	minPassword     = 8
	maxPassword     = 256 // bounds hashing work per request
	maxUsername     = 128
)

// commonPasswords are refused at registration: the first guesses of every
// attacker. Compared in lower case.
//
//go:embed common-passwords.txt
var commonPasswordsText string

var commonPasswords = func() map[string]struct{} {
	m := map[string]struct{}{}
	for _, l := range strings.Split(commonPasswordsText, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			m[l] = struct{}{}
		}
	}
	return m
}()

func isCommonPassword(pw string) bool {
	_, ok := commonPasswords[strings.ToLower(pw)]
	return ok
}

// A username is 3..128 characters of letters, digits and . _ - @ +,
// starting with a letter or digit; e-mail addresses qualify.
var validUsername = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+\-]{2,127}$`)

// normalize is the form usernames are unique and looked up by.
func normalize(username string) string { return strings.ToLower(strings.TrimSpace(username)) }

// userDoc is a document of the users collection. _id is the normalised
// username (fast equality lookups on FerretDB); username_norm repeats it
// under a unique index, the contract other tools may rely on.
type userDoc struct {
	ID           string    `bson:"_id"`
	Username     string    `bson:"username"`
	UsernameNorm string    `bson:"username_norm"`
	PasswordHash string    `bson:"password_hash"`
	CreatedAt    time.Time `bson:"created_at"`
	Roles        []string  `bson:"roles,omitempty"` // RoleAdmin; set by SetRole
}

type userStore struct{ coll *mongo.Collection }

func newUserStore(ctx context.Context, db *mongo.Database) (*userStore, error) {
	coll := db.Collection(usersCollection)
	_, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "username_norm", Value: 1}},
		Options: options.Index().SetUnique(true).SetName("username_norm_unique"),
	})
	if err != nil {
		return nil, fmt.Errorf("ingest: users index: %w", err)
	}
	return &userStore{coll: coll}, nil
}

var errUserExists = errors.New("username taken")

func (u *userStore) create(ctx context.Context, doc userDoc) error {
	_, err := u.coll.InsertOne(ctx, doc)
	if mongo.IsDuplicateKeyError(err) {
		return errUserExists
	}
	return err
}

// find returns the user or (nil, nil) when there is none.
func (u *userStore) find(ctx context.Context, norm string) (*userDoc, error) {
	var doc userDoc
	err := u.coll.FindOne(ctx, bson.D{{Key: "_id", Value: norm}}).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &doc, nil
}

// tokens issues and verifies HS256 JWTs. Verified tokens are remembered
// until they expire (keyed by the whole token, signature included), so a
// client's every request does not parse and MAC the same token again.
type tokens struct {
	secret   []byte
	issuer   string
	audience string
	now      func() time.Time

	// revoked is the logout list; nil in tests without a bus.
	revoked *revocations

	mu       sync.RWMutex
	verified map[string]verifiedToken
}

type verifiedToken struct {
	sub string
	exp time.Time
	// key is the token's revocation key, computed once per token.
	key string
}

const maxVerifiedTokens = 10_000

func (t *tokens) issue(sub string) (string, error) {
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

// verify checks signature (HS256 only), iss, aud, exp and iat and that the
// token was not revoked, and returns sub.
func (t *tokens) verify(token string) (string, error) {
	v, err := t.verifyToken(token)
	return v.sub, err
}

func (t *tokens) verifyToken(token string) (verifiedToken, error) {
	now := t.now()
	t.mu.RLock()
	v, ok := t.verified[token]
	t.mu.RUnlock()
	if ok && now.Before(v.exp) {
		// The cache holds verification, not permission: a logout on any
		// replica is seen here on the next request.
		if t.revoked.isRevoked(v.key) {
			return verifiedToken{}, errRevoked
		}
		return v, nil
	}
	sub, exp, err := t.parse(token)
	if err != nil {
		return verifiedToken{}, err
	}
	v = verifiedToken{sub: sub, exp: exp, key: revocationKey(token)}
	if t.revoked.isRevoked(v.key) {
		return verifiedToken{}, errRevoked
	}
	t.mu.Lock()
	if t.verified == nil || len(t.verified) >= maxVerifiedTokens {
		t.verified = map[string]verifiedToken{}
	}
	t.verified[token] = v
	t.mu.Unlock()
	return v, nil
}

// forget drops token from the verified cache.
func (t *tokens) forget(token string) {
	t.mu.Lock()
	delete(t.verified, token)
	t.mu.Unlock()
}

func (t *tokens) parse(token string) (string, time.Time, error) {
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

// credentials is what register and login accept, as JSON or as a form.
type credentials struct {
	Username    *string `json:"username"`
	Email       *string `json:"email"`
	Password    *string `json:"password"`
	SignupCode  *string `json:"signupCode"`
	SignupCode2 *string `json:"signup_code"`
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func isForm(c *fiber.Ctx) bool {
	ct := strings.ToLower(c.Get(fiber.HeaderContentType))
	return strings.HasPrefix(ct, fiber.MIMEApplicationForm) || strings.HasPrefix(ct, fiber.MIMEMultipartForm)
}

func parseCredentials(c *fiber.Ctx) (credentials, error) {
	var cr credentials
	if isForm(c) {
		if strings.HasPrefix(strings.ToLower(c.Get(fiber.HeaderContentType)), fiber.MIMEMultipartForm) {
			if _, err := c.MultipartForm(); err != nil {
				return cr, &apiError{Status: http.StatusBadRequest, Message: "malformed multipart form", Cause: err}
			}
		}
		get := func(k string) *string {
			if v := c.FormValue(k); v != "" {
				return &v
			}
			return nil
		}
		cr = credentials{Username: get("username"), Email: get("email"), Password: get("password"),
			SignupCode: get("signupCode"), SignupCode2: get("signup_code")}
		return cr, nil
	}
	// Unknown fields are tolerated here: seed clients send extras.
	if err := decodeJSON(c.Body(), &cr, false); err != nil {
		return cr, err
	}
	return cr, nil
}

type tokenResponse struct {
	Token     string `json:"token"`
	ExpiresIn int    `json:"expiresIn"`
	Username  string `json:"username"`
}

func (s *Server) setTokenCookie(c *fiber.Ctx, token string) {
	c.Cookie(&fiber.Cookie{
		Name:     CookieName,
		Value:    token,
		Path:     "/",
		MaxAge:   int(TokenTTL / time.Second),
		Expires:  time.Now().Add(TokenTTL),
		HTTPOnly: true,
		Secure:   !s.cfg.Local,
		SameSite: fiber.CookieSameSiteStrictMode,
	})
}

func (s *Server) respondToken(c *fiber.Ctx, status int, username string) error {
	tok, err := s.tokens.issue(normalize(username))
	if err != nil {
		return fmt.Errorf("sign token: %w", err)
	}
	s.setTokenCookie(c, tok)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Status(status).JSON(tokenResponse{Token: tok, ExpiresIn: int(TokenTTL / time.Second), Username: normalize(username)})
}

func tooMany(wait time.Duration, what string) *apiError {
	wait = max(wait, time.Second)
	secs := int(math.Ceil(wait.Seconds()))
	if secs < 1 {
		secs = 1
	}
	e := errorf(http.StatusTooManyRequests, "too many failed attempts %s; retry in %d seconds", what, secs)
	e.Headers = map[string]string{fiber.HeaderRetryAfter: strconv.Itoa(secs)}
	return e
}

// register: {username, password, signupCode} -> 201 {token, expiresIn}.
func (s *Server) register(c *fiber.Ctx) error {
	ip := s.clientIP(c)
	if wait := s.throttle.wait(c.UserContext(), addrRule, addrKey(ip)); wait > 0 {
		return tooMany(wait, "from this client")
	}
	cr, err := parseCredentials(c)
	if err != nil {
		return err
	}
	username := str(cr.Username)
	if username == "" {
		username = str(cr.Email)
	}
	code := str(cr.SignupCode)
	if code == "" {
		code = str(cr.SignupCode2)
	}
	var missing []string
	if strings.TrimSpace(username) == "" {
		missing = append(missing, "username: required")
	}
	if cr.Password == nil {
		missing = append(missing, "password: required")
	}
	if code == "" {
		missing = append(missing, "signupCode: required")
	}
	if len(missing) > 0 {
		return invalid("missing fields", missing...)
	}
	if subtle.ConstantTimeCompare([]byte(code), []byte(s.cfg.SignupCode)) != 1 {
		s.throttle.fail(c.UserContext(), addrKey(ip))
		return errorf(http.StatusForbidden, "wrong signup code")
	}
	var bad []string
	username = strings.TrimSpace(username)
	if !validUsername.MatchString(username) {
		bad = append(bad, "username: 3 to 128 characters of letters, digits and . _ - @ +, starting with a letter or digit")
	}
	pw := str(cr.Password)
	if n := utf8.RuneCountInString(pw); n < minPassword {
		bad = append(bad, fmt.Sprintf("password: at least %d characters", minPassword))
	} else if len(pw) > maxPassword {
		bad = append(bad, fmt.Sprintf("password: at most %d bytes", maxPassword))
	} else if isCommonPassword(pw) {
		bad = append(bad, "password: one of the most common passwords; choose another")
	}
	if len(bad) > 0 {
		return invalid("invalid registration", bad...)
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), 10*time.Second)
	defer cancel()
	phc, err := s.hasher.hash(ctx, pw)
	if err != nil {
		return err
	}
	norm := normalize(username)
	err = s.users.create(ctx, userDoc{ID: norm, Username: username, UsernameNorm: norm, PasswordHash: phc, CreatedAt: time.Now().UTC()})
	if errors.Is(err, errUserExists) {
		return errorf(http.StatusConflict, "username %q is taken", username)
	}
	if err != nil {
		return storeUnavailable(err)
	}
	return s.respondToken(c, http.StatusCreated, norm)
}

func storeUnavailable(err error) error {
	return &apiError{Status: http.StatusServiceUnavailable, Message: "user store (MongoDB) is unavailable", Cause: err}
}

// login: {username|email, password} as JSON or form -> 200 {token, expiresIn}
// plus the HttpOnly cookie. Unknown user and wrong password answer the same
// 401 after the same work (a dummy hash is verified for unknown users).
func (s *Server) login(c *fiber.Ctx) error {
	cr, err := parseCredentials(c)
	if err != nil {
		return err
	}
	ident := str(cr.Username)
	if strings.TrimSpace(ident) == "" {
		ident = str(cr.Email)
	}
	var missing []string
	if strings.TrimSpace(ident) == "" {
		missing = append(missing, "username: required (or email)")
	}
	if cr.Password == nil {
		missing = append(missing, "password: required")
	}
	if len(missing) > 0 {
		return invalid("missing fields", missing...)
	}
	pw := str(cr.Password)
	if len(pw) > maxPassword {
		// As at registration, never truncated: no stored password is longer.
		return invalid("invalid credentials", fmt.Sprintf("password: at most %d bytes", maxPassword))
	}
	norm := normalize(ident)
	if len(norm) > maxUsername {
		norm = norm[:maxUsername]
	}
	// Throttled per (account, address) and per address with a growing
	// delay; never per account alone, so nobody can lock an owner out.
	ip := s.clientIP(c)
	pk, ak := pairKey(norm, ip), addrKey(ip)
	if wait := s.throttle.wait(c.UserContext(), addrRule, ak); wait > 0 {
		return tooMany(wait, "from this client")
	}
	if wait := s.throttle.wait(c.UserContext(), pairRule, pk); wait > 0 {
		return tooMany(wait, "for this account from this client")
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), 10*time.Second)
	defer cancel()
	u, err := s.users.find(ctx, norm)
	if err != nil {
		return storeUnavailable(err)
	}
	phc := s.hasher.dummy
	if u != nil {
		phc = u.PasswordHash
	}
	ok, err := s.hasher.verify(ctx, phc, pw)
	if err != nil && !errors.Is(err, errBadHash) {
		return err
	}
	if !ok || u == nil {
		s.throttle.fail(ctx, ak)
		s.throttle.fail(ctx, pk)
		return errorf(http.StatusUnauthorized, "invalid username or password")
	}
	s.throttle.reset(ctx, pk)
	return s.respondToken(c, http.StatusOK, u.ID)
}

// authenticate requires a valid token in "Authorization: Bearer" or in the
// cookie and stores its subject as the request's user.
func (s *Server) authenticate(c *fiber.Ctx) error {
	var token string
	if h := c.Get(fiber.HeaderAuthorization); h != "" {
		scheme, rest, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(rest) == "" {
			return unauthorized("Authorization header must be \"Bearer <token>\"")
		}
		token = strings.TrimSpace(rest)
	} else {
		token = c.Cookies(CookieName)
	}
	if token == "" {
		return unauthorized("authentication required: send a bearer token or the " + CookieName + " cookie")
	}
	v, err := s.tokens.verifyToken(token)
	if err != nil {
		// The parser's reason stays in the log: it helps an attacker
		// probing tokens more than a user, who needs to log in again.
		msg := "invalid or expired token; log in again"
		if errors.Is(err, errRevoked) {
			msg = "token revoked (logged out); log in again"
		}
		e := unauthorized(msg)
		e.Cause = err
		e.Headers[fiber.HeaderWWWAuthenticate] = `Bearer error="invalid_token"`
		return e
	}
	c.Locals(localUser, v.sub)
	c.Locals(localToken, token)
	c.Locals(localTokenExp, v.exp)
	// Everything behind authentication is the caller's own: no cache may keep it.
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Next()
}

func unauthorized(msg string) *apiError {
	e := errorf(http.StatusUnauthorized, "%s", msg)
	e.Headers = map[string]string{fiber.HeaderWWWAuthenticate: `Bearer realm="gradeline"`}
	return e
}

func userOf(c *fiber.Ctx) string {
	u, _ := c.Locals(localUser).(string)
	return u
}
