// Package natsserver runs the NATS server with JetStream in-process for the
// local stack (deploy/local) and for tests: Start, the users and
// permissions of the contract's access table (Users), the durability of
// its file storage (Sync), and a guard of the disk it writes to
// (StorageGuard). Production connects to a real NATS cluster instead, so
// no service binary imports this package: the nats-server module stays out
// of them, and out of any downstream program that imports bus.
package natsserver

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/nats-io/nats-server/v2/server"
)

// Config configures an in-process NATS server with JetStream.
type Config struct {
	// Dir holds JetStream's file storage; data survives a restart.
	Dir string
	// Host defaults to 127.0.0.1: the embedded server is for one machine.
	Host string
	// Port 0 picks a free port; -1 (server.RANDOM_PORT) likewise.
	Port int
	// Name of the server; required and unique in a cluster.
	Name string
	// Cluster, when ClusterName is set, joins a route cluster: ClusterPort
	// listens for routes and Routes lists every peer's route URL.
	ClusterName string
	ClusterPort int
	Routes      []string
	// MaxMemory and MaxStore bound JetStream (0 = server defaults).
	MaxMemory, MaxStore int64
	// Users, when set, are the only clients admitted, each held to the
	// permissions of its role (bus.PermissionsOf); anonymous connections are
	// refused. Empty: no authentication (tests of a single service).
	Users []bus.Credential
	// Logger receives the server's own log (notices at info, warnings,
	// errors; debug when the logger enables it). Nil: the server logs
	// nothing, as before; a recovery that cut a stream would then go unseen.
	Logger *slog.Logger
	// Sync is JetStream's sync_interval: how often file storage is
	// fsynced. Zero keeps the server default (2 minutes); see ParseSync
	// and GRADELINE_NATS_SYNC.
	Sync Sync
	// OnOutOfSpace is called when the server reports a write that failed
	// for want of disk space (see StorageGuard.WriteFailed).
	OnOutOfSpace func()
	// Setup, when set, makes Start create the streams and the image bucket
	// with these options (bus.EnsureStreams, what `gradeline setup` does,
	// as the admin user when Users is set) before it returns: services
	// started against the server find their streams, as after the deploy step.
	Setup *bus.TopologyOptions
}

// EnvNATSSync sets the durability of the embedded server's file storage:
// "always" (fsync every write) or a duration such as "1s".
const EnvNATSSync = "GRADELINE_NATS_SYNC"

// Sync is a JetStream sync_interval setting.
type Sync struct {
	// Interval between fsyncs of the stream files (0 = server default, 2m).
	Interval time.Duration
	// Always fsyncs every write before the PubAck: nothing acknowledged
	// is lost to a power cut on a single node, at a cost measured in the README.
	Always bool
}

// String renders the setting as GRADELINE_NATS_SYNC takes it.
func (s Sync) String() string {
	switch {
	case s.Always:
		return "always"
	case s.Interval > 0:
		return s.Interval.String()
	}
	return "default (2m)"
}

// SyncFromEnv reads GRADELINE_NATS_SYNC; see ParseSync.
func SyncFromEnv() (Sync, error) { return ParseSync(os.Getenv(EnvNATSSync)) }

// ParseSync parses a GRADELINE_NATS_SYNC value: "" (server default),
// "always", or a positive Go duration ("500ms", "1s", "2m").
func ParseSync(v string) (Sync, error) {
	v = strings.TrimSpace(v)
	switch {
	case v == "":
		return Sync{}, nil
	case strings.EqualFold(v, "always"):
		return Sync{Always: true}, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return Sync{}, fmt.Errorf("%s=%q: want \"always\" or a positive duration such as 1s", EnvNATSSync, v)
	}
	return Sync{Interval: d}, nil
}

// natsLogger hands the server's log lines to slog.
type natsLogger struct {
	log        *slog.Logger
	outOfSpace func()
}

func (l natsLogger) emit(level slog.Level, format string, v []any) {
	ctx := context.Background()
	if level >= slog.LevelWarn && l.outOfSpace != nil {
		// A stream whose write failed for want of space keeps failing:
		// whoever guards the disk must know, not only the log.
		if msg := fmt.Sprintf(format, v...); strings.Contains(msg, "no space left on device") {
			l.outOfSpace()
		}
	}
	if !l.log.Enabled(ctx, level) {
		return
	}
	// The start banner pads with blank lines and indents; keep the text.
	if msg := strings.TrimSpace(fmt.Sprintf(format, v...)); msg != "" {
		l.log.Log(ctx, level, msg)
	}
}

func (l natsLogger) Noticef(format string, v ...any) { l.emit(slog.LevelInfo, format, v) }
func (l natsLogger) Warnf(format string, v ...any)   { l.emit(slog.LevelWarn, format, v) }
func (l natsLogger) Errorf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l natsLogger) Fatalf(format string, v ...any)  { l.emit(slog.LevelError, "fatal: "+format, v) }
func (l natsLogger) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }
func (l natsLogger) Tracef(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }

// Start starts a NATS server with JetStream on file storage and waits
// until it accepts connections. The caller shuts it down (Shutdown).
func Start(cfg Config) (*server.Server, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName:         cfg.Name,
		Host:               cfg.Host,
		Port:               cfg.Port,
		JetStream:          true,
		StoreDir:           cfg.Dir,
		JetStreamMaxMemory: cfg.MaxMemory,
		JetStreamMaxStore:  cfg.MaxStore,
		NoSigs:             true,
		MaxPayload:         8 << 20,
	}
	if cfg.Sync.Always {
		// The server's own parser sets both for "sync: always".
		opts.SyncAlways, opts.SyncInterval = true, 2*time.Minute
	} else if cfg.Sync.Interval > 0 {
		opts.SyncInterval = cfg.Sync.Interval
	}
	if len(cfg.Users) > 0 {
		users, err := Users(cfg.Users)
		if err != nil {
			return nil, err
		}
		opts.Users = users
	}
	if cfg.ClusterName != "" {
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: cfg.Host, Port: cfg.ClusterPort}
		for _, r := range cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("natsserver: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsserver: embedded nats: %w", err)
	}
	if cfg.Logger != nil || cfg.OnOutOfSpace != nil {
		// Set before Start, so stream recovery at start (where a damaged
		// block file shows) is logged too.
		log := cfg.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		l := natsLogger{log: log.With("component", "nats-server"), outOfSpace: cfg.OnOutOfSpace}
		ns.SetLoggerV2(l, log.Enabled(context.Background(), slog.LevelDebug), false, false)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("natsserver: embedded nats did not become ready within 30s")
	}
	if cfg.Setup != nil {
		if err := setup(ns, cfg); err != nil {
			ns.Shutdown()
			return nil, err
		}
	}
	return ns, nil
}

// setup runs bus.EnsureStreams against ns as the operator.
func setup(ns *server.Server, cfg Config) error {
	natsURL := ns.ClientURL()
	for _, c := range cfg.Users {
		if c.User == bus.UserAdmin {
			u, err := bus.URLWithUser(natsURL, c)
			if err != nil {
				return fmt.Errorf("natsserver: setup: %w", err)
			}
			natsURL = u
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, js, err := bus.Connect(ctx, natsURL, "natsserver-setup", cfg.Logger)
	if err != nil {
		return fmt.Errorf("natsserver: setup: %w", err)
	}
	defer nc.Close()
	if err := bus.EnsureStreams(ctx, js, *cfg.Setup); err != nil {
		return fmt.Errorf("natsserver: setup: %w", err)
	}
	return nil
}
