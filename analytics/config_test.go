package analytics_test

import (
	"strings"
	"testing"

	"github.com/gradeline/gradeline/analytics"
)

// Production mode never defaults a server address: missing settings stop
// the service with a message naming them.
func TestRequiredEnvironment(t *testing.T) {
	cases := []struct {
		nats, dsn string
		want      []string
	}{
		{"", "", []string{`NATS_URL="": required`, `CLICKHOUSE_DSN="": required`}},
		{"nats://127.0.0.1:4222", "", []string{"CLICKHOUSE_DSN"}},
		{"", "clickhouse://127.0.0.1:9000/default", []string{"NATS_URL"}},
	}
	for _, tc := range cases {
		env := map[string]string{"NATS_URL": tc.nats, "CLICKHOUSE_DSN": tc.dsn}
		_, err := analytics.ConfigFromEnv(func(k string) string { return env[k] })
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
