// Command inference runs the grading service alone.
//
//	NATS_URL                   NATS server with JetStream (required)
//	ONNXRUNTIME_LIB            path of libonnxruntime.so.1 (required; `make install` fetches it)
//	GRADELINE_MODELS_DIR       colon-separated folders of model directories (optional)
//	GRADELINE_MAX_QUEUE_DELAY  how long a batch waits for more images, e.g. 2ms (default 1ms)
//	GRADELINE_REPLICAS         replicas of streams and the image bucket (default 1; 3 on a cluster)
//	GRADELINE_ADMIN_ADDR       if set, serve /healthz, /readyz and /metrics there (e.g. :9090)
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/inference"
)

func main() {
	log, err := admin.NewLogger(false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	cfg, adminAddr, err := config()
	if err != nil {
		fmt.Fprintln(os.Stderr, "inference:", err)
		os.Exit(2)
	}
	cfg.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var ready admin.Flag
	cfg.OnReady = ready.Set
	checks := map[string]admin.Check{"nats": admin.NATSCheck(cfg.NATSURL), "models": ready.Check}
	err = admin.RunService(ctx, adminAddr, checks, func(ctx context.Context, reg prometheus.Registerer) error {
		cfg.Registerer = reg
		return inference.Run(ctx, cfg)
	})
	if err != nil {
		log.Error("inference stopped", "err", err)
		os.Exit(1)
	}
}

func config() (inference.Config, string, error) {
	cfg := inference.Config{
		NATSURL: os.Getenv("NATS_URL"),
		ORTLib:  os.Getenv("ONNXRUNTIME_LIB"),
	}
	if cfg.NATSURL == "" {
		return cfg, "", fmt.Errorf("NATS_URL is required (e.g. nats://127.0.0.1:4222)")
	}
	if cfg.ORTLib == "" {
		return cfg, "", fmt.Errorf("ONNXRUNTIME_LIB is required: the path of libonnxruntime.so.1 (`make install` puts it in .cache/onnxruntime)")
	}
	for _, d := range filepath.SplitList(os.Getenv("GRADELINE_MODELS_DIR")) {
		if d = strings.TrimSpace(d); d != "" {
			cfg.ModelsDirs = append(cfg.ModelsDirs, d)
		}
	}
	if v := os.Getenv("GRADELINE_MAX_QUEUE_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > 10*time.Second {
			return cfg, "", fmt.Errorf("GRADELINE_MAX_QUEUE_DELAY=%q: want a duration in (0, 10s], e.g. 2ms", v)
		}
		cfg.MaxQueueDelay = d
	}
	var err error
	if cfg.Replicas, err = bus.ReplicasFromEnv(); err != nil {
		return cfg, "", err
	}
	return cfg, os.Getenv("GRADELINE_ADMIN_ADDR"), nil
}
