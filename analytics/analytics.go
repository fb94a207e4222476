// Package analytics loads events into ClickHouse and answers analytics
// queries over NATS.
//
// Run applies the schema migrations, provisions the canonical iris
// dataset, and then runs three durable consumers (iris measurements,
// grades, annotations) that insert in batches, idempotently: the event id
// is the row identity and the insert's deduplication key, so a redelivered
// event adds no rows. While ClickHouse is down the handlers fail, the bus
// naks with backoff, and the backlog is inserted once it returns. The query
// service "analytics" answers iris range and stats, grade statistics and
// annotation statistics (see package iris for the iris semantics).
package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
	"github.com/prometheus/client_golang/prometheus"
)

// Version of the query service.
const Version = "1.0.0"

// Config holds resolved settings for Run.
type Config struct {
	// AdminAddr is where the binary serves /healthz, /readyz and /metrics
	// (none when empty); Run does not use it.
	AdminAddr string
	// NATSURL and ClickHouseDSN are required.
	NATSURL       string
	ClickHouseDSN string
	Logger        *slog.Logger
	// Registerer receives the metrics (nil = prometheus.DefaultRegisterer).
	Registerer prometheus.Registerer
	// QueryTimeout bounds one query (default 30s).
	QueryTimeout time.Duration
	// StartTimeout bounds the wait for ClickHouse at start (default 2m):
	// migrations are retried until it answers.
	StartTimeout time.Duration
	// IrisInsertConcurrency is how many iris events are inserted at once
	// (default 4).
	IrisInsertConcurrency int

	// afterInsert, when set (tests only), runs after every successful
	// insert; an error makes the handler fail as if the ack was lost.
	afterInsert func(table string) error
}

// Run serves until ctx is cancelled, then drains: the batches in hand are
// finished and the query service leaves its queue group.
func Run(ctx context.Context, cfg Config) error {
	if cfg.NATSURL == "" || cfg.ClickHouseDSN == "" {
		return errors.New("analytics: NATSURL and ClickHouseDSN are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = 30 * time.Second
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	if cfg.IrisInsertConcurrency <= 0 {
		cfg.IrisInsertConcurrency = 4
	}
	log := cfg.Logger.With("service", "analytics")
	opts, err := clickhouse.ParseDSN(cfg.ClickHouseDSN)
	if err != nil {
		return fmt.Errorf("analytics: CLICKHOUSE_DSN: %w", err)
	}
	// Queries (each range runs two), concurrent iris inserts and the other
	// consumers share the pool: more than the driver's default 10, unless
	// the DSN says otherwise.
	if opts.MaxOpenConns == 0 {
		opts.MaxOpenConns = 32
	}
	if opts.MaxIdleConns == 0 {
		opts.MaxIdleConns = 16
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return fmt.Errorf("analytics: clickhouse: %w", err)
	}
	defer conn.Close()
	if err := prepare(ctx, conn, cfg.StartTimeout, log); err != nil {
		return err
	}

	nc, js, err := bus.Connect(ctx, cfg.NATSURL, "analytics", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := bus.EnsureService(ctx, js, bus.UserAnalytics, bus.TopologyOptions{Logger: log}); err != nil {
		return err
	}
	s := &service{conn: conn, log: log, metrics: newMetrics(cfg.Registerer), afterInsert: cfg.afterInsert,
		irisConcurrency: cfg.IrisInsertConcurrency}
	svc, err := s.addService(nc, cfg.QueryTimeout)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const eventBatch, eventBatchDelay = 4096, time.Second // within the consumers' MaxAckPending (8192)
	consumers := []struct {
		spec bus.ConsumerSpec
		opt  bus.ConsumeOptions
		h    bus.Handler
	}{
		// An iris event holds up to bus.MaxIrisRows rows: small batches of events.
		{bus.ConsumerAnalyticsIris, bus.ConsumeOptions{MaxBatch: 32}, s.handleIris},
		// Few large inserts: each makes a part the engine merges later. Under
		// make profile's grade load, up to 4,096 rows a second instead of
		// 1,024 per 200 ms took the engine's and PostgreSQL's CPU per grade
		// from 112–123 to 84–91 µs; statistics lag by up to a second.
		{bus.ConsumerAnalyticsGrades, bus.ConsumeOptions{MaxBatch: eventBatch, MaxQueueDelay: eventBatchDelay}, s.handleGrades},
		{bus.ConsumerAnalyticsAnnotations, bus.ConsumeOptions{MaxBatch: eventBatch, MaxQueueDelay: eventBatchDelay}, s.handleAnnotations},
		{bus.ConsumerAnalyticsRegrades, bus.ConsumeOptions{MaxBatch: eventBatch, MaxQueueDelay: eventBatchDelay}, s.handleShadows},
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(consumers))
	for _, c := range consumers {
		c.opt.Logger = log
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := bus.Consume(ctx, js, c.spec, c.opt, c.h); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	log.Info("analytics running", "consumers", len(consumers))
	<-ctx.Done()
	wg.Wait()
	_ = svc.Stop()
	if err := nc.Drain(); err != nil {
		log.Warn("nats drain", "err", err)
	}
	close(errs)
	if err := <-errs; err != nil {
		return fmt.Errorf("analytics: %w", err)
	}
	return nil
}

// prepare migrates the schema and provisions the canonical dataset,
// retrying while ClickHouse is not reachable yet.
func prepare(ctx context.Context, conn driver.Conn, timeout time.Duration, log *slog.Logger) error {
	deadline := time.Now().Add(timeout)
	for attempt := uint64(1); ; attempt++ {
		err := func() error {
			if _, err := schema.Migrate(ctx, conn, log); err != nil {
				return err
			}
			inserted, err := iris.Provision(ctx, conn)
			if err == nil && inserted {
				log.Info("canonical iris dataset provisioned", "rows", 150)
			}
			return err
		}()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("analytics: prepare clickhouse: %w", err)
		}
		log.Warn("clickhouse not ready; retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(bus.Backoff(attempt)):
		}
	}
}

// service holds what the handlers share.
type service struct {
	conn        driver.Conn
	log         *slog.Logger
	metrics     *metrics
	afterInsert func(table string) error
	// irisConcurrency bounds the concurrent iris inserts of one batch.
	irisConcurrency int
}

// insert runs one insert with metrics and the test hook.
func (s *service) insert(table string, rows int, f func() error) error {
	start := time.Now()
	if err := f(); err != nil {
		s.metrics.insertErrors.WithLabelValues(table).Inc()
		return err
	}
	s.metrics.insertSeconds.WithLabelValues(table).Observe(time.Since(start).Seconds())
	s.metrics.rowsInserted.WithLabelValues(table).Add(float64(rows))
	if s.afterInsert != nil {
		return s.afterInsert(table)
	}
	return nil
}

// handleIris inserts every event of the batch as its own INSERT, whose
// deduplication token is the event id, several at a time: an insert of
// one event is latency-bound (a part and a deduplication log entry are
// written), so concurrency is what makes the load fast. An error fails
// the batch: the bus naks it, and events already inserted are dropped as
// duplicates when the batch comes back.
func (s *service) handleIris(ctx context.Context, batch []*bus.Delivery) error {
	seen := make(map[string]bool, len(batch))
	var g errgroup.Group
	g.SetLimit(s.irisConcurrency)
	for _, d := range batch {
		ev, ok := d.Event.(*bus.IrisMeasured)
		if !ok {
			d.Reject(fmt.Sprintf("unexpected event type %s on the iris consumer", d.Event.EventMeta().Type))
			continue
		}
		if seen[ev.ID] {
			continue
		}
		seen[ev.ID] = true
		b := iris.Batch{EventID: ev.ID, Source: ev.Source, Time: ev.Time, Rows: ev.Rows}
		g.Go(func() error {
			return s.insert(schema.TableIris, len(b.Rows), func() error { return iris.Insert(ctx, s.conn, b) })
		})
	}
	return g.Wait() // the first error; nil when none failed
}

// handleGrades inserts the batch's grade events as one INSERT.
func (s *service) handleGrades(ctx context.Context, batch []*bus.Delivery) error {
	rows := make([]gradeRow, 0, len(batch))
	seen := make(map[string]bool, len(batch))
	for _, d := range batch {
		m := d.Event.EventMeta()
		if seen[m.ID] {
			continue
		}
		switch d.Event.(type) {
		case *bus.GradeCompleted, *bus.GradeFailed:
			// The result as the grade history reads it (bus.GradeFrom, the
			// one conversion of grade events), one row per result event.
			g := bus.GradeFrom(nil, d.Event)
			rows = append(rows, gradeRow{EventID: m.ID, Time: m.Time, Status: g.Status,
				GradeID: g.ID, ImageID: g.ImageID, Owner: g.Owner, Model: g.Model, ModelVersion: g.ModelVersion,
				Label: g.Label, Score: g.Score, InferenceMS: g.InferenceMS, BatchSize: uint32(max(g.BatchSize, 0)), Reason: g.Reason,
				Catalogued: g.Catalogued})
		default:
			d.Reject(fmt.Sprintf("unexpected event type %s on the grades consumer", m.Type))
			continue
		}
		seen[m.ID] = true
	}
	if len(rows) == 0 {
		return nil
	}
	return s.insert(schema.TableGrades, len(rows), func() error { return insertGrades(ctx, s.conn, rows) })
}

// handleAnnotations inserts the batch's annotation events as one INSERT.
func (s *service) handleAnnotations(ctx context.Context, batch []*bus.Delivery) error {
	rows := make([]annotationRow, 0, len(batch))
	seen := make(map[string]bool, len(batch))
	for _, d := range batch {
		ev, ok := d.Event.(*bus.AnnotationCreated)
		if !ok {
			d.Reject(fmt.Sprintf("unexpected event type %s on the annotations consumer", d.Event.EventMeta().Type))
			continue
		}
		if seen[ev.ID] {
			continue
		}
		seen[ev.ID] = true
		st, _ := bus.ParseStructure(ev.Annotation) // what is malformed is left out
		rows = append(rows, annotationRow{EventID: ev.ID, Time: ev.Time, Author: ev.Author, ImageID: ev.ImageID,
			Label: st.Label, Boxes: uint32(len(st.Boxes)), FromGrade: st.FromGrade})
	}
	if len(rows) == 0 {
		return nil
	}
	return s.insert(schema.TableAnnotations, len(rows), func() error { return insertAnnotations(ctx, s.conn, rows) })
}
