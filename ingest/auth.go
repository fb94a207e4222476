package ingest

import (
	"context"
	"crypto/subtle"
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
)

// Names shared by handlers.
const (
	// CookieName holds the token for browser clients.
	CookieName = "gradeline_token"
	localUser  = "user"

	usersCollection = "users"
	minPassword     = 8
	maxPassword     = 256 // bounds hashing work per request
	maxUsername     = 128

	// Login failures allowed per account and per client IP in the window.
	accountFailures = 5
	ipFailures      = 20
	failureWindow   = 15 * time.Minute
)

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

	mu       sync.RWMutex
	verified map[string]verifiedToken
}

type verifiedToken struct {
	sub string
	exp time.Time
}

const maxVerifiedTokens = 10_000

func (t *tokens) issue(sub string) (string, error) {
	now := t.now()
	claims := jwt.RegisteredClaims{
		Subject:   sub,
		Issuer:    t.issuer,
		Audience:  jwt.ClaimStrings{t.audience},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(TokenTTL)),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.secret)
}

// verify checks signature (HS256 only), iss, aud, exp and iat and returns sub.
func (t *tokens) verify(token string) (string, error) {
	now := t.now()
	t.mu.RLock()
	v, ok := t.verified[token]
	t.mu.RUnlock()
	if ok && now.Before(v.exp) {
		return v.sub, nil
	}
	sub, exp, err := t.parse(token)
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	if t.verified == nil || len(t.verified) >= maxVerifiedTokens {
		t.verified = map[string]verifiedToken{}
	}
	t.verified[token] = verifiedToken{sub: sub, exp: exp}
	t.mu.Unlock()
	return sub, nil
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
				return cr, errorf(http.StatusBadRequest, "malformed multipart form: %v", err)
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
	ip := c.IP()
	if wait := s.ipLimiter.blocked(ip); wait > 0 {
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
		s.ipLimiter.fail(ip)
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
	return &apiError{Status: http.StatusServiceUnavailable, Message: "user store (MongoDB) is unavailable", Details: []string{err.Error()}}
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
	norm := normalize(ident)
	if len(norm) > maxUsername {
		norm = norm[:maxUsername]
	}
	ip := c.IP()
	if wait := s.ipLimiter.blocked(ip); wait > 0 {
		return tooMany(wait, "from this client")
	}
	if wait := s.accountLimiter.blocked(norm); wait > 0 {
		return tooMany(wait, "for this account")
	}
	pw := str(cr.Password)
	if len(pw) > maxPassword {
		pw = pw[:maxPassword]
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
		s.ipLimiter.fail(ip)
		s.accountLimiter.fail(norm)
		return errorf(http.StatusUnauthorized, "invalid username or password")
	}
	s.accountLimiter.reset(norm)
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
	sub, err := s.tokens.verify(token)
	if err != nil {
		e := unauthorized("invalid token")
		e.Details = []string{err.Error()}
		e.Headers[fiber.HeaderWWWAuthenticate] = `Bearer error="invalid_token"`
		return e
	}
	c.Locals(localUser, sub)
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
