package ingest

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
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
