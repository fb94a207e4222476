// Package local runs the whole gradeline pipeline in one process: embedded
// NATS JetStream, embedded FerretDB and the ClickHouse engine (each only
// where no URL of a real server is given), and the four services. It is
// what `make run` starts, and what the end-to-end tests and benchmarks use.
package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/analytics"
	"github.com/gradeline/gradeline/analytics/localch"
	"github.com/gradeline/gradeline/annotator"
	"github.com/gradeline/gradeline/annotator/localmongo"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/deploy/internal/mongouri"
	"github.com/gradeline/gradeline/deploy/internal/natscreds"
	"github.com/gradeline/gradeline/inference"
	"github.com/gradeline/gradeline/ingest"
)

// DefaultSignupCode is the signup code of local mode (the seed's).
const DefaultSignupCode = ingest.LocalSignupCode

// Config of the local stack. Empty URLs mean "start the embedded server".
type Config struct {
	DataDir  string // default ./data
	HTTPAddr string // default :8080
	// AdminAddr serves /healthz, /readyz and /metrics of the whole stack
	// (default 127.0.0.1:9090; "-" for none).
	AdminAddr string

	NATSURL, MongoURI, ClickHouseDSN string
	// NATSAddr is where the embedded NATS listens (default 127.0.0.1:4222,
	// or a free port when that one is taken), so other programs on this
	// machine can subscribe to the streams.
	NATSAddr string
	// NATSSync is the embedded NATS's JetStream sync_interval
	// (GRADELINE_NATS_SYNC; zero keeps the server default).
	NATSSync natsserver.Sync
	// NATSMaxStore overrides how much file storage the embedded JetStream
	// may use (default 75% of the space free in its directory).
	NATSMaxStore int64

	JWTSecret  []byte // default: generated once and kept in DataDir
	SignupCode string // default DefaultSignupCode
	ModelsDirs []string
	ORTLib     string // default $ONNXRUNTIME_LIB
	// ChdbLauncher is the ClickHouse engine launcher (default $GRADELINE_CHDB_LAUNCHER).
	ChdbLauncher string
	// GradeWait and MaxQueueDelay pass through to ingest and inference.
	GradeWait     time.Duration
	MaxQueueDelay time.Duration
	// CallbackAllow: non-public addresses grade callbacks may reach
	// (GRADELINE_CALLBACK_ALLOW), e.g. a receiver on this machine.
	CallbackAllow []netip.Prefix

	Logger *slog.Logger
	// Registry receives every metric (default a new registry).
	Registry *prometheus.Registry
	// OnReady is called once every service is up, with the stack's URLs.
	OnReady func(Endpoints)
}

// Endpoints are the URLs of a running stack.
type Endpoints struct {
	// NATS is the server's address without credentials (for display).
	HTTP, Docs, Admin, NATS, Mongo, ClickHouse string
	// NATSAdmin is the operator's URL with its credentials (the gradeline
	// CLI, replays, benchmarks, tests); with an embedded server it is also
	// in the file NATSAdminFile, and the subscriber's URL in NATSSubscriberFile.
	NATSAdmin, NATSAdminFile, NATSSubscriberFile string
}

// natsURLs are the URLs each part of the stack connects with: every service
// as its own user on the embedded server, or all with the given URL.
type natsURLs struct {
	ingest, inference, annotator, analytics, admin string
}

// Run starts the stack and serves until ctx is cancelled; then the services
// stop first (finishing the batches in hand) and the servers after them.
func Run(ctx context.Context, cfg Config) error {
	// Last of all, the buffered log lines (the edge's access log) go out.
	defer admin.FlushLogs()
	if cfg.DataDir == "" {
		cfg.DataDir = "data"
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = ":8080"
	}
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = "127.0.0.1:9090"
	}
	if cfg.SignupCode == "" {
		cfg.SignupCode = DefaultSignupCode
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		// The registry of a service binary: runtime, process and bus metrics.
		cfg.Registry = admin.NewRegistry()
	} else if err := admin.RegisterBus(cfg.Registry); err != nil {
		return err
	}
	log := cfg.Logger
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("local: data dir: %w", err)
	}
	if len(cfg.JWTSecret) == 0 {
		if cfg.JWTSecret, err = ingest.LoadOrCreateSecret(dir); err != nil {
			return err
		}
	}

	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()

	// Servers, embedded only where no URL was given.
	urls := natsURLs{cfg.NATSURL, cfg.NATSURL, cfg.NATSURL, cfg.NATSURL, cfg.NATSURL}
	var natsFiles [2]string
	var storage *natsserver.StorageGuard
	if cfg.NATSURL == "" {
		host, port, err := natsAddr(cfg.NATSAddr)
		if err != nil {
			return err
		}
		log.Info("starting embedded NATS JetStream", "dir", filepath.Join(dir, "nats"), "sync", cfg.NATSSync.String())
		// The server's own log goes to the stack's log, so a recovery that
		// damaged a stream is visible where everything else is.
		// Every service, the operator and downstream subscribers have their
		// own user; the passwords are generated once and kept in the data dir.
		natsDir := natscreds.Dir(dir)
		creds, err := natscreds.LoadOrCreate(natsDir)
		if err != nil {
			return err
		}
		// A disk that fills later stops JetStream's streams; the guard names
		// the directory in the edge's 503s and restarts them once space returns.
		storage = natsserver.NewStorageGuard(log, 0)
		ns, err := natsserver.Start(natsserver.Config{Dir: natsDir, Host: host, Port: port, Name: "gradeline-local",
			Logger: log, Sync: cfg.NATSSync, Users: natscreds.List(creds), MaxStore: cfg.NATSMaxStore,
			OnOutOfSpace: storage.WriteFailed})
		if err != nil {
			return err
		}
		closers = append(closers, func() { ns.Shutdown(); ns.WaitForShutdown() })
		// Too little space is said at start, naming the directory and what
		// the streams reserve, not as a bare error of the first service.
		if err := natsserver.CheckStoreReservation(ns, bus.TopologyOptions{}); err != nil {
			return fmt.Errorf("local: %w", err)
		}
		storage.Start(ctx, ns)
		cfg.NATSURL = ns.ClientURL()
		if err := natscreds.WriteURLs(natsDir, cfg.NATSURL, creds); err != nil {
			return err
		}
		natsFiles = [2]string{filepath.Join(natsDir, natscreds.AdminURLFile), filepath.Join(natsDir, natscreds.SubscriberFile)}
		for _, u := range []struct {
			user string
			url  *string
		}{{bus.UserIngest, &urls.ingest}, {bus.UserInference, &urls.inference}, {bus.UserAnnotator, &urls.annotator},
			{bus.UserAnalytics, &urls.analytics}, {bus.UserAdmin, &urls.admin}} {
			if *u.url, err = bus.URLWithUser(cfg.NATSURL, creds[u.user]); err != nil {
				return err
			}
		}
	}
	// The stack is the operator: it creates the streams and the image
	// bucket (what `gradeline setup` does for a real deployment) before any
	// service starts; each service then finds them and ensures only the
	// durable consumers it owns.
	if err := setupStreams(ctx, urls.admin, log); err != nil {
		return err
	}
	if cfg.MongoURI == "" {
		log.Info("starting embedded FerretDB (MongoDB wire protocol)", "dir", filepath.Join(dir, "mongo"))
		ms, err := localmongo.Start(ctx, localmongo.Options{Dir: filepath.Join(dir, "mongo"), Addr: "127.0.0.1:0", Log: log})
		if err != nil {
			return err
		}
		closers = append(closers, func() { _ = ms.Close() })
		cfg.MongoURI = ms.URI()
		// For `gradeline admin grant|revoke`, as nats/admin.url is for the bus.
		if err := mongouri.Write(dir, cfg.MongoURI); err != nil {
			return err
		}
	}
	if cfg.ClickHouseDSN == "" {
		log.Info("starting the ClickHouse engine", "dir", filepath.Join(dir, "clickhouse"))
		ch, err := localch.Start(ctx, localch.Options{Dir: filepath.Join(dir, "clickhouse"), Launcher: cfg.ChdbLauncher, Log: log})
		if err != nil {
			return err
		}
		closers = append(closers, func() { _ = ch.Close() })
		cfg.ClickHouseDSN = ch.DSN()
	}

	// The edge is built first so its address is known before anything is printed.
	edge, err := ingest.New(ctx, ingest.Config{
		Addr: cfg.HTTPAddr, NATSURL: urls.ingest, MongoURI: cfg.MongoURI,
		JWTSecret: cfg.JWTSecret, SignupCode: cfg.SignupCode, GradeWait: cfg.GradeWait,
		Logger: log, Registerer: cfg.Registry, Local: true, CallbackAllow: cfg.CallbackAllow,
	})
	if err == nil && storage != nil {
		edge.SetStorageProblem(storage.Problem)
	}
	if err != nil {
		return err
	}
	defer edge.Close()
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("local: listen %s: %w (set GRADELINE_HTTP_ADDR to another address)", cfg.HTTPAddr, err)
	}

	svcCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServices()
	var wg sync.WaitGroup
	errc := make(chan error, 6)
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(svcCtx); err != nil && svcCtx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	inferenceReady := make(chan struct{})
	run("annotator", func(ctx context.Context) error {
		return annotator.Run(ctx, annotator.Config{NATSURL: urls.annotator, MongoURI: cfg.MongoURI,
			Logger: log, Registerer: cfg.Registry})
	})
	run("inference", func(ctx context.Context) error {
		return inference.Run(ctx, inference.Config{NATSURL: urls.inference, ModelsDirs: cfg.ModelsDirs, ORTLib: cfg.ORTLib,
			MaxQueueDelay: cfg.MaxQueueDelay, Logger: log, Registerer: cfg.Registry,
			OnReady: func() { close(inferenceReady) }})
	})
	run("analytics", func(ctx context.Context) error {
		return analytics.Run(ctx, analytics.Config{NATSURL: urls.analytics, ClickHouseDSN: cfg.ClickHouseDSN,
			Logger: log, Registerer: cfg.Registry})
	})
	run("ingest", func(context.Context) error { return edge.Serve(ln) })

	ep := Endpoints{
		HTTP:       "http://" + displayAddr(ln.Addr()),
		NATS:       cfg.NATSURL,
		Mongo:      cfg.MongoURI,
		ClickHouse: cfg.ClickHouseDSN,
		NATSAdmin:  urls.admin,
		// Named, not printed: the files hold the passwords.
		NATSAdminFile: natsFiles[0], NATSSubscriberFile: natsFiles[1],
	}
	ep.Docs = ep.HTTP + "/docs"
	if cfg.AdminAddr != "-" {
		aln, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			log.Warn("admin endpoints disabled", "addr", cfg.AdminAddr, "err", err)
		} else {
			ep.Admin = "http://" + aln.Addr().String()
			h := admin.Handler(cfg.Registry, readiness(svcCtx, cfg, urls.admin))
			run("admin", func(ctx context.Context) error { return admin.Serve(ctx, aln, h) })
		}
	}

	// Ready once the services answer on the bus.
	select {
	case <-inferenceReady:
	case err := <-errc:
		// The edge serves until it is shut down: without this the stack
		// waited for it forever instead of reporting the failed service.
		_ = edge.Shutdown(ingest.ShutdownTimeout)
		stopServices()
		wg.Wait()
		return err
	case <-ctx.Done():
	}
	if err := waitServices(ctx, urls.admin); err != nil && ctx.Err() == nil {
		log.Warn("services not answering yet", "err", err)
	}
	if ctx.Err() == nil {
		log.Info("gradeline is up", "web", ep.HTTP+"/", "http", ep.HTTP, "docs", ep.Docs, "admin", ep.Admin, "nats", ep.NATS,
			"nats_admin_url_file", ep.NATSAdminFile, "nats_subscriber_url_file", ep.NATSSubscriberFile, "mongo", ep.Mongo, "clickhouse", ep.ClickHouse, "data", dir)
		if cfg.OnReady != nil {
			cfg.OnReady(ep)
		}
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		log.Error("service failed; stopping the stack", "err", runErr)
	}
	log.Info("shutting down")
	// The edge finishes the requests in flight first; the services then
	// drain their consumers, so what the edge accepted last is handled.
	if err := edge.Shutdown(ingest.ShutdownTimeout); err != nil {
		log.Warn("ingest shutdown", "err", err)
	}
	stopServices()
	wg.Wait()
	return runErr
}

// setupStreams creates or updates the streams and the image bucket of the
// bus table as the operator (natsURL carries the admin user), as
// `gradeline setup` does.
func setupStreams(ctx context.Context, natsURL string, log *slog.Logger) error {
	nc, js, err := bus.Connect(ctx, natsURL, "gradeline-local-setup", log)
	if err != nil {
		return fmt.Errorf("local: setup: %w", err)
	}
	defer nc.Close()
	if err := bus.EnsureStreams(ctx, js, bus.TopologyOptions{Logger: log}); err != nil {
		return fmt.Errorf("local: setup: %w", err)
	}
	return nil
}

// natsAddr resolves the embedded NATS listen address: the well-known port
// when it is free, else any free port.
func natsAddr(addr string) (string, int, error) {
	if addr == "" {
		addr = "127.0.0.1:4222"
		if ln, err := net.Listen("tcp", addr); err != nil {
			addr = "127.0.0.1:0"
		} else {
			_ = ln.Close()
		}
	}
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("local: NATS address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("local: NATS address %q: %w", addr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

func displayAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if ok && tcp.IP.IsUnspecified() {
		return net.JoinHostPort("localhost", strconv.Itoa(tcp.Port))
	}
	return a.String()
}

// readiness checks the three servers the stack depends on, with clients
// kept until ctx ends.
func readiness(ctx context.Context, cfg Config, natsURL string) map[string]admin.Check {
	return map[string]admin.Check{
		"nats":       admin.NATSCheck(natsURL),
		"mongo":      annotator.MongoCheck(ctx, cfg.MongoURI, annotator.DefaultDatabase),
		"clickhouse": analytics.ClickHouseCheck(cfg.ClickHouseDSN),
	}
}

// waitServices waits until annotator and analytics answer a query, so the
// stack is usable when "up" is printed.
func waitServices(ctx context.Context, natsURL string) error {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	deadline := time.Now().Add(2 * time.Minute)
	// Each probe is a bounded query: an annotation that cannot exist is
	// looked up by _id (an index search, answered 404), never a listing
	// that could scan a large store.
	for _, subject := range []string{bus.SvcAnnotationsGet, bus.SvcModelsList, bus.SvcIrisStats} {
		for {
			var req any = struct{}{}
			switch subject {
			case bus.SvcAnnotationsGet:
				req = bus.AnnotationGetQuery{ID: "readiness-probe"}
			case bus.SvcIrisStats:
				req = bus.IrisStatsQuery{Func: "count"}
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := bus.Request[any](rctx, nc, subject, req)
			cancel()
			if err == nil || !errors.Is(err, bus.ErrUnavailable) {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}
