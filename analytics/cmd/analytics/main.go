// Command analytics loads events into ClickHouse and answers analytics
// queries over NATS.
//
// Environment: NATS_URL and CLICKHOUSE_DSN (required);
// GRADELINE_STREAM_REPLICAS (default 1; 3 on a production cluster);
// GRADELINE_METRICS_ADDR (optional, e.g. :9102) serves /metrics.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/gradeline/gradeline/analytics"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("analytics stopped", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	cfg := analytics.Config{
		NATSURL:       os.Getenv("NATS_URL"),
		ClickHouseDSN: os.Getenv("CLICKHOUSE_DSN"),
		Replicas:      1,
		Logger:        log,
	}
	var missing []string
	if cfg.NATSURL == "" {
		missing = append(missing, "NATS_URL")
	}
	if cfg.ClickHouseDSN == "" {
		missing = append(missing, "CLICKHOUSE_DSN")
	}
	if len(missing) > 0 {
		return fmt.Errorf("required environment variables are not set: %v", missing)
	}
	if v := os.Getenv("GRADELINE_STREAM_REPLICAS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("GRADELINE_STREAM_REPLICAS=%q: want a positive integer", v)
		}
		cfg.Replicas = n
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if addr := os.Getenv("GRADELINE_METRICS_ADDR"); addr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.Handler())
		srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server", "err", err)
			}
		}()
		defer srv.Close()
	}
	return analytics.Run(ctx, cfg)
}
