package ingest

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"
)

func bareServer(t *testing.T) *Server {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &Server{cfg: Config{MaxBodyBytes: DefaultMaxBodyBytes}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		metrics: m, routeSet: map[string]struct{}{}}
}

func TestRecoveredPanicIsJSON(t *testing.T) {
	s := bareServer(t)
	app := s.newApp()
	app.Get("/boom", func(*fiber.Ctx) error { panic("kaboom") })
	res, err := app.Test(httptest.NewRequest("GET", "/boom", nil))
	if err != nil {
		t.Fatal(err)
	}
	var body errorBody
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 500 || body.Code != 500 || body.Message == "" || strings.Contains(body.Message, "kaboom") {
		t.Fatalf("%d %+v", res.StatusCode, body)
	}
	if !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") || res.Header.Get("X-Request-Id") == "" {
		t.Fatalf("headers %v", res.Header)
	}
}

// The client address comes from the forwarding headers only when the
// direct peer is a trusted proxy, read from the right.
func TestClientIP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trusted string
		headers map[string]string
		want    string
	}{
		{"untrusted peer: headers ignored", "10.0.0.0/8", map[string]string{"X-Forwarded-For": "6.6.6.6"}, "0.0.0.0"},
		{"trusted peer, one hop", "0.0.0.0/32", map[string]string{"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"},
		{"client-written entry on the left is ignored", "0.0.0.0/32, 10.0.0.0/8", map[string]string{"X-Forwarded-For": "6.6.6.6, 203.0.113.7, 10.1.2.3"}, "203.0.113.7"},
		{"Forwarded header", "0.0.0.0", map[string]string{"Forwarded": `for=6.6.6.6, for="[2001:db8::7]:4711";proto=https`}, "2001:db8::7"},
		{"garbage stops the walk", "0.0.0.0/32", map[string]string{"X-Forwarded-For": "6.6.6.6, not-an-ip"}, "0.0.0.0"},
		{"trusted peer without headers", "0.0.0.0/32", nil, "0.0.0.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := bareServer(t)
			var err error
			if s.cfg.TrustedProxies, err = ParseTrustedProxies(tc.trusted); err != nil {
				t.Fatal(err)
			}
			app := fiber.New()
			app.Get("/", func(c *fiber.Ctx) error { return c.SendString(s.clientIP(c)) })
			req := httptest.NewRequest("GET", "/", nil)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			res, err := app.Test(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(res.Body)
			if string(got) != tc.want {
				t.Fatalf("client %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := ParseTrustedProxies("10.0.0.0/8, nonsense"); err == nil {
		t.Fatal("a bad entry must be an error")
	}
}

func TestLoadOrCreateSecret(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	a, err := LoadOrCreateSecret(dir)
	if err != nil || len(a) != 32 {
		t.Fatalf("%v %d", err, len(a))
	}
	st, err := os.Stat(filepath.Join(dir, secretFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v", st.Mode(), err)
	}
	b, err := LoadOrCreateSecret(dir)
	if err != nil || string(a) != string(b) {
		t.Fatal("secret not reused")
	}
	_ = os.Chmod(filepath.Join(dir, secretFile), 0o644)
	if _, err := LoadOrCreateSecret(dir); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, secretFile)); st.Mode().Perm() != 0o600 {
		t.Fatalf("open permissions not tightened: %v", st.Mode())
	}
	if err := os.WriteFile(filepath.Join(dir, secretFile), []byte("abcd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateSecret(dir); err == nil {
		t.Fatal("short secret accepted")
	}
	if _, err := LoadOrCreateSecret(""); err == nil {
		t.Fatal("empty dir accepted")
	}
}

func TestConfigValidation(t *testing.T) {
	base := Config{NATSURL: "nats://x", MongoURI: "mongodb://x", JWTSecret: make([]byte, 32), SignupCode: "c"}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"short secret", func(c *Config) { c.JWTSecret = []byte("short") }, "JWTSecret"},
		{"no signup code", func(c *Config) { c.SignupCode = "" }, "SignupCode"},
		{"no nats", func(c *Config) { c.NATSURL = "" }, "NATSURL"},
		{"no mongo", func(c *Config) { c.MongoURI = "" }, "MongoURI"},
	} {
		c := base
		tc.mutate(&c)
		if _, err := c.withDefaults(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if _, err := New(context.Background(), c); err == nil {
			t.Fatalf("%s: New accepted it", tc.name)
		}
	}
	local := base
	local.SignupCode, local.Local = "", true
	got, err := local.withDefaults()
	if err != nil || got.SignupCode != LocalSignupCode || got.MaxBodyBytes != 20<<20 || got.GradeWait != 10*time.Second || got.Addr != ":8080" {
		t.Fatalf("%+v %v", got, err)
	}
}

func TestParseWait(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 7 * time.Second, "0": 0, "5": 5 * time.Second, "1.5": 1500 * time.Millisecond, "250ms": 250 * time.Millisecond, "60s": time.Minute} {
		got, err := parseWait(in, 7*time.Second)
		if err != nil || got != want {
			t.Fatalf("%q: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"-1", "abc", "61s", "1h", "NaN"} {
		if _, err := parseWait(in, time.Second); err == nil {
			t.Fatalf("%q accepted", in)
		}
	}
}
