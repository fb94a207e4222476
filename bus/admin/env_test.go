package admin

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestEnvNamesEveryProblemInOneStyle(t *testing.T) {
	vals := map[string]string{"D": "soon", "P": "-3", "S": "short", "L": "loud"}
	e := NewEnv(func(k string) string { return vals[k] })
	if got := e.Or("UNSET", "def"); got != "def" {
		t.Fatalf("Or: %q", got)
	}
	e.Required("R", "e.g. nats://nats:4222")
	if d := e.Duration("D", time.Second, 0); d != time.Second {
		t.Fatalf("bad duration gives the default, got %v", d)
	}
	e.Positive("P", 7)
	e.Secret("S", 32, "e.g. `openssl rand -hex 32`")
	vals[EnvLogLevel] = "loud"
	e.Logger(false)
	var ce *ConfigError
	if !errors.As(e.Err(), &ce) {
		t.Fatalf("Err: %v", e.Err())
	}
	want := []string{
		`R="": required (e.g. nats://nats:4222)`,
		`D="soon": not a duration (use e.g. 2ms, 10s or 1m)`,
		`P="-3": not a positive integer (use e.g. 7)`,
		`S=(5 bytes, not shown): too short, at least 32 bytes are required (e.g. ` + "`openssl rand -hex 32`)",
		`GRADELINE_LOG_LEVEL="loud": unknown level (use debug, info, warn or error)`,
	}
	if strings.Join(ce.Problems, "\n") != strings.Join(want, "\n") {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(ce.Problems, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(e.Err().Error(), "short") && strings.Contains(e.Err().Error(), `"short"`) {
		t.Fatal("a secret's value is shown")
	}
	if NewEnv(func(string) string { return "" }).Err() != nil {
		t.Fatal("an empty environment without requirements is no error")
	}
}
