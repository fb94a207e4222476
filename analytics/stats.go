package analytics

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
)

// Statistics windows: the contract's (bus.NormalizeStatsWindow).
const (
	DefaultWindow = bus.DefaultStatsWindow
	DefaultBucket = bus.DefaultStatsBucket
	MinBucket     = bus.MinStatsBucket
	MaxBuckets    = bus.MaxStatsBuckets
	// MaxStatsRows bounds one statistics reply (about 150 bytes a row), so
	// it fits a NATS message (1 MiB by default).
	MaxStatsRows = 5000
)

func tooManyRows(what string) error {
	return &bus.Error{Code: bus.CodeUnprocessable, Message: "statistics result too large",
		Details: []string{fmt.Sprintf("bucket: the window has more than %d %s rows; use a larger bucket or a shorter window", MaxStatsRows, what)}}
}

// scopeCondition is the SQL condition of a statistics query's scope: the
// rows of one user (column = {user:String}, the name bound as a parameter)
// or, when the query says All, every row. A query naming neither, or both,
// is a 422: leaving the user out must never widen the answer to everyone.
func scopeCondition(field, column, user string, all bool, params clickhouse.Parameters) (string, []string) {
	switch {
	case all && user != "":
		return "", []string{fmt.Sprintf("all: excludes %s (%q); send one of them", field, user)}
	case all:
		return "", nil
	case user == "":
		return "", []string{fmt.Sprintf("%s: required: the user whose activity to count (or all: true for every user)", field)}
	}
	params["user"] = user
	return " AND " + column + " = {user:String}", nil
}

// validateStats applies the window defaults and checks the window and the
// scope together, so one 422 names every offending field.
func validateStats(from, to *time.Time, bucket *time.Duration, scopeDetails []string) error {
	err := bus.NormalizeStatsWindow(from, to, bucket, time.Now())
	if len(scopeDetails) == 0 {
		return err
	}
	d := slices.Clone(scopeDetails)
	var be *bus.Error
	if errors.As(err, &be) {
		d = append(d, be.Details...)
	}
	slices.Sort(d)
	msg := "invalid statistics scope"
	if err != nil {
		msg = "invalid statistics query"
	}
	return &bus.Error{Code: bus.CodeUnprocessable, Message: msg, Details: d}
}

func chTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000") }

func windowParams(from, to time.Time, bucket time.Duration) clickhouse.Parameters {
	return clickhouse.Parameters{
		"from":   chTime(from),
		"to":     chTime(to),
		"bucket": strconv.FormatInt(bucket.Milliseconds(), 10),
		"limit":  strconv.Itoa(MaxStatsRows + 1),
	}
}

// GradeStats answers per time bucket, model and label: the number of
// grades, the mean top score and the p50/p99 inference time (exact
// quantiles). Grades count in [from, to). Failed grades are reported under
// an empty label with zero score and time. Every redelivered event counts
// once (FINAL collapses rows of the same event id). The query counts the
// grades of q.Owner, or of everyone when q.All; naming neither is a 422.
func GradeStats(ctx context.Context, conn driver.Conn, q bus.GradeStatsQuery) ([]bus.GradeStatsRow, error) {
	params := clickhouse.Parameters{}
	cond, scopeErr := scopeCondition("owner", "owner", q.Owner, q.All, params)
	if err := validateStats(&q.From, &q.To, &q.Bucket, scopeErr); err != nil {
		return nil, err
	}
	maps.Copy(params, windowParams(q.From, q.To, q.Bucket))
	if q.Model != "" {
		params["model"] = q.Model
		cond += " AND model = {model:String}"
	}
	sql := `SELECT toStartOfInterval(time, toIntervalMillisecond({bucket:UInt64})) AS b,
			toString(model), toString(label), count(),
			avg(score), quantilesExactInclusive(0.5, 0.99)(inference_ms)
		FROM ` + schema.TableGrades + ` FINAL
		WHERE time >= {from:DateTime64(3, 'UTC')} AND time < {to:DateTime64(3, 'UTC')}` + cond + `
		GROUP BY b, model, label
		ORDER BY b, model, label
		LIMIT {limit:UInt64}`
	rows, err := conn.Query(clickhouse.Context(ctx, clickhouse.WithParameters(params)), sql)
	if err != nil {
		return nil, fmt.Errorf("analytics: grade stats: %w", err)
	}
	defer rows.Close()
	out := []bus.GradeStatsRow{}
	for rows.Next() {
		var r bus.GradeStatsRow
		var qs []float64
		if err := rows.Scan(&r.Bucket, &r.Model, &r.Label, &r.Count, &r.MeanScore, &qs); err != nil {
			return nil, fmt.Errorf("analytics: grade stats: %w", err)
		}
		r.Bucket = r.Bucket.UTC()
		r.MeanScore = iris.Round(r.MeanScore)
		if len(qs) == 2 {
			r.P50InferenceMS, r.P99InferenceMS = iris.Round(qs[0]), iris.Round(qs[1])
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("analytics: grade stats: %w", err)
	}
	if len(out) > MaxStatsRows {
		return nil, tooManyRows("(bucket, model, label)")
	}
	return out, nil
}

// AnnotationStats answers the number of annotations per time bucket and
// author, for annotations created in [from, to): those of q.Author, or of
// everyone when q.All; naming neither is a 422.
func AnnotationStats(ctx context.Context, conn driver.Conn, q bus.AnnotationStatsQuery) ([]bus.AnnotationStatsRow, error) {
	params := clickhouse.Parameters{}
	cond, scopeErr := scopeCondition("author", "author", q.Author, q.All, params)
	if err := validateStats(&q.From, &q.To, &q.Bucket, scopeErr); err != nil {
		return nil, err
	}
	maps.Copy(params, windowParams(q.From, q.To, q.Bucket))
	sql := `SELECT toStartOfInterval(time, toIntervalMillisecond({bucket:UInt64})) AS b, author, count()
		FROM ` + schema.TableAnnotations + ` FINAL
		WHERE time >= {from:DateTime64(3, 'UTC')} AND time < {to:DateTime64(3, 'UTC')}` + cond + `
		GROUP BY b, author
		ORDER BY b, author
		LIMIT {limit:UInt64}`
	ctx = clickhouse.Context(ctx, clickhouse.WithParameters(params))
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("analytics: annotation stats: %w", err)
	}
	defer rows.Close()
	out := []bus.AnnotationStatsRow{}
	for rows.Next() {
		var r bus.AnnotationStatsRow
		if err := rows.Scan(&r.Bucket, &r.Author, &r.Count); err != nil {
			return nil, fmt.Errorf("analytics: annotation stats: %w", err)
		}
		r.Bucket = r.Bucket.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("analytics: annotation stats: %w", err)
	}
	if len(out) > MaxStatsRows {
		return nil, tooManyRows("(bucket, author)")
	}
	return out, nil
}

// gradeRow is one grade event as stored.
type gradeRow struct {
	EventID, Status, GradeID, ImageID, Owner string
	Model, ModelVersion, Label, Reason       string
	Time                                     time.Time
	Score, InferenceMS                       float64
	BatchSize                                uint32
	Catalogued                               bool
}

// annotationRow is one annotation event as stored.
type annotationRow struct {
	EventID, Author, ImageID string
	Time                     time.Time
	// The annotation's structure (bus.ParseStructure): image label, number
	// of boxes, and the grade an accepted prediction came from.
	Label, FromGrade string
	Boxes            uint32
}

// batchToken derives the deduplication token of a multi-event insert from
// its sorted event ids: a redelivered batch with the same events is
// dropped at insert time. A batch regrouped differently gets another token;
// its rows are collapsed by the ReplacingMergeTree key and by FINAL in the
// queries.
func batchToken(table string, ids []string) string {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{0})
	}
	return table + ":" + hex.EncodeToString(h.Sum(nil))
}

// insertRows inserts n rows into table as one batch whose deduplication
// token derives from the rows' event ids (see batchToken); row(i) gives
// the values of row i in the order of columns.
func insertRows(ctx context.Context, conn driver.Conn, table, columns string, ids []string, row func(i int) []any) error {
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
		"insert_deduplicate": 1, "insert_deduplication_token": batchToken(table, ids),
	}))
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+table+" ("+columns+")")
	if err != nil {
		return fmt.Errorf("analytics: insert into %s: %w", table, err)
	}
	defer b.Close()
	for i := range ids {
		if err := b.Append(row(i)...); err != nil {
			return fmt.Errorf("analytics: insert into %s: %w", table, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("analytics: insert into %s: %w", table, err)
	}
	return nil
}

func insertGrades(ctx context.Context, conn driver.Conn, rows []gradeRow) error {
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.EventID
	}
	return insertRows(ctx, conn, schema.TableGrades,
		"event_id, time, status, grade_id, image_id, owner, model, model_version, label, score, inference_ms, batch_size, reason, catalogued",
		ids, func(i int) []any {
			r := rows[i]
			return []any{r.EventID, r.Time.UTC(), r.Status, r.GradeID, r.ImageID, r.Owner, r.Model, r.ModelVersion,
				r.Label, r.Score, r.InferenceMS, r.BatchSize, r.Reason, r.Catalogued}
		})
}

func insertAnnotations(ctx context.Context, conn driver.Conn, rows []annotationRow) error {
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.EventID
	}
	return insertRows(ctx, conn, schema.TableAnnotations, "event_id, time, author, image_id, label, boxes, from_grade",
		ids, func(i int) []any {
			r := rows[i]
			return []any{r.EventID, r.Time.UTC(), r.Author, r.ImageID, r.Label, r.Boxes, r.FromGrade}
		})
}
