// Command annotator runs the annotator service alone (production mode);
// its environment is annotator.EnvVars (the README's configuration table).
package main

import (
	"context"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/annotator"
	"github.com/gradeline/gradeline/bus/admin"
)

func main() {
	cfg, err := annotator.ConfigFromEnv(os.Getenv)
	admin.Main("annotator", err, cfg.Logger, cfg.AdminAddr,
		func() map[string]admin.Check {
			return map[string]admin.Check{"nats": admin.NATSCheck(cfg.NATSURL), "mongo": annotator.MongoCheck(context.Background(), cfg.MongoURI, cfg.Database)}
		},
		func(ctx context.Context, reg prometheus.Registerer) error {
			cfg.Registerer = reg
			return annotator.Run(ctx, cfg)
		})
}
