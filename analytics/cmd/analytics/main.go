// Command analytics loads events into ClickHouse and answers analytics
// queries over NATS (production mode).
//
// Environment:
//
//	NATS_URL              required
//	CLICKHOUSE_DSN        required, e.g. clickhouse://host:9000/default
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

	"github.com/gradeline/gradeline/analytics"
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
		log.Error("analytics stopped", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	cfg := analytics.Config{
		NATSURL:       os.Getenv("NATS_URL"),
		ClickHouseDSN: os.Getenv("CLICKHOUSE_DSN"),
		Logger:        log,
	}
	var problems []string
	if cfg.NATSURL == "" {
		problems = append(problems, "NATS_URL")
	}
	if cfg.ClickHouseDSN == "" {
		problems = append(problems, "CLICKHOUSE_DSN")
	}
	replicas, err := bus.ReplicasFromEnv()
	if err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("required environment variables are not set or invalid: %v", problems)
	}
	cfg.Replicas = replicas
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	checks := map[string]admin.Check{"nats": admin.NATSCheck(cfg.NATSURL), "clickhouse": analytics.ClickHouseCheck(cfg.ClickHouseDSN)}
	return admin.RunService(ctx, os.Getenv("GRADELINE_ADMIN_ADDR"), checks, func(ctx context.Context, reg prometheus.Registerer) error {
		cfg.Registerer = reg
		return analytics.Run(ctx, cfg)
	})
}
