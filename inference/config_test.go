package inference_test

import (
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/inference"
)

func TestConfigFromEnv(t *testing.T) {
	base := map[string]string{"NATS_URL": "nats://x:4222", "ONNXRUNTIME_LIB": "/lib/ort.so"}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"minimal", nil, ""},
		{"no nats", map[string]string{"NATS_URL": ""}, `NATS_URL="": required`},
		{"no ort", map[string]string{"ONNXRUNTIME_LIB": ""}, "make install"},
		{"bad delay", map[string]string{"GRADELINE_MAX_QUEUE_DELAY": "soon"}, `GRADELINE_MAX_QUEUE_DELAY="soon"`},
		{"negative delay", map[string]string{"GRADELINE_MAX_QUEUE_DELAY": "-1ms"}, `GRADELINE_MAX_QUEUE_DELAY="-1ms"`},
		{"long delay", map[string]string{"GRADELINE_MAX_QUEUE_DELAY": "11s"}, `GRADELINE_MAX_QUEUE_DELAY="11s"`},
		{"bad pixel cap", map[string]string{"GRADELINE_MAX_IMAGE_PIXELS": "lots"}, `GRADELINE_MAX_IMAGE_PIXELS="lots"`},
		{"bad poll", map[string]string{"GRADELINE_MODELS_POLL": "0s"}, `GRADELINE_MODELS_POLL="0s"`},
		{"poll off", map[string]string{"GRADELINE_MODELS_POLL": "off"}, ""},
		{"all", map[string]string{"GRADELINE_MAX_QUEUE_DELAY": "3ms",
			"GRADELINE_MODELS_DIR": "/a:: /b :", "GRADELINE_ADMIN_ADDR": ":9090", "GRADELINE_MODELS_POLL": "500ms"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			cfg, err := inference.ConfigFromEnv(func(k string) string { return env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "poll off" && cfg.ModelsPoll >= 0 {
				t.Errorf("models poll %v, want negative (off)", cfg.ModelsPoll)
			}
			if tc.name == "all" {
				if cfg.MaxQueueDelay != 3*time.Millisecond || cfg.AdminAddr != ":9090" ||
					strings.Join(cfg.ModelsDirs, ",") != "/a,/b" || cfg.ModelsPoll != 500*time.Millisecond {
					t.Errorf("config %+v", cfg)
				}
			}
		})
	}
}
