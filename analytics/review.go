package analytics

import (
	"context"
	"fmt"
	"strconv"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
)

// ReviewQueue answers the catalogue images q.Owner graded, lowest top
// score of their latest prediction first (ties by image id), a page at a
// time; with q.Unannotated only images no annotation names. Deleted
// images and annotations still count here: the edge drops images that
// are gone.
func ReviewQueue(ctx context.Context, conn driver.Conn, q bus.ReviewQuery) ([]bus.ReviewItem, error) {
	q.Page, q.PerPage = bus.PageDefaults(q.Page, q.PerPage)
	details := []string{}
	if q.Owner == "" {
		details = append(details, "owner: required")
	}
	if err := bus.ValidatePage(q.Page, q.PerPage); err != nil {
		return nil, err
	}
	if len(details) > 0 {
		return nil, &bus.Error{Code: bus.CodeUnprocessable, Message: "invalid review query", Details: details}
	}
	params := clickhouse.Parameters{"owner": q.Owner, "limit": strconv.Itoa(q.PerPage),
		"offset": strconv.FormatInt(int64(q.Page-1)*int64(q.PerPage), 10)}
	cond := ""
	if q.Unannotated {
		cond = ` AND image_id NOT IN (SELECT image_id FROM ` + schema.TableAnnotations + ` WHERE image_id != '')`
	}
	sql := `SELECT image_id, argMax(grade_id, time), toString(argMax(model, time)), toString(argMax(model_version, time)),
			toString(argMax(label, time)), argMax(score, time) AS s, max(time)
		FROM ` + schema.TableGrades + ` FINAL
		WHERE owner = {owner:String} AND status = 'completed' AND catalogued = 1` + cond + `
		GROUP BY image_id
		ORDER BY s ASC, image_id ASC
		LIMIT {limit:UInt64} OFFSET {offset:UInt64}`
	rows, err := conn.Query(clickhouse.Context(ctx, clickhouse.WithParameters(params)), sql)
	if err != nil {
		return nil, fmt.Errorf("analytics: review queue: %w", err)
	}
	defer rows.Close()
	out := []bus.ReviewItem{}
	for rows.Next() {
		var r bus.ReviewItem
		if err := rows.Scan(&r.ImageID, &r.GradeID, &r.Model, &r.ModelVersion, &r.Label, &r.Score, &r.GradedAt); err != nil {
			return nil, fmt.Errorf("analytics: review queue: %w", err)
		}
		r.GradedAt = r.GradedAt.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("analytics: review queue: %w", err)
	}
	return out, nil
}

// Agreement compares, per model version, q.Owner's latest prediction of
// q.Model on each catalogue image with the latest image label people gave
// it (annotations made by accepting a prediction are not a second
// opinion and are left out): how many images have both, how many agree,
// and the confusion counts.
func Agreement(ctx context.Context, conn driver.Conn, q bus.AgreementQuery) ([]bus.AgreementRow, error) {
	var details []string
	if q.Owner == "" {
		details = append(details, "owner: required")
	}
	if q.Model == "" {
		details = append(details, "model: required")
	}
	if len(details) > 0 {
		return nil, &bus.Error{Code: bus.CodeUnprocessable, Message: "invalid agreement query", Details: details}
	}
	params := clickhouse.Parameters{"owner": q.Owner, "model": q.Model, "limit": strconv.Itoa(MaxStatsRows + 1)}
	sql := `SELECT v, p, h, count()
		FROM (
			SELECT image_id, toString(model_version) AS v, toString(argMax(label, time)) AS p
			FROM ` + schema.TableGrades + ` FINAL
			WHERE owner = {owner:String} AND model = {model:String} AND status = 'completed' AND catalogued = 1
			GROUP BY image_id, model_version
		) AS g
		INNER JOIN (
			SELECT image_id, argMax(label, time) AS h
			FROM ` + schema.TableAnnotations + ` FINAL
			WHERE label != '' AND from_grade = '' AND image_id != ''
			GROUP BY image_id
		) AS a USING (image_id)
		GROUP BY v, p, h
		ORDER BY v, p, h
		LIMIT {limit:UInt64}`
	rows, err := conn.Query(clickhouse.Context(ctx, clickhouse.WithParameters(params)), sql)
	if err != nil {
		return nil, fmt.Errorf("analytics: agreement: %w", err)
	}
	defer rows.Close()
	out := []bus.AgreementRow{}
	n := 0
	for rows.Next() {
		var c bus.ConfusionCell
		var v string
		if err := rows.Scan(&v, &c.Predicted, &c.Human, &c.Count); err != nil {
			return nil, fmt.Errorf("analytics: agreement: %w", err)
		}
		if n++; n > MaxStatsRows {
			return nil, tooManyRows("(version, predicted, human)")
		}
		if len(out) == 0 || out[len(out)-1].ModelVersion != v {
			out = append(out, bus.AgreementRow{ModelVersion: v, Confusion: []bus.ConfusionCell{}})
		}
		r := &out[len(out)-1]
		r.Compared += c.Count
		if c.Predicted == c.Human {
			r.Agree += c.Count
		}
		r.Confusion = append(r.Confusion, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("analytics: agreement: %w", err)
	}
	for i := range out {
		out[i].Rate = float64(out[i].Agree) / float64(out[i].Compared)
	}
	return out, nil
}
