// Command annotator runs the annotator service alone (production mode).
//
// Environment:
//
//	NATS_URL              required
//	MONGO_URI             required
//	GRADELINE_MONGO_DB    MongoDB database (default "gradeline")
//	GRADELINE_REPLICAS    replicas of the JetStream streams (default 1; 3 on a cluster)
//	GRADELINE_ADMIN_ADDR  if set, serve /healthz, /readyz and /metrics there (e.g. :9090)
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/annotator"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/admin"
)

func main() {
	log, err := admin.NewLogger(false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := run(log); err != nil {
		log.Error("annotator failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	cfg := annotator.Config{
		NATSURL:  os.Getenv("NATS_URL"),
		MongoURI: os.Getenv("MONGO_URI"),
		Database: os.Getenv("GRADELINE_MONGO_DB"),
		Logger:   log,
	}
	var missing []string
	if cfg.NATSURL == "" {
		missing = append(missing, "NATS_URL")
	}
	if cfg.MongoURI == "" {
		missing = append(missing, "MONGO_URI")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing required environment: %v", missing)
	}
	var err error
	if cfg.Replicas, err = bus.ReplicasFromEnv(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	checks := map[string]admin.Check{"nats": admin.NATSCheck(cfg.NATSURL), "mongo": annotator.MongoCheck(cfg.MongoURI, cfg.Database)}
	return admin.RunService(ctx, os.Getenv("GRADELINE_ADMIN_ADDR"), checks, func(ctx context.Context, reg prometheus.Registerer) error {
		cfg.Registerer = reg
		return annotator.Run(ctx, cfg)
	})
}
