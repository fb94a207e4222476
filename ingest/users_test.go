package ingest_test

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/gradeline/gradeline/ingest"
)

func TestRegisterAndLogin(t *testing.T) {
	s := startIngest(t)
	c := s.client(t)

	r := c.json("POST", "/api/v1/auth/register", map[string]string{"username": "Alice", "password": "s3cret-pass", "signupCode": "letmein"})
	if r.Status != http.StatusCreated {
		t.Fatalf("register: %d %s", r.Status, r.Body)
	}
	body := r.JSON(t)
	if body["expiresIn"] != float64(43200) || body["token"] == "" {
		t.Fatalf("register body %v", body)
	}
	claims := parseClaims(t, body["token"].(string))
	if claims.Subject != "alice" || claims.Issuer != ingest.DefaultIssuer || len(claims.Audience) != 1 || claims.Audience[0] != ingest.DefaultAudience {
		t.Fatalf("claims %+v", claims)
	}
	if got := claims.ExpiresAt.Sub(claims.IssuedAt.Time); got != 12*time.Hour {
		t.Fatalf("lifetime %v", got)
	}

	for _, tc := range []struct {
		name string
		send func() response
	}{
		{"json username", func() response {
			return c.json("POST", "/api/v1/auth/login", map[string]string{"username": "alice", "password": "s3cret-pass"})
		}},
		{"json username other case and spaces", func() response {
			return c.json("POST", "/api/v1/auth/login", map[string]string{"username": "  ALICE ", "password": "s3cret-pass"})
		}},
		{"json email field", func() response {
			return c.json("POST", "/api/v1/auth/login", map[string]string{"email": "alice", "password": "s3cret-pass"})
		}},
		{"urlencoded form", func() response {
			return c.form("/api/v1/auth/login", map[string]string{"username": "alice", "password": "s3cret-pass"})
		}},
		{"multipart form", func() response {
			return c.multipart("POST", "/api/v1/auth/login", [][2]string{{"username", "alice"}, {"password", "s3cret-pass"}})
		}},
		{"seed /api/login", func() response {
			return c.json("POST", "/api/login", map[string]string{"username": "alice", "password": "s3cret-pass"})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.send()
			if r.Status != http.StatusOK {
				t.Fatalf("login: %d %s", r.Status, r.Body)
			}
			b := r.JSON(t)
			if b["expiresIn"] != float64(43200) {
				t.Fatalf("body %v", b)
			}
			if parseClaims(t, b["token"].(string)).Subject != "alice" {
				t.Fatal("wrong subject")
			}
			cookie := findCookie(r, ingest.CookieName)
			if cookie == "" {
				t.Fatal("no token cookie")
			}
			for _, attr := range []string{"HttpOnly", "SameSite=Strict", "Secure", "Path=/"} {
				if !strings.Contains(strings.ToLower(cookie), strings.ToLower(attr)) {
					t.Fatalf("cookie %q lacks %s", cookie, attr)
				}
			}
		})
	}
}

func parseClaims(t *testing.T, tok string) *jwt.RegisteredClaims {
	t.Helper()
	var claims jwt.RegisteredClaims
	if _, err := jwt.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return secret, nil },
		jwt.WithValidMethods([]string{"HS256"})); err != nil {
		t.Fatalf("token does not verify: %v", err)
	}
	return &claims
}

func findCookie(r response, name string) string {
	for _, c := range r.Header.Values("Set-Cookie") {
		if strings.HasPrefix(c, name+"=") {
			return c
		}
	}
	return ""
}

func TestLocalModeCookieNotSecureAndSeedSignupCode(t *testing.T) {
	s := startIngest(t, func(c *ingest.Config) { c.Local, c.SignupCode = true, "" })
	c := s.client(t)
	// The seed's request body (its password "password1" is now refused as a common password).
	r := c.json("POST", "/api/register", `{ "username": "user1", "password":"pass-word-17", "signupCode":"CS193S"}`)
	if r.Status != http.StatusCreated {
		t.Fatalf("seed register with CS193S in local mode: %d %s", r.Status, r.Body)
	}
	cookie := findCookie(r, ingest.CookieName)
	if cookie == "" || strings.Contains(strings.ToLower(cookie), "secure") {
		t.Fatalf("local mode cookie %q: want present and not Secure", cookie)
	}
	if !strings.Contains(strings.ToLower(cookie), "httponly") || !strings.Contains(strings.ToLower(cookie), "samesite=strict") {
		t.Fatalf("cookie %q", cookie)
	}
	r = c.json("POST", "/api/login", `{ "username": "user1", "password":"pass-word-17"}`)
	if r.Status != http.StatusOK {
		t.Fatalf("seed login: %d %s", r.Status, r.Body)
	}
}

func TestSeedUserAliases(t *testing.T) {
	s := startIngest(t)
	c := s.client(t)
	r := c.json("POST", "/api/user/register", map[string]string{"email": "bob@example.org", "password": "hunter2hunter2", "signupCode": "letmein"})
	if r.Status != http.StatusCreated {
		t.Fatalf("register with email: %d %s", r.Status, r.Body)
	}
	// The seed's /api/user/login takes a form with email and password.
	r = c.form("/api/user/login", map[string]string{"email": "bob@example.org", "password": "hunter2hunter2"})
	if r.Status != http.StatusOK {
		t.Fatalf("form login: %d %s", r.Status, r.Body)
	}
	if parseClaims(t, r.JSON(t)["token"].(string)).Subject != "bob@example.org" {
		t.Fatal("subject")
	}
	r = c.json("POST", "/api/user/login", map[string]string{"email": "BOB@example.org", "password": "hunter2hunter2"})
	if r.Status != http.StatusOK {
		t.Fatalf("json login with email: %d %s", r.Status, r.Body)
	}
}

func TestRegisterBadInputs(t *testing.T) {
	s := startIngest(t)
	c := s.client(t)
	if r := c.json("POST", "/api/v1/auth/register", map[string]string{"username": "Carol", "password": "longenough", "signupCode": "letmein"}); r.Status != 201 {
		t.Fatalf("setup: %d %s", r.Status, r.Body)
	}
	for _, tc := range []struct {
		name   string
		body   string
		status int
		detail string
	}{
		{"wrong signup code", `{"username":"dave","password":"longenough","signupCode":"nope"}`, 403, "signup code"},
		{"taken username", `{"username":"carol","password":"longenough","signupCode":"letmein"}`, 409, "taken"},
		{"taken username other case", `{"username":"CAROL ","password":"longenough","signupCode":"letmein"}`, 409, "taken"},
		{"weak password", `{"username":"dave","password":"short","signupCode":"letmein"}`, 422, "password"},
		{"username too short", `{"username":"ab","password":"longenough","signupCode":"letmein"}`, 422, "username"},
		{"username with space", `{"username":"da ve","password":"longenough","signupCode":"letmein"}`, 422, "username"},
		{"username injection", `{"username":"<script>alert(1)</script>","password":"longenough","signupCode":"letmein"}`, 422, "username"},
		{"username mongo operator", `{"username":{"$ne":""},"password":"longenough","signupCode":"letmein"}`, 422, "username"},
		{"missing password", `{"username":"dave","signupCode":"letmein"}`, 422, "password: required"},
		{"missing everything", `{}`, 422, "username: required"},
		{"empty body", ``, 422, "username: required"},
		{"wrong type", `{"username":123,"password":"longenough","signupCode":"letmein"}`, 422, "username"},
		{"malformed JSON", `{"username":"dave",`, 400, "malformed"},
		{"not an object", `["dave"]`, 422, ""},
		{"trailing garbage", `{"username":"dave","password":"longenough","signupCode":"letmein"} x`, 400, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.json("POST", "/api/v1/auth/register", tc.body)
			got := expectError(t, r, tc.status)
			if !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
	t.Run("e-mail is a valid username", func(t *testing.T) {
		r := c.json("POST", "/api/v1/auth/register", map[string]string{"username": "erin+x@example.com", "password": "longenough", "signupCode": "letmein"})
		if r.Status != 201 {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
	})
	t.Run("form register", func(t *testing.T) {
		r := c.form("/api/v1/auth/register", map[string]string{"username": "frank", "password": "longenough", "signupCode": "letmein"})
		if r.Status != 201 {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
	})
}

func TestLoginFailuresAreIndistinguishableAndRateLimited(t *testing.T) {
	s := startIngest(t)
	c := s.client(t)
	if r := c.json("POST", "/api/v1/auth/register", map[string]string{"username": "grace", "password": "longenough", "signupCode": "letmein"}); r.Status != 201 {
		t.Fatal(r.Status)
	}
	wrong := c.json("POST", "/api/v1/auth/login", map[string]string{"username": "grace", "password": "wrongwrong"})
	unknown := c.json("POST", "/api/v1/auth/login", map[string]string{"username": "nobody-here", "password": "wrongwrong"})
	expectError(t, wrong, 401)
	expectError(t, unknown, 401)
	if string(wrong.Body) != string(unknown.Body) {
		t.Fatalf("unknown user and wrong password differ:\n%s\n%s", wrong.Body, unknown.Body)
	}
	expectError(t, c.json("POST", "/api/v1/auth/login", map[string]string{"username": "grace"}), 422)
	expectError(t, c.json("POST", "/api/v1/auth/login", map[string]string{"password": "x"}), 422)
	expectError(t, c.json("POST", "/api/v1/auth/login", `{"username":`), 400)
	expectError(t, c.json("POST", "/api/v1/auth/login", `{"username":["grace"],"password":"longenough"}`), 422)

	// Throttling per (account, address) and per address is covered by
	// TestLoginThrottleDoesNotLockOwnerOut.
}

func TestTokens(t *testing.T) {
	s := startIngest(t)
	c, name := s.newUser(t)
	now := time.Now()
	sign := func(method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
		tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := jwt.MapClaims{"sub": name, "iss": ingest.DefaultIssuer, "aud": ingest.DefaultAudience, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	with := func(k string, v any) jwt.MapClaims {
		m := jwt.MapClaims{}
		for kk, vv := range good {
			m[kk] = vv
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	b64 := base64.RawURLEncoding.EncodeToString
	algNone := b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + b64([]byte(`{"sub":"`+name+`","iss":"gradeline","aud":"gradeline-api","exp":`+strconv.FormatInt(now.Add(time.Hour).Unix(), 10)+`,"iat":`+strconv.FormatInt(now.Unix(), 10)+`}`)) + "."
	parts := strings.Split(c.token, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tampered := parts[0] + "." + b64([]byte(strings.Replace(string(payload), name, "admin", 1))) + "." + parts[2]

	annotate := func(header map[string]string) response {
		cl := s.client(t)
		h := map[string]string{"Content-Type": "application/json"}
		for k, v := range header {
			h[k] = v
		}
		return cl.do("POST", "/api/v1/annotations", strings.NewReader(`{"annotation":{"ok":true}}`), h)
	}
	bearer := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }

	if r := annotate(bearer(sign(jwt.SigningMethodHS256, secret, good))); r.Status != 202 {
		t.Fatalf("well-formed token: %d %s", r.Status, r.Body)
	}
	if r := annotate(map[string]string{"Cookie": ingest.CookieName + "=" + c.token}); r.Status != 202 {
		t.Fatalf("cookie token: %d %s", r.Status, r.Body)
	}
	for _, tc := range []struct {
		name   string
		header map[string]string
	}{
		{"missing", nil},
		{"empty bearer", map[string]string{"Authorization": "Bearer "}},
		{"basic scheme", map[string]string{"Authorization": "Basic " + b64([]byte("a:b"))}},
		{"garbage", bearer("not.a.jwt")},
		{"expired", bearer(sign(jwt.SigningMethodHS256, secret, with("exp", now.Add(-time.Hour).Unix())))},
		{"no exp", bearer(sign(jwt.SigningMethodHS256, secret, with("exp", nil)))},
		{"issued in the future", bearer(sign(jwt.SigningMethodHS256, secret, with("iat", now.Add(time.Hour).Unix())))},
		{"wrong audience", bearer(sign(jwt.SigningMethodHS256, secret, with("aud", "someone-else")))},
		{"wrong issuer", bearer(sign(jwt.SigningMethodHS256, secret, with("iss", "evil")))},
		{"no subject", bearer(sign(jwt.SigningMethodHS256, secret, with("sub", nil)))},
		{"wrong key", bearer(sign(jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), good))},
		{"HS512 with the right key", bearer(sign(jwt.SigningMethodHS512, secret, good))},
		{"alg none", bearer(algNone)},
		{"tampered payload", bearer(tampered)},
		{"tampered cookie", map[string]string{"Cookie": ingest.CookieName + "=" + tampered}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := annotate(tc.header)
			expectError(t, r, 401)
			if r.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
}
