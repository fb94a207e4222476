// Command gradeline-local runs the whole gradeline pipeline in one process
// with embedded servers: what `make run` starts. Its environment is
// local.EnvVars (the README's configuration table); unset server URLs mean
// "embedded".
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/deploy/local"
)

func main() {
	cfg, err := local.ConfigFromEnv(os.Getenv)
	admin.Refuse("gradeline-local", err)
	slog.SetDefault(cfg.Logger)
	local.SetGC(os.Getenv)
	cfg.OnReady = func(ep local.Endpoints) { banner(cfg.DataDir, ep) }
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = local.Run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gradeline-local:", err)
		os.Exit(1)
	}
}

// banner tells the person who ran `make run` where everything is.
func banner(dataDir string, ep local.Endpoints) {
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
}
