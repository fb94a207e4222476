package annotator_test

import (
	"strings"
	"testing"

	"github.com/gradeline/gradeline/annotator"
)

func TestProductionConfig(t *testing.T) {
	cases := []struct {
		name, nats, mongo, want string
	}{
		{"nothing set", "", "", `NATS_URL="": required`},
		{"no mongo", "nats://127.0.0.1:1", "", `MONGO_URI="": required`},
		{"no nats", "", "mongodb://127.0.0.1:1/", `NATS_URL="": required`},
		{"bad log level", "nats://127.0.0.1:1", "mongodb://127.0.0.1:1/", `GRADELINE_LOG_LEVEL="loud"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"NATS_URL": tc.nats, "MONGO_URI": tc.mongo, "GRADELINE_LOG_LEVEL": "info"}
			if tc.name == "bad log level" {
				env["GRADELINE_LOG_LEVEL"] = "loud"
			}
			_, err := annotator.ConfigFromEnv(func(k string) string { return env[k] })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ConfigFromEnv: %v; want an error naming %s", err, tc.want)
			}
		})
	}
	env := map[string]string{"NATS_URL": "nats://n:4222", "MONGO_URI": "mongodb://m/", "GRADELINE_ADMIN_ADDR": ":9090"}
	cfg, err := annotator.ConfigFromEnv(func(k string) string { return env[k] })
	if err != nil || cfg.Database != annotator.DefaultDatabase || cfg.AdminAddr != ":9090" {
		t.Fatalf("%+v %v", cfg, err)
	}
}
