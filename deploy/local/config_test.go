package local_test

import (
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/deploy/local"
	"github.com/gradeline/gradeline/ingest"
)

// Local mode needs nothing set: every server is embedded and every
// default is the developer's; a wrong value still stops it, named.
func TestLocalConfigFromEnv(t *testing.T) {
	cfg, err := local.ConfigFromEnv(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != local.DefaultDataDir || cfg.HTTPAddr != ingest.DefaultAddr || cfg.AdminAddr != local.DefaultAdminAddr ||
		cfg.SignupCode != ingest.LocalSignupCode || cfg.NATSURL != "" || cfg.JWTSecret != nil || cfg.GradeWait != ingest.DefaultGradeWait {
		t.Fatalf("defaults: %+v", cfg)
	}
	env := map[string]string{"GRADELINE_NATS_SYNC": "always", "GRADELINE_MODELS_DIR": "/a::/b", "GRADELINE_MAX_QUEUE_DELAY": "2ms"}
	cfg, err = local.ConfigFromEnv(func(k string) string { return env[k] })
	if err != nil || !cfg.NATSSync.Always || strings.Join(cfg.ModelsDirs, ",") != "/a,/b" || cfg.MaxQueueDelay != 2*time.Millisecond {
		t.Fatalf("%+v %v", cfg, err)
	}
	env = map[string]string{"GRADELINE_NATS_SYNC": "sometimes", "GRADELINE_JWT_SECRET": "short", "GRADELINE_GRADE_WAIT": "soon"}
	_, err = local.ConfigFromEnv(func(k string) string { return env[k] })
	for _, want := range []string{`GRADELINE_NATS_SYNC="sometimes"`, "GRADELINE_JWT_SECRET=(5 bytes, not shown)", `GRADELINE_GRADE_WAIT="soon"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

func TestSetGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	for _, tc := range []struct {
		gogc string
		want int
	}{
		{"", local.DefaultGCPercent},
		{"150", 100}, // GOGC set: the runtime's own reading stands
	} {
		debug.SetGCPercent(100)
		local.SetGC(func(k string) string {
			if k == "GOGC" {
				return tc.gogc
			}
			return ""
		})
		if got := debug.SetGCPercent(100); got != tc.want {
			t.Errorf("GOGC=%q: collector target %d, want %d", tc.gogc, got, tc.want)
		}
	}
}
