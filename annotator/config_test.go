package annotator_test

import (
	"strings"
	"testing"

	"github.com/gradeline/gradeline/annotator"
)

func TestProductionConfig(t *testing.T) {
	cases := []struct {
		name, nats, mongo, replicas, want string
	}{
		{"nothing set", "", "", "", `NATS_URL="": required`},
		{"no mongo", "nats://127.0.0.1:1", "", "", `MONGO_URI="": required`},
		{"no nats", "", "mongodb://127.0.0.1:1/", "", `NATS_URL="": required`},
		{"bad replicas", "nats://127.0.0.1:1", "mongodb://127.0.0.1:1/", "three", `GRADELINE_REPLICAS="three"`},
		{"replicas out of range", "nats://127.0.0.1:1", "mongodb://127.0.0.1:1/", "0", `GRADELINE_REPLICAS="0"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"NATS_URL": tc.nats, "MONGO_URI": tc.mongo, "GRADELINE_REPLICAS": tc.replicas}
			_, err := annotator.ConfigFromEnv(func(k string) string { return env[k] })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ConfigFromEnv: %v; want an error naming %s", err, tc.want)
			}
		})
	}
	env := map[string]string{"NATS_URL": "nats://n:4222", "MONGO_URI": "mongodb://m/", "GRADELINE_ADMIN_ADDR": ":9090"}
	cfg, err := annotator.ConfigFromEnv(func(k string) string { return env[k] })
	if err != nil || cfg.Database != annotator.DefaultDatabase || cfg.Replicas != 1 || cfg.AdminAddr != ":9090" {
		t.Fatalf("%+v %v", cfg, err)
	}
}
