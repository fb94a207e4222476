package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
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

func TestFlagAndNATSCheck(t *testing.T) {
	var f Flag
	if f.Check(context.Background()) == nil {
		t.Fatal("flag ready before Set")
	}
	f.Set()
	if err := f.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	if err := NATSCheck(ns.ClientURL())(context.Background()); err != nil {
		t.Fatalf("running server: %v", err)
	}
	if err := NATSCheck("nats://127.0.0.1:1")(context.Background()); err == nil {
		t.Fatal("closed port reported ready")
	}
}

func TestListenAndServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	if err := ListenAndServe(ctx, "", nil, nil); err != nil {
		t.Fatalf("empty addr: %v", err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := ListenAndServe(ctx, busy.Addr().String(), nil, nil); err == nil || !strings.Contains(err.Error(), "admin: listen") {
		t.Fatalf("listening on a busy port: %v", err)
	}
	reg := NewRegistry()
	if mfs, err := reg.Gather(); err != nil || len(mfs) == 0 {
		t.Fatalf("registry: %v %d", err, len(mfs))
	}
	cancel()
}

func TestRunService(t *testing.T) {
	// Endpoints answer while the service runs; the service's own result is returned.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	err = RunService(context.Background(), addr, map[string]Check{"x": func(context.Context) error { return nil }},
		func(ctx context.Context, reg prometheus.Registerer) error {
			if reg == nil {
				return errors.New("no registry")
			}
			var resp *http.Response
			var err error
			for range 50 {
				if resp, err = http.Get("http://" + addr + "/readyz"); err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("readyz %d", resp.StatusCode)
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	// An admin address that cannot be served stops the service with the reason.
	busy, _ := net.Listen("tcp", "127.0.0.1:0")
	defer busy.Close()
	err = RunService(context.Background(), busy.Addr().String(), nil, func(ctx context.Context, _ prometheus.Registerer) error {
		<-ctx.Done()
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "admin: listen") {
		t.Fatalf("busy admin address: %v", err)
	}
}

func TestNewLogger(t *testing.T) {
	for v, want := range map[string]slog.Level{"": slog.LevelInfo, "debug": slog.LevelDebug, "WARN": slog.LevelWarn, "error": slog.LevelError} {
		t.Setenv(EnvLogLevel, v)
		log, err := NewLogger(false)
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if !log.Enabled(context.Background(), want) || log.Enabled(context.Background(), want-1) {
			t.Errorf("%q: logger not at level %v", v, want)
		}
	}
	t.Setenv(EnvLogLevel, "verbose")
	if _, err := NewLogger(true); err == nil || !strings.Contains(err.Error(), EnvLogLevel) {
		t.Fatalf("unknown level: %v", err)
	}
}

// TestNATSCheckWantsTheServicesStreams: a service whose streams the
// operator has not created yet is not ready, and its /readyz says what to
// run; after `gradeline setup` (EnsureStreams) it is.
func TestNATSCheckWantsTheServicesStreams(t *testing.T) {
	creds := map[string]bus.Credential{}
	var list []bus.Credential
	for _, u := range bus.Users() {
		pw, err := bus.NewPassword()
		if err != nil {
			t.Fatal(err)
		}
		creds[u] = bus.Credential{User: u, Password: pw}
		list = append(list, creds[u])
	}
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), Users: list})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	url := func(user string) string {
		u, err := bus.URLWithUser(ns.ClientURL(), creds[user])
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	ctx := context.Background()
	h := Handler(prometheus.NewRegistry(), map[string]Check{"nats": NATSCheck(url(bus.UserAnalytics))})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "gradeline setup") {
		t.Fatalf("/readyz before setup: %d %s", rec.Code, rec.Body)
	}
	// The operator has no streams to wait for.
	if err := NATSCheck(url(bus.UserAdmin))(ctx); err != nil {
		t.Fatalf("admin before setup: %v", err)
	}
	nc, js, err := bus.Connect(ctx, url(bus.UserAdmin), "setup", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := bus.EnsureStreams(ctx, js, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{bus.UserIngest, bus.UserInference, bus.UserAnnotator, bus.UserAnalytics} {
		if err := NATSCheck(url(u))(ctx); err != nil {
			t.Errorf("%s after setup: %v", u, err)
		}
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/readyz after setup: %d %s", rec.Code, rec.Body)
	}
}
