package admin

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Var is one environment variable a binary reads. Each service package
// exports the table of its variables beside its ConfigFromEnv (the one
// place that reads them), and the README's configuration table is
// generated from those tables, so a variable the code reads cannot be
// missing from the documentation.
type Var struct {
	Name string
	// Default is what applies when the variable is unset, as the README
	// shows it (Markdown); "" when there is none.
	Default string
	// Meaning says what the variable does (Markdown, one line).
	Meaning string
}

// Variables every binary reads through this package.
var (
	VarAdminAddr = Var{Name: "GRADELINE_ADMIN_ADDR", Default: "`127.0.0.1:9090` (local mode); unset: none (service binaries)",
		Meaning: "`/healthz`, `/readyz`, `/metrics` of every service; the only place metrics are served (never the public edge)"}
	VarLogLevel = Var{Name: EnvLogLevel, Default: "`info`",
		Meaning: "`debug` logs every event a consumer receives, with the request id that caused it"}
	VarNATSURL = Var{Name: "NATS_URL", Default: "embedded (local mode), `nats://127.0.0.1:4222` with a user per service; **required** by the service binaries",
		Meaning: "a real NATS server or cluster, with the service's own user: `nats://ingest:PASSWORD@host:4222` (`tls://` for TLS)"}
	VarNATSCA = Var{Name: "NATS_CA",
		Meaning: "PEM file of the CA that signed the NATS server's certificate (`tls://` URLs)"}
	VarReplicas = Var{Name: "GRADELINE_REPLICAS", Default: "`1`",
		Meaning: "replicas of every stream and the image bucket (`gradeline setup`) and of the edge's key-value buckets; 3 on a cluster"}
)

// Env reads configuration through getenv and collects every problem, so
// that a binary refusing to start names all of them at once, each in one
// style: `VAR="value": what is wrong (what to do)`.
type Env struct {
	getenv   func(string) string
	problems []string
}

// NewEnv reads through getenv (os.Getenv, or a map in tests).
func NewEnv(getenv func(string) string) *Env { return &Env{getenv: getenv} }

// Get returns the variable's value, surrounding space removed.
func (e *Env) Get(name string) string { return strings.TrimSpace(e.getenv(name)) }

// Or returns the variable's value, or def when it is unset or empty.
func (e *Env) Or(name, def string) string {
	if v := e.Get(name); v != "" {
		return v
	}
	return def
}

// Required returns the variable's value; an empty one is a problem, with
// todo saying what to set (e.g. "e.g. nats://nats:4222").
func (e *Env) Required(name, todo string) string {
	v := e.Get(name)
	if v == "" {
		e.Problem(name, "required", todo)
	}
	return v
}

// Duration parses a Go duration in (0, limit] (no limit when limit is 0);
// unset is def.
func (e *Env) Duration(name string, def, limit time.Duration) time.Duration {
	v := e.Get(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		e.Problem(name, "not a duration", "use e.g. 2ms, 10s or 1m")
	case d <= 0 || (limit > 0 && d > limit):
		todo := "use a positive duration"
		if limit > 0 {
			todo = fmt.Sprintf("use a duration above 0 and at most %v", limit)
		}
		e.Problem(name, "out of range", todo)
	default:
		return d
	}
	return def
}

// Positive parses a positive integer; unset is def.
func (e *Env) Positive(name string, def int64) int64 {
	v := e.Get(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		e.Problem(name, "not a positive integer", fmt.Sprintf("use e.g. %d", def))
		return def
	}
	return n
}

// Paths splits a colon-separated list of paths, dropping empty entries.
func (e *Env) Paths(name string) []string {
	var out []string
	for _, p := range filepath.SplitList(e.Get(name)) {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Logger is the binary's logger at the level GRADELINE_LOG_LEVEL names:
// JSON lines on stderr, or text for a person at a terminal.
func (e *Env) Logger(text bool) *slog.Logger {
	var level slog.Level
	if v := e.Get(EnvLogLevel); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			e.Problem(EnvLogLevel, "unknown level", "use debug, info, warn or error")
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	// Lines go to stderr through the process's buffered writer (one write
	// per batch of lines, none lost: FlushLogs runs before exit).
	w := StderrLogWriter()
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if text {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(flushingHandler{h, w})
}

// Parse records the error of parsing the variable's value (when it is set)
// with parse, whose message says what is wrong.
func (e *Env) Parse(name, todo string, parse func(string) error) {
	if v := e.Get(name); v != "" {
		if err := parse(v); err != nil {
			e.Problem(name, err.Error(), todo)
		}
	}
}

// Secret returns a secret's bytes, requiring at least minBytes; its
// problems never show the value.
func (e *Env) Secret(name string, minBytes int, todo string) []byte {
	v := e.getenv(name)
	switch {
	case v == "":
		e.problems = append(e.problems, fmt.Sprintf("%s=\"\": required (%s)", name, todo))
	case len(v) < minBytes:
		e.problems = append(e.problems, fmt.Sprintf("%s=(%d bytes, not shown): too short, at least %d bytes are required (%s)", name, len(v), minBytes, todo))
	}
	return []byte(v)
}

// Add records err (nil: nothing) from a parser whose messages already
// have the form `VAR="value": what is wrong (what to do)`.
func (e *Env) Add(err error) {
	if err != nil {
		e.problems = append(e.problems, err.Error())
	}
}

// Problem records that the variable's value is wrong: what is wrong, and
// what to do about it.
func (e *Env) Problem(name, what, todo string) {
	p := fmt.Sprintf("%s=%q: %s", name, e.Get(name), what)
	if todo != "" {
		p += " (" + todo + ")"
	}
	e.problems = append(e.problems, p)
}

// Err returns every problem recorded, or nil.
func (e *Env) Err() error {
	if len(e.problems) == 0 {
		return nil
	}
	return &ConfigError{Problems: e.problems}
}

// ConfigError lists what is wrong with a binary's environment.
type ConfigError struct{ Problems []string }

func (c *ConfigError) Error() string {
	return "invalid configuration:\n  - " + strings.Join(c.Problems, "\n  - ")
}

// Main is the body of every service binary's main, after ConfigFromEnv:
// with a configuration error it prints the problems and exits 2; else it
// runs run under RunService (admin endpoints on adminAddr, when set) until
// SIGINT or SIGTERM, and exits 1 when run failed.
func Main(name string, cfgErr error, log *slog.Logger, adminAddr string, checks func() map[string]Check,
	run func(context.Context, prometheus.Registerer) error) {
	Refuse(name, cfgErr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := RunService(ctx, adminAddr, checks(), run)
	stop()
	if err != nil {
		log.Error(name+" stopped", "err", err)
	}
	FlushLogs()
	if err != nil {
		os.Exit(1)
	}
}

// Refuse stops a binary whose configuration is wrong: it prints every
// problem of cfgErr and exits 2. A nil cfgErr does nothing.
func Refuse(name string, cfgErr error) {
	if cfgErr != nil {
		FlushLogs()
		fmt.Fprintf(os.Stderr, "%s: refusing to start: %v\n", name, cfgErr)
		os.Exit(2)
	}
}

// Markdown renders vars as the rows of a Markdown table with the columns
// variable, default and meaning.
func Markdown(vars []Var) string {
	var b strings.Builder
	b.WriteString("| variable | default (local mode) | meaning |\n|---|---|---|\n")
	for _, v := range vars {
		def := v.Default
		if def == "" {
			def = "—"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", v.Name, def, v.Meaning)
	}
	return b.String()
}
