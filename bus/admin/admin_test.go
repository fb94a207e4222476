package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "gradeline_test_total", Help: "t"})
	reg.MustRegister(c)
	c.Inc()
	down := errors.New("mongo: connection refused")
	tests := []struct {
		name   string
		checks map[string]Check
		path   string
		code   int
		body   string
	}{
		{"alive", nil, "/healthz", 200, `"ok"`},
		{"ready", map[string]Check{"nats": func(context.Context) error { return nil }}, "/readyz", 200, `"ready"`},
		{"not ready", map[string]Check{"nats": func(context.Context) error { return nil }, "mongo": func(context.Context) error { return down }}, "/readyz", 503, "connection refused"},
		{"metrics", nil, "/metrics", 200, "gradeline_test_total 1"},
		{"unknown", nil, "/nope", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Handler(reg, tt.checks).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tt.path, nil))
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.body) {
				t.Fatalf("%s: %d %s", tt.path, rec.Code, rec.Body)
			}
			if tt.path == "/readyz" {
				var v struct{ Checks map[string]string }
				if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil || len(v.Checks) != len(tt.checks) {
					t.Fatalf("readyz body %s", rec.Body)
				}
			}
		})
	}
}
