package ingest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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
