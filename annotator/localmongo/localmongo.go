// Package localmongo runs an embedded FerretDB that speaks the MongoDB wire
// protocol, for tests and the local stack where no mongod is available.
//
// FerretDB stores its documents in a PostgreSQL 15 server that this package
// starts as a child process (as user nobody when run as root). FerretDB's
// SQLite backend decodes every document of a collection for any filter
// other than _id, which jams past ~10^5 documents; on PostgreSQL, equality
// filters are pushed down and served by the GIN indexes this package keeps
// in step with the MongoDB indexes the application creates (indexes.go).
// A data directory of the earlier SQLite layout is copied over once at
// start (migrate.go).
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
	"strings"
	"sync"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Options configure Start.
type Options struct {
	// Dir holds the PostgreSQL data directory (Dir/postgres) and its log;
	// data survives a restart.
	Dir string
	// Addr is the TCP listen address; default 127.0.0.1:0 (a free port).
	// Restarting on the Addr of a closed Server gives clients the same URI.
	Addr string
	// Log receives FerretDB's warnings and errors and the progress of
	// start-up work; nil discards them.
	Log *slog.Logger
	// SharedBuffers is PostgreSQL's cache size (e.g. "256MB"); default an
	// eighth of the machine's memory, between 128 MB and 2 GB.
	SharedBuffers string
}

// Server is a running embedded FerretDB.
type Server struct {
	uri, addr string
	pg        *postgres
	pool      *pgxpool.Pool
	log       *slog.Logger
	cancel    context.CancelFunc
	done      chan struct{}
	mirror    chan struct{}
	closeOnce sync.Once
	// syncMu makes mirror runs one at a time: two would convert the same
	// index at once (see idleFerretIndexes).
	syncMu sync.Mutex
}

// Start runs PostgreSQL and FerretDB on Dir and returns once FerretDB
// answers a Mongo ping. ctx bounds only the start-up; the servers run
// until Close.
func Start(ctx context.Context, opt Options) (*Server, error) {
	if opt.Dir == "" {
		return nil, errors.New("localmongo: Options.Dir is required")
	}
	if opt.Addr == "" {
		opt.Addr = "127.0.0.1:0"
	}
	if opt.SharedBuffers == "" {
		opt.SharedBuffers = defaultSharedBuffers()
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
	info := opt.Log
	if info == nil {
		info = slog.New(slog.DiscardHandler)
	}
	pg, err := startPostgres(ctx, pgOptions{dir: filepath.Join(dir, "postgres"), sharedBuffers: opt.SharedBuffers, log: info})
	if err != nil {
		return nil, err
	}
	s := &Server{pg: pg, log: info, done: make(chan struct{})}
	if s.pool, err = mirrorPool(ctx, pg.url(pgDatabase)); err != nil {
		pg.stop()
		return nil, fmt.Errorf("localmongo: pool: %w", err)
	}
	log := quiet(opt.Log)
	fdb, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: opt.Addr},
		Logger:        log,
		Handler:       "postgresql",
		PostgreSQLURL: pg.url(pgDatabase),
	})
	if err != nil {
		s.pool.Close()
		pg.stop()
		return nil, fmt.Errorf("localmongo: start on %s: %w", opt.Addr, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
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
	if err := migrateSQLite(ctx, dir, s.uri, info); err != nil {
		_ = s.Close()
		return nil, err
	}
	// Indexes of a store that has data are built before anyone queries it;
	// one that cannot be built now (a lock held by a client's DDL, which
	// the mirror never waits long for) is built by the mirror's next tick.
	if err := s.SyncIndexes(ctx); err != nil {
		info.Warn("index mirror: retrying in the background", "err", err)
	}
	s.mirror = make(chan struct{})
	go s.mirrorIndexes(runCtx)
	return s, nil
}

// mirrorPool connects the index mirror. Its lock waits are short: the
// mirror builds indexes while FerretDB may be changing the same tables
// (creating a collection or an index), and a mirror that gives up and
// tries at the next tick can never be the side of a deadlock that makes
// an application's own createIndexes fail.
func mirrorPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["lock_timeout"] = "200ms"
	cfg.MaxConns = 2
	return pgxpool.NewWithConfig(ctx, cfg)
}

// mirrorInterval is how soon a MongoDB index an application creates gets
// its PostgreSQL twin; applications that need it at once call SyncIndexes.
const mirrorInterval = time.Second

func (s *Server) mirrorIndexes(ctx context.Context) {
	defer close(s.mirror)
	t := time.NewTicker(mirrorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.SyncIndexes(ctx); err != nil && ctx.Err() == nil {
				// A lock wait given up (55P03) is tried again at the next tick.
				lv := slog.LevelWarn
				if strings.Contains(err.Error(), "55P03") {
					lv = slog.LevelDebug
				}
				s.log.Log(ctx, lv, "index mirror", "err", err)
			}
		}
	}
}

// SyncIndexes gives every collection the PostgreSQL indexes that serve its
// MongoDB indexes now, instead of within a second.
func (s *Server) SyncIndexes(ctx context.Context) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	return syncIndexes(ctx, s.pool, func(m mirrorIndex) {
		s.log.Info("index ready", "database", m.Schema, "table", m.Table, "field", m.Field)
	}, func(schema, name string) {
		s.log.Info("FerretDB index idle (no query reads it)", "database", schema, "index", name)
	})
}

// URI is the connection string, mongodb://127.0.0.1:port/.
func (s *Server) URI() string { return s.uri }

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.addr }

// PostgresURL is the URL of the PostgreSQL database FerretDB writes to, for
// tests that check query plans.
func (s *Server) PostgresURL() string { return s.pg.url(pgDatabase) }

// PostgresPID is the process id of the PostgreSQL server, for tests that
// make the store stop answering.
func (s *Server) PostgresPID() int { return s.pg.cmd.Process.Pid }

// Close stops the listener, waits for every connection, then stops
// PostgreSQL, so a new Start on the same Dir and Addr works.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if s.cancel != nil {
			s.cancel()
			<-s.done
		}
		if s.mirror != nil {
			<-s.mirror
		}
		s.pool.Close()
		s.pg.stop()
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

// Handle drops FerretDB's log of a duplicate key refused by PostgreSQL
// (SQLSTATE 23505): the client gets it as the MongoDB duplicate key error
// it expects, and idempotent inserts make it routine.
func (f levelFilter) Handle(ctx context.Context, r slog.Record) error {
	// FerretDB dumps every error response it sends (e.g. the driver's
	// endSessions, which it does not implement) at warning level; the
	// client gets the error itself.
	if strings.HasPrefix(r.Message, "Response header:") || strings.HasPrefix(r.Message, "Response message:") {
		return nil
	}
	dup := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" && strings.Contains(a.Value.String(), "SQLSTATE 23505") {
			dup = true
			return false
		}
		return true
	})
	if dup {
		return nil
	}
	return f.Handler.Handle(ctx, r)
}

func (f levelFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFilter{f.Handler.WithAttrs(a), f.min}
}

func (f levelFilter) WithGroup(n string) slog.Handler {
	return levelFilter{f.Handler.WithGroup(n), f.min}
}
