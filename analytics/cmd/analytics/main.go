// Command analytics loads events into ClickHouse and answers analytics
// queries over NATS (production mode); its environment is
// analytics.EnvVars (the README's configuration table).
package main

import (
	"context"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/analytics"
	"github.com/gradeline/gradeline/bus/admin"
)

func main() {
	cfg, err := analytics.ConfigFromEnv(os.Getenv)
	admin.Main("analytics", err, cfg.Logger, cfg.AdminAddr,
		func() map[string]admin.Check {
			return map[string]admin.Check{"nats": admin.NATSCheck(cfg.NATSURL), "clickhouse": analytics.ClickHouseCheck(cfg.ClickHouseDSN)}
		},
		func(ctx context.Context, reg prometheus.Registerer) error {
			cfg.Registerer = reg
			return analytics.Run(ctx, cfg)
		})
}
