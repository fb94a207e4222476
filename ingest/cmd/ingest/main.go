// Command ingest runs the gradeline HTTP edge in production mode: every
// dependency and secret comes from the environment (ingest.EnvVars, the
// README's configuration table) and nothing insecure is defaulted. The
// local stack (deploy/local) runs ingest in-process instead.
package main

import (
	"context"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/ingest"
)

func main() {
	cfg, err := ingest.ConfigFromEnv(os.Getenv)
	admin.Main("ingest", err, cfg.Logger, cfg.AdminAddr,
		func() map[string]admin.Check { return map[string]admin.Check{"nats": admin.NATSCheck(cfg.NATSURL)} },
		func(ctx context.Context, reg prometheus.Registerer) error {
			cfg.Registerer = reg
			return ingest.Run(ctx, cfg)
		})
}
