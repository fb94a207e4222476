// Package schema holds the versioned ClickHouse schema of analytics and
// applies it. Migrations run at start, in order, each recorded in the
// schema_migrations table; every statement is idempotent (IF NOT EXISTS), so
// replicas starting together, or a migration interrupted half-way, apply
// cleanly the next time.
//
// Only features that clickhouse-server has too are used: the engine served
// by localch in tests and the official server in production run the same
// statements.
//
// Idempotent inserts: the event tables are ReplacingMergeTree keyed by the
// row identity, with a non-replicated deduplication window. Writers pass
// insert_deduplication_token (the event id for iris batches), so a
// redelivered event is dropped at insert time; rows that slipped past the
// window (a redelivery after more than DedupWindow inserts) are collapsed
// by background merges, and queries that must be exact at once use FINAL.
package schema

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Table names.
const (
	TableMigrations  = "schema_migrations"
	TableIris        = "iris_measurements"
	TableGrades      = "grades"
	TableAnnotations = "annotations"
	// TableShadows holds the shadow grades of regrade runs.
	TableShadows = "grade_shadows"
)

// DedupWindow is how many recent inserts each table remembers the tokens of.
const DedupWindow = 10000

// Migration is one versioned step.
type Migration struct {
	Version    uint32
	Name       string
	Statements []string
}

// Migrations is the ordered history of the schema. Append only: a released
// migration never changes.
var Migrations = []Migration{
	{1, "event tables", []string{
		// One row per measurement; (event_id, row_idx) is its identity and
		// the sorting key, so the default range order (row id) reads in
		// index order and stops after one page; filters and other sorts
		// scan the measurement columns.
		`CREATE TABLE IF NOT EXISTS ` + TableIris + ` (
			event_id     String,
			row_idx      UInt32,
			species      LowCardinality(String),
			sepal_length Float64,
			sepal_width  Float64,
			petal_length Float64,
			petal_width  Float64,
			source       LowCardinality(String),
			measured_at  DateTime64(3, 'UTC')
		) ENGINE = ReplacingMergeTree
		ORDER BY (event_id, row_idx)
		SETTINGS non_replicated_deduplication_window = ` + fmt.Sprint(DedupWindow),
		// One row per grade.completed or grade.failed event, keyed by the
		// event id; time is the event's time, so the key is fixed per event.
		`CREATE TABLE IF NOT EXISTS ` + TableGrades + ` (
			event_id      String,
			time          DateTime64(3, 'UTC'),
			status        LowCardinality(String),
			grade_id      String,
			image_id      String,
			owner         String,
			model         LowCardinality(String),
			model_version LowCardinality(String),
			label         LowCardinality(String),
			score         Float64,
			inference_ms  Float64,
			batch_size    UInt32,
			reason        String
		) ENGINE = ReplacingMergeTree
		PARTITION BY toYYYYMM(time)
		ORDER BY (time, event_id)
		SETTINGS non_replicated_deduplication_window = ` + fmt.Sprint(DedupWindow),
		// One row per annotation.created event (the annotation itself lives
		// in MongoDB; analytics counts).
		`CREATE TABLE IF NOT EXISTS ` + TableAnnotations + ` (
			event_id String,
			time     DateTime64(3, 'UTC'),
			author   String,
			image_id String
		) ENGINE = ReplacingMergeTree
		PARTITION BY toYYYYMM(time)
		ORDER BY (time, event_id)
		SETTINGS non_replicated_deduplication_window = ` + fmt.Sprint(DedupWindow),
	}},
	// Predictions on catalogue images and the structure of annotations
	// (image label, box count, the grade an accepted prediction came
	// from): the review queue and the agreement of models with people.
	{2, "predictions and structured annotations", []string{
		`ALTER TABLE ` + TableGrades + ` ADD COLUMN IF NOT EXISTS catalogued UInt8 DEFAULT 0`,
		`ALTER TABLE ` + TableAnnotations + ` ADD COLUMN IF NOT EXISTS label String DEFAULT ''`,
		`ALTER TABLE ` + TableAnnotations + ` ADD COLUMN IF NOT EXISTS boxes UInt32 DEFAULT 0`,
		`ALTER TABLE ` + TableAnnotations + ` ADD COLUMN IF NOT EXISTS from_grade String DEFAULT ''`,
	}},
	// Projections of the iris table, so the statistics and sorts that
	// scanned every row read a few rows instead (see irisProjections).
	{3, "iris projections", irisProjections()},
	// One row per grade.shadow event: a grade (of) re-run by another model
	// version in a regrade run, compared with the served one by version.
	{4, "shadow grades of regrade runs", []string{
		`CREATE TABLE IF NOT EXISTS ` + TableShadows + ` (
			event_id      String,
			time          DateTime64(3, 'UTC'),
			run           String,
			of            String,
			image_id      String,
			owner         String,
			model         LowCardinality(String),
			model_version LowCardinality(String),
			label         LowCardinality(String),
			score         Float64,
			reason        String
		) ENGINE = ReplacingMergeTree
		PARTITION BY toYYYYMM(time)
		ORDER BY (owner, model, of, event_id)
		SETTINGS non_replicated_deduplication_window = ` + fmt.Sprint(DedupWindow),
	}},
}

// Migrate applies every migration not yet recorded and returns the versions
// it applied.
func Migrate(ctx context.Context, conn driver.Conn, log *slog.Logger) ([]uint32, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+TableMigrations+` (
			version    UInt32,
			name       String,
			applied_at DateTime64(3, 'UTC')
		) ENGINE = ReplacingMergeTree ORDER BY version`); err != nil {
		return nil, fmt.Errorf("schema: create %s: %w", TableMigrations, err)
	}
	done, err := Applied(ctx, conn)
	if err != nil {
		return nil, err
	}
	var applied []uint32
	for _, m := range Migrations {
		if done[m.Version] {
			continue
		}
		for i, stmt := range m.Statements {
			if err := conn.Exec(ctx, stmt); err != nil {
				return applied, fmt.Errorf("schema: migration %d (%s) statement %d: %w", m.Version, m.Name, i+1, err)
			}
		}
		if err := conn.Exec(ctx, `INSERT INTO `+TableMigrations+` (version, name, applied_at) VALUES (?, ?, ?)`,
			m.Version, m.Name, time.Now().UTC()); err != nil {
			return applied, fmt.Errorf("schema: record migration %d: %w", m.Version, err)
		}
		log.Info("schema migration applied", "version", m.Version, "name", m.Name)
		applied = append(applied, m.Version)
	}
	return applied, nil
}

// Applied returns the recorded migration versions.
func Applied(ctx context.Context, conn driver.Conn) (map[uint32]bool, error) {
	rows, err := conn.Query(ctx, `SELECT DISTINCT version FROM `+TableMigrations)
	if err != nil {
		return nil, fmt.Errorf("schema: read %s: %w", TableMigrations, err)
	}
	defer rows.Close()
	done := map[uint32]bool{}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("schema: read %s: %w", TableMigrations, err)
		}
		done[v] = true
	}
	return done, rows.Err()
}
