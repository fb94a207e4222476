package ingest

// Users and tokens over HTTP: register, login, logout and the
// authentication every other route passes. The users, passwords and
// tokens themselves are internal/auth's.

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest/internal/auth"
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
)

// RoleAdmin may see every user's statistics (?all=1 on /api/v1/stats/*).
// It is stored in the user record's roles and changed only by the operator
// (`gradeline admin grant|revoke USER`), never through the HTTP edge.
const RoleAdmin = auth.RoleAdmin

// ErrNoUser is returned by SetRole for a username nobody registered.
var ErrNoUser = auth.ErrNoUser

// SetRole grants (grant true) or revokes a role on the user username
// (matched as at login: case and surrounding space do not matter) in db's
// users collection. It reports whether the record changed.
func SetRole(ctx context.Context, db *mongo.Database, username, role string, grant bool) (bool, error) {
	return auth.SetRole(ctx, db, username, role, grant)
}

// credentials is what register and login accept, as JSON or as a form.
type credentials struct {
	Username    *string `json:"username"`
	Email       *string `json:"email"`
	Password    *string `json:"password"`
	SignupCode  *string `json:"signupCode"`
	SignupCode2 *string `json:"signup_code"`
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
	tok, err := s.tokens.Issue(auth.Normalize(username))
	if err != nil {
		return fmt.Errorf("sign token: %w", err)
	}
	s.setTokenCookie(c, tok)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Status(status).JSON(tokenResponse{Token: tok, ExpiresIn: int(TokenTTL / time.Second), Username: auth.Normalize(username)})
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

// registration returns the fields a registration needs, with the seed's
// alternative names (email, signup_code), or 422 naming the missing ones.
func (cr credentials) registration() (username, password, code string, err error) {
	username = str(cr.Username)
	if username == "" {
		username = str(cr.Email)
	}
	code = str(cr.SignupCode)
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
		return "", "", "", invalid("missing fields", missing...)
	}
	return strings.TrimSpace(username), str(cr.Password), code, nil
}

// register: {username, password, signupCode} -> 201 {token, expiresIn}.
func (s *Server) register(c *fiber.Ctx) error {
	ip := s.clientIP(c)
	if wait := s.throttle.Wait(c.UserContext(), auth.AddrRule, auth.AddrKey(ip)); wait > 0 {
		return tooMany(wait, "from this client")
	}
	cr, err := parseCredentials(c)
	if err != nil {
		return err
	}
	username, pw, code, err := cr.registration()
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(code), []byte(s.cfg.SignupCode)) != 1 {
		s.throttle.Fail(c.UserContext(), auth.AddrKey(ip))
		return errorf(http.StatusForbidden, "wrong signup code")
	}
	if bad := auth.CheckRegistration(username, pw); len(bad) > 0 {
		return invalid("invalid registration", bad...)
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), 10*time.Second)
	defer cancel()
	phc, err := s.hasher.Hash(ctx, pw)
	if err != nil {
		return err
	}
	norm := auth.Normalize(username)
	err = s.users.Create(ctx, auth.User{ID: norm, Username: username, UsernameNorm: norm, PasswordHash: phc, CreatedAt: time.Now().UTC()})
	if errors.Is(err, auth.ErrUserExists) {
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
	if len(pw) > auth.MaxPassword {
		// As at registration, never truncated: no stored password is longer.
		return invalid("invalid credentials", fmt.Sprintf("password: at most %d bytes", auth.MaxPassword))
	}
	norm := auth.Normalize(ident)
	if len(norm) > auth.MaxUsername {
		norm = norm[:auth.MaxUsername]
	}
	// Throttled per (account, address) and per address with a growing
	// delay; never per account alone, so nobody can lock an owner out.
	ip := s.clientIP(c)
	pk, ak := auth.PairKey(norm, ip), auth.AddrKey(ip)
	if wait := s.throttle.Wait(c.UserContext(), auth.AddrRule, ak); wait > 0 {
		return tooMany(wait, "from this client")
	}
	if wait := s.throttle.Wait(c.UserContext(), auth.PairRule, pk); wait > 0 {
		return tooMany(wait, "for this account from this client")
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), 10*time.Second)
	defer cancel()
	u, err := s.users.Find(ctx, norm)
	if err != nil {
		return storeUnavailable(err)
	}
	phc := s.hasher.Dummy
	if u != nil {
		phc = u.PasswordHash
	}
	ok, err := s.hasher.Verify(ctx, phc, pw)
	if err != nil && !errors.Is(err, auth.ErrBadHash) {
		return err
	}
	if !ok || u == nil {
		s.throttle.Fail(ctx, ak)
		s.throttle.Fail(ctx, pk)
		return errorf(http.StatusUnauthorized, "invalid username or password")
	}
	s.throttle.Reset(ctx, pk)
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
	v, err := s.tokens.Verify(token)
	if err != nil {
		// The parser's reason stays in the log: it helps an attacker
		// probing tokens more than a user, who needs to log in again.
		msg := "invalid or expired token; log in again"
		if errors.Is(err, auth.ErrRevoked) {
			msg = "token revoked (logged out); log in again"
		}
		e := unauthorized(msg)
		e.Cause = err
		e.Headers[fiber.HeaderWWWAuthenticate] = `Bearer error="invalid_token"`
		return e
	}
	c.Locals(localUser, v.Subject)
	c.Locals(localToken, token)
	c.Locals(localTokenExp, v.Expires)
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

// logout revokes the token the request was authenticated with and clears
// the cookie. Other tokens of the same user stay valid.
func (s *Server) logout(c *fiber.Ctx) error {
	token, _ := c.Locals(localToken).(string)
	exp, _ := c.Locals(localTokenExp).(time.Time)
	ctx, cancel := context.WithTimeout(c.UserContext(), 5*time.Second)
	defer cancel()
	if err := s.revoked.Revoke(ctx, token, exp); err != nil {
		return &apiError{Status: http.StatusServiceUnavailable, Message: "the token could not be revoked; try again", Cause: err}
	}
	s.tokens.Forget(token)
	c.Cookie(&fiber.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, Expires: time.Unix(0, 0),
		HTTPOnly: true, Secure: !s.cfg.Local, SameSite: fiber.CookieSameSiteStrictMode})
	return c.JSON(fiber.Map{"status": "logged out"})
}

// userRoutes are registration, login and logout.
func (s *Server) userRoutes() []route {
	return []route{
		{Method: "POST", Path: "/api/v1/auth/register", Tag: "auth", Summary: "Create an account", Handler: s.register,
			Description: "Needs the signup code. Usernames are unique case-insensitively; e-mail addresses are valid usernames. Passwords have at least 8 characters.",
			Body:        credentialsBody,
			Responses: withErrors(map[int]resp{201: {Desc: "Created; the token is also set as an HttpOnly cookie.", Schema: ref("Token")},
				403: errResp("Wrong signup code."), 409: errResp("Username taken (case-insensitive).")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/v1/auth/login", Tag: "auth", Summary: "Log in with username (or email) and password", Handler: s.login,
			Description: "Accepts JSON or a form. Unknown user and wrong password answer the same 401. Repeated failures for one account from one client address, or from one address overall, answer 429 with Retry-After and a delay that grows with each further failure; the account is never locked as a whole.",
			Body:        credentialsBody,
			Responses: withErrors(map[int]resp{200: {Desc: "Logged in; the token is also set as an HttpOnly, SameSite=Strict cookie.", Schema: ref("Token")},
				401: errResp("Invalid username or password.")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/v1/auth/logout", Tag: "auth", Summary: "Log out: revoke the token of this request", Auth: true, Handler: s.logout,
			Description: "The token (bearer or cookie) is revoked on every edge replica until it expires, and the cookie is cleared. Other tokens of the user stay valid.",
			Responses:   withErrors(map[int]resp{200: {Desc: "Revoked.", Schema: M{"type": "object", "properties": M{"status": M{"type": "string"}}}}}, 401, 503)},
	}
}

// startAuthState opens the key-value buckets of login throttling and token
// revocation and loads the revocation list.
func (s *Server) startAuthState(ctx context.Context) error {
	kv, err := bus.KVBucket(ctx, s.js, bus.LoginThrottleBucket, bus.LoginThrottleTTL, s.cfg.Replicas)
	if err != nil {
		return err
	}
	s.throttle = auth.NewThrottle(kv, s.log)
	rkv, err := bus.KVBucket(ctx, s.js, bus.RevokedTokensBucket, bus.RevokedTokensTTL, s.cfg.Replicas)
	if err != nil {
		return err
	}
	s.revoked = auth.NewRevocations(rkv)
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.revoked.Start(lctx); err != nil {
		return err
	}
	s.tokens = auth.NewTokens(s.cfg.JWTSecret, s.cfg.JWTIssuer, s.cfg.JWTAudience, s.revoked)
	return nil
}
