package main

import (
	"log/slog"
	"strings"
	"testing"
)

// Production mode never defaults a server address: missing settings stop
// the service with a message naming them.
func TestRequiredEnvironment(t *testing.T) {
	cases := []struct {
		nats, dsn, replicas string
		want                []string
	}{
		{"", "", "", []string{"NATS_URL", "CLICKHOUSE_DSN"}},
		{"nats://127.0.0.1:4222", "", "", []string{"CLICKHOUSE_DSN"}},
		{"", "clickhouse://127.0.0.1:9000/default", "", []string{"NATS_URL"}},
		{"nats://127.0.0.1:4222", "clickhouse://127.0.0.1:9000/default", "zero", []string{"GRADELINE_REPLICAS"}},
	}
	for _, tc := range cases {
		t.Setenv("NATS_URL", tc.nats)
		t.Setenv("CLICKHOUSE_DSN", tc.dsn)
		t.Setenv("GRADELINE_REPLICAS", tc.replicas)
		err := run(slog.New(slog.DiscardHandler))
		if err == nil {
			t.Fatalf("%+v: no error", tc)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: %v does not name %s", tc, err, w)
			}
		}
	}
}
