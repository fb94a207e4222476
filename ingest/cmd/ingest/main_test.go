package main

import (
	"strings"
	"testing"
)

func TestProductionConfigRefusesInsecureDefaults(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	_, problems := configFromEnv(env(nil))
	all := strings.Join(problems, "\n")
	for _, want := range []string{"NATS_URL", "MONGO_URI", "GRADELINE_JWT_SECRET", "GRADELINE_SIGNUP_CODE"} {
		if !strings.Contains(all, want) {
			t.Errorf("empty environment: no complaint about %s in %q", want, all)
		}
	}
	good := map[string]string{
		"NATS_URL": "nats://n:4222", "MONGO_URI": "mongodb://m/", "GRADELINE_SIGNUP_CODE": "code",
		"GRADELINE_JWT_SECRET": strings.Repeat("k", 32), "GRADELINE_HTTP_ADDR": ":9000", "GRADELINE_GRADE_WAIT": "3s",
	}
	cfg, problems := configFromEnv(env(good))
	if len(problems) != 0 || cfg.Addr != ":9000" || cfg.GradeWait.Seconds() != 3 || cfg.Local {
		t.Fatalf("%+v %v", cfg, problems)
	}
	for k, v := range map[string]string{"GRADELINE_JWT_SECRET": "too-short", "GRADELINE_GRADE_WAIT": "soon", "GRADELINE_MAX_BODY_BYTES": "-1", "GRADELINE_REPLICAS": "x"} {
		bad := map[string]string{}
		for kk, vv := range good {
			bad[kk] = vv
		}
		bad[k] = v
		if _, problems := configFromEnv(env(bad)); len(problems) != 1 || !strings.Contains(problems[0], k) {
			t.Errorf("%s=%q: problems %v", k, v, problems)
		}
	}
}
