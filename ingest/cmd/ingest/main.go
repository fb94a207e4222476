// Command ingest runs the gradeline HTTP edge in production mode: every
// dependency and secret comes from the environment and nothing insecure is
// defaulted. The local stack (deploy/local) runs ingest in-process instead.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/ingest"
)

func main() {
	log, err := admin.NewLogger(false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	cfg, problems := configFromEnv(os.Getenv)
	if len(problems) > 0 {
		fmt.Fprintln(os.Stderr, "ingest: refusing to start (production mode):")
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "  -", p)
		}
		os.Exit(2)
	}
	cfg.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Metrics are served on the admin address only (GRADELINE_ADMIN_ADDR),
	// never through the public edge; bus, Go runtime and process metrics
	// sit beside the edge's.
	err = admin.RunService(ctx, os.Getenv("GRADELINE_ADMIN_ADDR"), map[string]admin.Check{"nats": admin.NATSCheck(cfg.NATSURL)},
		func(ctx context.Context, reg prometheus.Registerer) error {
			cfg.Registerer = reg
			return ingest.Run(ctx, cfg)
		})
	if err != nil {
		log.Error("ingest stopped", "err", err)
		os.Exit(1)
	}
}

// configFromEnv reads the environment; it returns every problem at once.
func configFromEnv(getenv func(string) string) (ingest.Config, []string) {
	var problems []string
	cfg := ingest.Config{
		Addr:        getenv("GRADELINE_HTTP_ADDR"),
		NATSURL:     getenv("NATS_URL"),
		MongoURI:    getenv("MONGO_URI"),
		Database:    getenv("GRADELINE_MONGO_DB"),
		JWTSecret:   []byte(getenv("GRADELINE_JWT_SECRET")),
		JWTIssuer:   getenv("GRADELINE_JWT_ISSUER"),
		JWTAudience: getenv("GRADELINE_JWT_AUDIENCE"),
		SignupCode:  getenv("GRADELINE_SIGNUP_CODE"),
	}
	if cfg.Addr == "" {
		cfg.Addr = ingest.DefaultAddr
	}
	if cfg.NATSURL == "" {
		problems = append(problems, "NATS_URL is not set (e.g. nats://nats:4222)")
	}
	if cfg.MongoURI == "" {
		problems = append(problems, "MONGO_URI is not set (e.g. mongodb://mongo:27017/)")
	}
	switch n := len(cfg.JWTSecret); {
	case n == 0:
		problems = append(problems, fmt.Sprintf("GRADELINE_JWT_SECRET is not set (at least %d random bytes, e.g. `openssl rand -hex 32`)", ingest.MinSecretBytes))
	case n < ingest.MinSecretBytes:
		problems = append(problems, fmt.Sprintf("GRADELINE_JWT_SECRET is %d bytes; at least %d are required", n, ingest.MinSecretBytes))
	}
	if strings.TrimSpace(cfg.SignupCode) == "" {
		problems = append(problems, "GRADELINE_SIGNUP_CODE is not set (the code new users must present)")
	}
	if v := getenv("GRADELINE_MAX_BODY_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			problems = append(problems, "GRADELINE_MAX_BODY_BYTES must be a positive integer")
		}
		cfg.MaxBodyBytes = n
	}
	if v := getenv("GRADELINE_GRADE_WAIT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			problems = append(problems, "GRADELINE_GRADE_WAIT must be a positive duration such as 10s")
		}
		cfg.GradeWait = d
	}
	if v := getenv("GRADELINE_TRUSTED_PROXIES"); v != "" {
		p, err := ingest.ParseTrustedProxies(v)
		if err != nil {
			problems = append(problems, "GRADELINE_TRUSTED_PROXIES: "+err.Error())
		}
		cfg.TrustedProxies = p
	}
	if n, err := bus.ParseReplicas(getenv(bus.EnvReplicas)); err != nil {
		problems = append(problems, err.Error())
	} else {
		cfg.Replicas = n
	}
	return cfg, problems
}
