// Command annotator runs the annotator service alone (production mode).
//
// Environment:
//
//	NATS_URL                 required
//	MONGO_URI                required
//	GRADELINE_MONGO_DB       MongoDB database (default "gradeline")
//	GRADELINE_NATS_REPLICAS  replicas of the JetStream streams (default 1; 3 on a cluster)
//	GRADELINE_METRICS_ADDR   if set, serve Prometheus metrics at http://ADDR/metrics
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

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gradeline/gradeline/annotator"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
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
		Replicas: 1,
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
	if v := os.Getenv("GRADELINE_NATS_REPLICAS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 5 {
			return fmt.Errorf("GRADELINE_NATS_REPLICAS=%q: want an integer from 1 to 5", v)
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
				stop()
			}
		}()
		defer srv.Close()
	}
	return annotator.Run(ctx, cfg)
}
