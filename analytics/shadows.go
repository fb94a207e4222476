package analytics

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
)

// shadowRow is one grade.shadow event as stored.
type shadowRow struct {
	EventID, Run, Of, ImageID, Owner, Model, ModelVersion, Label, Reason string
	Time                                                                 time.Time
	Score                                                                float64
}

// handleShadows inserts the batch's shadow grades as one INSERT.
func (s *service) handleShadows(ctx context.Context, batch []*bus.Delivery) error {
	rows := make([]shadowRow, 0, len(batch))
	seen := make(map[string]bool, len(batch))
	for _, d := range batch {
		ev, ok := d.Event.(*bus.GradeShadow)
		if !ok {
			d.Reject(fmt.Sprintf("unexpected event type %s on the regrades consumer", d.Event.EventMeta().Type))
			continue
		}
		if seen[ev.ID] {
			continue
		}
		seen[ev.ID] = true
		rows = append(rows, shadowRow{EventID: ev.ID, Run: ev.Run, Of: ev.Of, ImageID: ev.ImageID, Owner: ev.Owner, Model: ev.Model,
			ModelVersion: ev.ModelVersion, Label: ev.Label, Reason: ev.Reason, Time: ev.Time, Score: ev.Score})
	}
	if len(rows) == 0 {
		return nil
	}
	return s.insert(schema.TableShadows, len(rows), func() error { return insertShadows(ctx, s.conn, rows) })
}

func insertShadows(ctx context.Context, conn driver.Conn, rows []shadowRow) error {
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.EventID
	}
	return insertRows(ctx, conn, schema.TableShadows, "event_id, time, run, of, image_id, owner, model, model_version, label, score, reason",
		ids, func(i int) []any {
			r := rows[i]
			return []any{r.EventID, r.Time.UTC(), r.Run, r.Of, r.ImageID, r.Owner, r.Model, r.ModelVersion, r.Label, r.Score, r.Reason}
		})
}

// RegradeAgreement compares, over q.Owner's grades of q.Model, the label
// version q.A gave each grade with the label version q.B gave it; either
// label is the served one (grades) or a regrade run's (shadow grades), the
// latest when there are several.
func RegradeAgreement(ctx context.Context, conn driver.Conn, q bus.RegradeAgreementQuery) (bus.RegradeAgreement, error) {
	var details []string
	for _, f := range [][2]string{{"owner", q.Owner}, {"model", q.Model}, {"a", q.A}, {"b", q.B}} {
		if f[1] == "" {
			details = append(details, f[0]+": required")
		}
	}
	if len(details) > 0 {
		return bus.RegradeAgreement{}, &bus.Error{Code: bus.CodeUnprocessable, Message: "invalid regrade agreement query", Details: details}
	}
	params := clickhouse.Parameters{"owner": q.Owner, "model": q.Model, "a": q.A, "b": q.B, "limit": fmt.Sprint(MaxStatsRows + 1)}
	sql := `SELECT la, lb, count()
		FROM (
			SELECT g, argMaxIf(l, t, v = {a:String}) AS la, argMaxIf(l, t, v = {b:String}) AS lb,
				countIf(v = {a:String}) AS ca, countIf(v = {b:String}) AS cb
			FROM (
				SELECT grade_id AS g, toString(model_version) AS v, toString(label) AS l, time AS t
				FROM ` + schema.TableGrades + ` FINAL
				WHERE owner = {owner:String} AND model = {model:String} AND status = 'completed'
					AND model_version IN ({a:String}, {b:String})
				UNION ALL
				SELECT of AS g, toString(model_version) AS v, toString(label) AS l, time AS t
				FROM ` + schema.TableShadows + ` FINAL
				WHERE owner = {owner:String} AND model = {model:String} AND reason = ''
					AND model_version IN ({a:String}, {b:String})
			)
			GROUP BY g
		)
		WHERE ca > 0 AND cb > 0
		GROUP BY la, lb
		ORDER BY la, lb
		LIMIT {limit:UInt64}`
	rows, err := conn.Query(clickhouse.Context(ctx, clickhouse.WithParameters(params)), sql)
	if err != nil {
		return bus.RegradeAgreement{}, fmt.Errorf("analytics: regrade agreement: %w", err)
	}
	defer rows.Close()
	out := bus.RegradeAgreement{A: q.A, B: q.B, PerLabel: []bus.LabelChange{}, Confusion: []bus.LabelPair{}}
	for rows.Next() {
		var c bus.LabelPair
		if err := rows.Scan(&c.A, &c.B, &c.Count); err != nil {
			return out, fmt.Errorf("analytics: regrade agreement: %w", err)
		}
		if len(out.Confusion) == MaxStatsRows {
			return out, tooManyRows("(label a, label b)")
		}
		out.Confusion = append(out.Confusion, c)
		out.Compared += c.Count
		if len(out.PerLabel) == 0 || out.PerLabel[len(out.PerLabel)-1].Label != c.A {
			out.PerLabel = append(out.PerLabel, bus.LabelChange{Label: c.A})
		}
		l := &out.PerLabel[len(out.PerLabel)-1]
		if c.A == c.B {
			out.Agree += c.Count
			l.Agree += c.Count
		} else {
			l.Changed += c.Count
		}
	}
	if err := rows.Err(); err != nil {
		return out, fmt.Errorf("analytics: regrade agreement: %w", err)
	}
	if out.Compared > 0 {
		out.Rate = float64(out.Agree) / float64(out.Compared)
	}
	return out, nil
}
