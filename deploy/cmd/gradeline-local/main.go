// Command gradeline-local runs the whole gradeline pipeline in one process
// with embedded servers: what `make run` starts. Configuration comes from
// the environment (see README); unset server URLs mean "embedded".
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/deploy/local"
)

func main() {
	log, err := admin.NewLogger(true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	slog.SetDefault(log)
	dataDir := env("GRADELINE_DATA_DIR", "./data")
	cfg := local.Config{
		DataDir:       dataDir,
		HTTPAddr:      env("GRADELINE_HTTP_ADDR", ":8080"),
		AdminAddr:     env("GRADELINE_ADMIN_ADDR", "127.0.0.1:9090"),
		NATSURL:       os.Getenv("NATS_URL"),
		MongoURI:      os.Getenv("MONGO_URI"),
		ClickHouseDSN: os.Getenv("CLICKHOUSE_DSN"),
		JWTSecret:     []byte(os.Getenv("GRADELINE_JWT_SECRET")),
		SignupCode:    os.Getenv("GRADELINE_SIGNUP_CODE"),
		ORTLib:        os.Getenv("ONNXRUNTIME_LIB"),
		ChdbLauncher:  os.Getenv("GRADELINE_CHDB_LAUNCHER"),
		Logger:        log,
		OnReady: func(ep local.Endpoints) {
			fmt.Printf("\ngradeline is running (local mode). Ctrl-C stops it; data stays in %s.\n", dataDir)
			fmt.Printf("  API       %s\n  docs      %s\n  OpenAPI   %s/openapi.json\n", ep.HTTP, ep.Docs, ep.HTTP)
			if ep.Admin != "" {
				fmt.Printf("  metrics   %s/metrics   readiness %s/readyz\n", ep.Admin, ep.Admin)
			}
			fmt.Printf("  NATS      %s\n", ep.NATS)
			if ep.NATSAdminFile != "" {
				// The files hold the passwords; the banner names them only.
				fmt.Printf("            operator URL in %s, downstream subscriber URL in %s\n", ep.NATSAdminFile, ep.NATSSubscriberFile)
			}
			fmt.Printf("  MongoDB   %s\n  ClickHouse %s\n\n", ep.Mongo, ep.ClickHouse)
		},
	}
	if d := os.Getenv("GRADELINE_MODELS_DIR"); d != "" {
		for _, p := range filepath.SplitList(d) {
			if strings.TrimSpace(p) != "" {
				cfg.ModelsDirs = append(cfg.ModelsDirs, p)
			}
		}
	}
	if v := os.Getenv("GRADELINE_MAX_QUEUE_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fail(fmt.Errorf("GRADELINE_MAX_QUEUE_DELAY=%q: %w (use e.g. 2ms)", v, err))
		}
		cfg.MaxQueueDelay = d
	}
	if cfg.NATSSync, err = natsserver.SyncFromEnv(); err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := local.Run(ctx, cfg); err != nil {
		fail(err)
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gradeline-local:", err)
	os.Exit(1)
}
