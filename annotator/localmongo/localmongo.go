// Package localmongo runs an embedded FerretDB (SQLite backend) that speaks
// the MongoDB wire protocol, for tests and the local stack where no mongod
// is available. Build with the tag ferretdb_no_postgresql to leave out the
// PostgreSQL backend.
package localmongo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Options configure Start.
type Options struct {
	// Dir holds the SQLite files (one per database); data survives a restart.
	Dir string
	// Addr is the TCP listen address; default 127.0.0.1:0 (a free port).
	// Restarting on the Addr of a closed Server gives clients the same URI.
	Addr string
	// Log receives FerretDB's warnings and errors; nil discards them.
	Log *slog.Logger
}

// Server is a running embedded FerretDB.
type Server struct {
	uri, addr string
	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// Start runs FerretDB on Dir and returns once it answers a Mongo ping. ctx
// bounds only the start-up; the server runs until Close.
func Start(ctx context.Context, opt Options) (*Server, error) {
	if opt.Dir == "" {
		return nil, errors.New("localmongo: Options.Dir is required")
	}
	if opt.Addr == "" {
		opt.Addr = "127.0.0.1:0"
	}
	dir, err := filepath.Abs(opt.Dir)
	if err != nil {
		return nil, fmt.Errorf("localmongo: dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("localmongo: dir: %w", err)
	}
	// Probe a fixed address first: ferretdb.New leaks its open backend when
	// the listener cannot be created.
	if _, port, err := net.SplitHostPort(opt.Addr); err == nil && port != "0" {
		l, err := net.Listen("tcp", opt.Addr)
		if err != nil {
			return nil, fmt.Errorf("localmongo: listen %s: %w", opt.Addr, err)
		}
		_ = l.Close()
	}
	log := quiet(opt.Log)
	fdb, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: opt.Addr},
		Logger:    log,
		Handler:   "sqlite",
		SQLiteURL: (&url.URL{Scheme: "file", Path: dir + "/"}).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("localmongo: start on %s: %w", opt.Addr, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s := &Server{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := fdb.Run(runCtx); err != nil {
			log.Error("ferretdb stopped", "err", err)
		}
	}()
	// MongoDBURI waits for the listener, which New already opened.
	s.uri = fdb.MongoDBURI()
	u, err := url.Parse(s.uri)
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("localmongo: uri %q: %w", s.uri, err)
	}
	s.addr = u.Host
	if err := waitPing(ctx, s.uri); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("localmongo: not ready: %w", err)
	}
	return s, nil
}

// URI is the connection string, mongodb://127.0.0.1:port/.
func (s *Server) URI() string { return s.uri }

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.addr }

// Close stops the listener, waits for every connection and the SQLite
// backend to close, so a new Start on the same Dir and Addr works.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
	})
	return nil
}

func waitPing(ctx context.Context, uri string) error {
	// Direct connection, short timeouts: this only probes readiness.
	cl, err := mongo.Connect(options.Client().ApplyURI(uri).
		SetDirect(true).
		SetServerSelectionTimeout(2 * time.Second).
		SetConnectTimeout(2 * time.Second))
	if err != nil {
		return err
	}
	defer func() { _ = cl.Disconnect(context.Background()) }()
	var last error
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = cl.Database("admin").RunCommand(pctx, bson.D{{Key: "ping", Value: 1}}).Err()
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last ping: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// quiet keeps FerretDB's per-connection info logs out: only warnings and
// errors reach the caller's logger.
func quiet(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(levelFilter{l.Handler(), slog.LevelWarn})
}

type levelFilter struct {
	slog.Handler
	min slog.Level
}

func (f levelFilter) Enabled(ctx context.Context, lv slog.Level) bool {
	return lv >= f.min && f.Handler.Enabled(ctx, lv)
}

func (f levelFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFilter{f.Handler.WithAttrs(a), f.min}
}

func (f levelFilter) WithGroup(n string) slog.Handler {
	return levelFilter{f.Handler.WithGroup(n), f.min}
}
