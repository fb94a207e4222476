package ingest_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/ingest"
)

func TestProductionConfigRefusesInsecureDefaults(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	problems := func(err error) []string {
		var ce *admin.ConfigError
		if err != nil && !errors.As(err, &ce) {
			t.Fatalf("not a ConfigError: %v", err)
		}
		if ce == nil {
			return nil
		}
		return ce.Problems
	}
	_, err := ingest.ConfigFromEnv(env(nil))
	all := strings.Join(problems(err), "\n")
	for _, want := range []string{"NATS_URL", "MONGO_URI", "GRADELINE_JWT_SECRET", "GRADELINE_SIGNUP_CODE"} {
		if !strings.Contains(all, want) {
			t.Errorf("empty environment: no complaint about %s in %q", want, all)
		}
	}
	good := map[string]string{
		"NATS_URL": "nats://n:4222", "MONGO_URI": "mongodb://m/", "GRADELINE_SIGNUP_CODE": "code",
		"GRADELINE_JWT_SECRET": strings.Repeat("k", 32), "GRADELINE_HTTP_ADDR": ":9000", "GRADELINE_GRADE_WAIT": "3s",
	}
	cfg, err := ingest.ConfigFromEnv(env(good))
	if err != nil || cfg.Addr != ":9000" || cfg.GradeWait.Seconds() != 3 || cfg.Local {
		t.Fatalf("%+v %v", cfg, err)
	}
	good["GRADELINE_OIP_INLINE_TENSOR_BYTES"] = "1024"
	if cfg, err := ingest.ConfigFromEnv(env(good)); err != nil || cfg.OIPInlineTensorBytes != 1024 {
		t.Fatalf("inline tensor bytes: %d %v", cfg.OIPInlineTensorBytes, err)
	}
	delete(good, "GRADELINE_OIP_INLINE_TENSOR_BYTES")
	for k, v := range map[string]string{"GRADELINE_JWT_SECRET": "too-short", "GRADELINE_GRADE_WAIT": "soon", "GRADELINE_MAX_BODY_BYTES": "-1",
		"GRADELINE_REPLICAS": "x", "GRADELINE_TRUSTED_PROXIES": "10.0.0.0/99", "GRADELINE_LOG_LEVEL": "loud",
		"GRADELINE_OIP_INLINE_TENSOR_BYTES": "655361"} {
		bad := map[string]string{}
		for kk, vv := range good {
			bad[kk] = vv
		}
		bad[k] = v
		_, err := ingest.ConfigFromEnv(env(bad))
		if p := problems(err); len(p) != 1 || !strings.HasPrefix(p[0], k+"=") {
			t.Errorf("%s=%q: problems %v", k, v, p)
		}
	}
	if _, err := ingest.ConfigFromEnv(env(map[string]string{"GRADELINE_JWT_SECRET": "a-secret-nobody-may-read"})); strings.Contains(err.Error(), "nobody") {
		t.Errorf("the secret is shown: %v", err)
	}
}
