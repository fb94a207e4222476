// Package admin serves the operational endpoints every gradeline service
// has: /healthz (the process is alive), /readyz (its dependencies answer)
// and /metrics (Prometheus). Services without an HTTP API of their own
// serve them on an admin port.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gradeline/gradeline/bus"
)

// Check reports whether one dependency is usable.
type Check func(ctx context.Context) error

// Readiness runs every check concurrently, each bounded by timeout, and
// returns the result per name ("ok" or the error) and whether all passed.
func Readiness(ctx context.Context, checks map[string]Check, timeout time.Duration) (map[string]string, bool) {
	out := make(map[string]string, len(checks))
	var mu sync.Mutex
	var wg sync.WaitGroup
	ok := true
	for name, check := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			err := check(cctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				out[name], ok = err.Error(), false
			} else {
				out[name] = "ok"
			}
		}()
	}
	wg.Wait()
	return out, ok
}

// Handler serves /healthz, /readyz and /metrics.
func Handler(g prometheus.Gatherer, checks map[string]Check) http.Handler {
	if g == nil {
		g = prometheus.DefaultGatherer
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		res, ok := Readiness(r.Context(), checks, 2*time.Second)
		status, code := "ready", http.StatusOK
		if !ok {
			status, code = "not ready", http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]any{"status": status, "checks": res})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Serve serves h on ln until ctx is cancelled, then shuts down gracefully.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// ListenAndServe serves Handler(g, checks) on addr until ctx is cancelled.
// An empty addr serves nothing and returns at once.
func ListenAndServe(ctx context.Context, addr string, g prometheus.Gatherer, checks map[string]Check) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin: listen %s: %w", addr, err)
	}
	return Serve(ctx, ln, Handler(g, checks))
}

// NATSCheck reports whether the NATS server at url accepts a connection
// and answers a round trip and, when url names a service user, whether the
// streams that service needs exist (bus.CheckStreams): a service started
// before the deploy step (`gradeline setup`) is not ready, and says so.
func NATSCheck(natsURL string) Check {
	user := userOfURL(natsURL)
	return func(ctx context.Context) error {
		nc, err := nats.Connect(natsURL, nats.Timeout(time.Second), nats.Name("readiness"), bus.CAOption(),
			nats.CustomInboxPrefix(bus.InboxPrefixOf(user)))
		if err != nil {
			return err
		}
		defer nc.Close()
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
		}
		if err := nc.FlushWithContext(ctx); err != nil {
			return err
		}
		if len(bus.StreamsNeededBy(user)) == 0 {
			return nil
		}
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		return bus.CheckStreams(ctx, js, user)
	}
}

// userOfURL returns the user named in the first of the NATS URLs, if any.
func userOfURL(natsURL string) string {
	first, _, _ := strings.Cut(natsURL, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil || u.User == nil {
		return ""
	}
	return u.User.Username()
}

// Flag is a readiness check a service sets once it is ready.
type Flag struct{ ok atomic.Bool }

// Set marks the service ready.
func (f *Flag) Set() { f.ok.Store(true) }

// Check fails until Set was called.
func (f *Flag) Check(context.Context) error {
	if !f.ok.Load() {
		return errors.New("starting")
	}
	return nil
}

// NewRegistry returns a registry with the Go runtime and process collectors
// and the bus metrics, for a service binary.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(bus.Collectors()...)
	return reg
}

// RegisterBus adds the bus metrics (bus.Collectors) to reg, keeping those
// already there: what a registry built elsewhere needs before its
// process publishes or consumes.
func RegisterBus(reg prometheus.Registerer) error {
	for _, c := range bus.Collectors() {
		if _, err := Register(reg, c); err != nil {
			return err
		}
	}
	return nil
}

// Register adds c to reg, or returns the collector already registered
// there under the same description, so a service started twice in one
// process (tests, the local stack) shares its metrics instead of failing.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("metrics: %w", err)
	}
	return c, nil
}

// MustRegister is Register for collectors whose registration can fail only
// by a programming error (a name used twice with different labels).
func MustRegister[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	c, err := Register(reg, c)
	if err != nil {
		panic(err)
	}
	return c
}

// RunService runs a service binary: run gets a registry holding the bus
// and runtime metrics, and the admin endpoints serve it on addr (none when
// addr is empty) with checks until run returns. An admin address that
// cannot be served stops the service: its probes would fail anyway.
func RunService(ctx context.Context, addr string, checks map[string]Check, run func(context.Context, prometheus.Registerer) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	reg := NewRegistry()
	adminDone := make(chan struct{})
	go func() {
		defer close(adminDone)
		if err := ListenAndServe(ctx, addr, reg, checks); err != nil {
			cancel(err)
		}
	}()
	err := run(ctx, reg)
	if cause := context.Cause(ctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	cancel(nil)
	<-adminDone
	return err
}

// EnvLogLevel names the environment variable with the log level of every
// binary: debug, info (default), warn or error. At debug, consumers log
// every event they receive with the request id that caused it.
const EnvLogLevel = "GRADELINE_LOG_LEVEL"

// NewLogger returns the structured logger of a binary: JSON lines on
// stderr (text when text is set, for a person at a terminal), at the level
// GRADELINE_LOG_LEVEL names. An unknown level is an error naming the choices.
func NewLogger(text bool) (*slog.Logger, error) {
	var level slog.Level
	if v := os.Getenv(EnvLogLevel); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			return nil, fmt.Errorf("%s=%q: want debug, info, warn or error", EnvLogLevel, v)
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	if text {
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
}
