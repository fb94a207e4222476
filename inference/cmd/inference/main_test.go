package main

import (
	"strings"
	"testing"
	"time"
)

func TestConfig(t *testing.T) {
	base := map[string]string{"NATS_URL": "nats://x:4222", "ONNXRUNTIME_LIB": "/lib/ort.so"}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"minimal", nil, ""},
		{"no nats", map[string]string{"NATS_URL": ""}, "NATS_URL is required"},
		{"no ort", map[string]string{"ONNXRUNTIME_LIB": ""}, "make install"},
		{"bad delay", map[string]string{"GRADELINE_MAX_QUEUE_DELAY": "soon"}, "GRADELINE_MAX_QUEUE_DELAY"},
		{"negative delay", map[string]string{"GRADELINE_MAX_QUEUE_DELAY": "-1ms"}, "GRADELINE_MAX_QUEUE_DELAY"},
		{"bad replicas", map[string]string{"GRADELINE_REPLICAS": "0"}, "GRADELINE_REPLICAS"},
		{"all", map[string]string{"GRADELINE_MAX_QUEUE_DELAY": "3ms", "GRADELINE_REPLICAS": "3",
			"GRADELINE_MODELS_DIR": "/a:: /b :", "GRADELINE_ADMIN_ADDR": ":9090"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"GRADELINE_MAX_QUEUE_DELAY", "GRADELINE_REPLICAS", "GRADELINE_MODELS_DIR", "GRADELINE_ADMIN_ADDR"} {
				t.Setenv(k, "")
			}
			for k, v := range base {
				t.Setenv(k, v)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg, admin, err := config()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "all" {
				if cfg.MaxQueueDelay != 3*time.Millisecond || cfg.Replicas != 3 || admin != ":9090" ||
					strings.Join(cfg.ModelsDirs, ",") != "/a,/b" {
					t.Errorf("config %+v admin %q", cfg, admin)
				}
			}
		})
	}
}
