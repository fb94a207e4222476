package ingest

import (
	"io"
	"net/http/httptest"
	"testing"

	"github.com/gofiber/fiber/v2"
)

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
