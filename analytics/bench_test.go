package analytics

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/bus"
)

// BenchmarkIrisEventPath loads GRADELINE_BENCH_IRIS_ROWS (default 1M) rows
// through JetStream in events of 10,000 rows and reports rows/s until the
// consumer acked the last one, then times the direct queries.
//
//	go test -run '^$' -bench IrisEventPath -benchtime 1x ./analytics/
func BenchmarkIrisEventPath(b *testing.B) {
	total := 1_000_000
	if v := os.Getenv("GRADELINE_BENCH_IRIS_ROWS"); v != "" {
		total, _ = strconv.Atoi(v)
	}
	for range b.N {
		s := startStack(b, nil)
		rows := make([]bus.IrisRow, bus.MaxIrisRows)
		start := time.Now()
		for sent := 0; sent < total; sent += len(rows) {
			for i := range rows {
				n := sent + i
				rows[i] = bus.IrisRow{SepalLength: 4 + float64(n%40)/10, SepalWidth: 2 + float64(n%25)/10,
					PetalLength: 1 + float64(n%60)/10, PetalWidth: float64(n%25) / 10, Species: bus.IrisSpecies[n%3]}
			}
			if _, err := bus.Publish(context.Background(), s.js, irisEvent(rows...)); err != nil {
				b.Fatal(err)
			}
		}
		published := time.Since(start)
		s.waitAcked(b, bus.ConsumerAnalyticsIris)
		loaded := time.Since(start)
		b.ReportMetric(float64(total)/loaded.Seconds(), "rows/s")
		b.Logf("published %d rows in %v, loaded in %v: %.0f rows/s", total, published, loaded, float64(total)/loaded.Seconds())
		ctx := context.Background()
		for _, q := range []struct {
			name string
			f    func() error
		}{
			{"range page", func() error {
				_, err := iris.Range(ctx, s.conn, iris.RangeQuery{IrisFilter: iris.Filter{Lower: map[string]float64{"sepal_length": 5}, Upper: map[string]float64{"sepal_length": 6}}, Sort: "petal_length", Page: 3, PerPage: 100})
				return err
			}},
			{"range page 1, row-id order", func() error {
				_, err := iris.Range(ctx, s.conn, iris.RangeQuery{PerPage: 100})
				return err
			}},
			{"range page 1000, row-id order", func() error {
				_, err := iris.Range(ctx, s.conn, iris.RangeQuery{PerPage: 100, Page: 1000})
				return err
			}},
			{"range page 1, setosa", func() error {
				_, err := iris.Range(ctx, s.conn, iris.RangeQuery{IrisFilter: iris.Filter{Species: []string{"setosa"}}, PerPage: 100})
				return err
			}},
			{"mean all", func() error { _, err := iris.Stats(ctx, s.conn, iris.StatsQuery{Func: "mean"}); return err }},
			{"median all", func() error { _, err := iris.Stats(ctx, s.conn, iris.StatsQuery{Func: "median"}); return err }},
			{"stddev all", func() error { _, err := iris.Stats(ctx, s.conn, iris.StatsQuery{Func: "stddev"}); return err }},
		} {
			var ds []time.Duration
			for range 7 {
				t0 := time.Now()
				if err := q.f(); err != nil {
					b.Fatal(err)
				}
				ds = append(ds, time.Since(t0))
			}
			b.Logf("%s: %v", q.name, ds)
		}
	}
}
