// Package annotator persists annotations, the image catalogue and the grade
// history from JetStream into MongoDB, and answers read queries about them
// over NATS request-reply.
//
// Every write is keyed by an event id, so redelivered and replayed events
// never create a second document; while MongoDB is unreachable the
// consumers nak with backoff and catch up when it returns.
package annotator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/annotator/internal/store"
	"github.com/gradeline/gradeline/bus"
)

// Version is reported by the query service.
const Version = "1.0.0"

// DefaultDatabase is the MongoDB database used when Config.Database is empty.
const DefaultDatabase = "gradeline"

// Config holds resolved settings; cmd/annotator reads them from the
// environment.
type Config struct {
	// AdminAddr is where the binary serves /healthz, /readyz and /metrics
	// (none when empty); Run does not use it.
	AdminAddr string
	// NATSURL and MongoURI are required.
	NATSURL  string
	MongoURI string
	// Database defaults to DefaultDatabase.
	Database string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics (nil = prometheus.DefaultRegisterer).
	Registerer prometheus.Registerer
}

// writeTimeout bounds one batch's MongoDB writes, including server
// selection while MongoDB is down, so the batch is naked well before its
// ack deadline.
const writeTimeout = 10 * time.Second

// serverSelectionTimeout is how long an operation waits for a reachable
// MongoDB server.
const serverSelectionTimeout = 5 * time.Second

// queryTimeout bounds one query.
const queryTimeout = 10 * time.Second

// Run consumes events and serves queries until ctx is cancelled, then
// drains: the batches in hand are finished and acked before it returns.
func Run(ctx context.Context, cfg Config) error {
	if cfg.NATSURL == "" {
		return errors.New("annotator: NATS URL is required")
	}
	if cfg.MongoURI == "" {
		return errors.New("annotator: MongoDB URI is required")
	}
	if cfg.Database == "" {
		cfg.Database = DefaultDatabase
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("service", "annotator")
	metrics, err := store.NewMetrics(cfg.Registerer)
	if err != nil {
		return fmt.Errorf("annotator: metrics: %w", err)
	}

	nc, js, err := bus.Connect(ctx, cfg.NATSURL, "annotator", log)
	if err != nil {
		return fmt.Errorf("annotator: %w", err)
	}
	defer nc.Close()
	if err := bus.EnsureService(ctx, js, bus.UserAnnotator, bus.TopologyOptions{Logger: log}); err != nil {
		return fmt.Errorf("annotator: %w", err)
	}

	// Connect does not wait for the server: the service starts, and its
	// consumers retry, while MongoDB is still down. A short server
	// selection timeout (unless the URI sets one) answers queries with 503
	// quickly during an outage.
	// Timeout makes the driver send every operation's remaining time as
	// maxTimeMS, so a query whose caller gave up is stopped in the store too.
	mc, err := mongo.Connect(options.Client().
		SetServerSelectionTimeout(serverSelectionTimeout).
		SetTimeout(writeTimeout).
		ApplyURI(cfg.MongoURI).
		SetAppName("gradeline-annotator"))
	if err != nil {
		return fmt.Errorf("annotator: mongo: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = mc.Disconnect(dctx)
	}()
	a := &app{store: store.New(mc.Database(cfg.Database), metrics), log: log, applied: newApplied(js)}
	ictx, icancel := context.WithTimeout(ctx, serverSelectionTimeout)
	err = a.store.EnsureIndexes(ictx)
	icancel()
	if err != nil {
		log.Warn("mongo indexes not created yet; retrying on first write", "err", err)
	}

	svc, err := bus.AddService(nc, "annotator", Version, "annotations, image catalogue and grade history", a.endpoints()...)
	if err != nil {
		return fmt.Errorf("annotator: %w", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for _, c := range []struct {
		spec bus.ConsumerSpec
		h    bus.Handler
	}{
		{bus.ConsumerAnnotator, a.handleAnnotations},
		{bus.ConsumerAnnotatorCatalog, a.handleCatalog},
		{bus.ConsumerAnnotatorGrades, a.handleGrades},
		{bus.ConsumerAnnotatorCallbacks, a.handleCallbacks},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := bus.Consume(cctx, js, c.spec, bus.ConsumeOptions{Logger: log}, c.h)
			if err != nil && cctx.Err() == nil {
				errOnce.Do(func() { firstErr = fmt.Errorf("annotator: consumer %s: %w", c.spec.Durable, err) })
				cancel()
			}
		}()
	}
	log.Info("annotator running", "database", cfg.Database)
	<-cctx.Done()
	if err := svc.Stop(); err != nil {
		log.Warn("query service stop", "err", err)
	}
	wg.Wait()
	// Drain flushes the last acks; wait for it so none is lost on exit
	// (a lost ack would only cause a harmless redelivery).
	if err := nc.Drain(); err != nil {
		log.Warn("nats drain", "err", err)
	}
	for deadline := time.Now().Add(5 * time.Second); !nc.IsClosed() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	log.Info("annotator stopped")
	return firstErr
}

type app struct {
	store   *store.Store
	log     *slog.Logger
	applied *applied
}
