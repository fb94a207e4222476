// Command inference runs the grading service alone (production mode); its
// environment is inference.EnvVars (the README's configuration table).
package main

import (
	"context"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/inference"
)

func main() {
	cfg, err := inference.ConfigFromEnv(os.Getenv)
	var ready admin.Flag
	cfg.OnReady = ready.Set
	admin.Main("inference", err, cfg.Logger, cfg.AdminAddr,
		func() map[string]admin.Check {
			return map[string]admin.Check{"nats": admin.NATSCheck(cfg.NATSURL), "models": ready.Check}
		},
		func(ctx context.Context, reg prometheus.Registerer) error {
			cfg.Registerer = reg
			return inference.Run(ctx, cfg)
		})
}
