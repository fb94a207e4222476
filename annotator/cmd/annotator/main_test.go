package main

import (
	"log/slog"
	"strings"
	"testing"
)

func TestProductionConfig(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	cases := []struct {
		name, nats, mongo, replicas, want string
	}{
		{"nothing set", "", "", "", "NATS_URL MONGO_URI"},
		{"no mongo", "nats://127.0.0.1:1", "", "", "MONGO_URI"},
		{"no nats", "", "mongodb://127.0.0.1:1/", "", "NATS_URL"},
		{"bad replicas", "nats://127.0.0.1:1", "mongodb://127.0.0.1:1/", "three", "GRADELINE_REPLICAS"},
		{"replicas out of range", "nats://127.0.0.1:1", "mongodb://127.0.0.1:1/", "0", "GRADELINE_REPLICAS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NATS_URL", tc.nats)
			t.Setenv("MONGO_URI", tc.mongo)
			t.Setenv("GRADELINE_REPLICAS", tc.replicas)
			err := run(log)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run: %v; want an error naming %s", err, tc.want)
			}
		})
	}
}
