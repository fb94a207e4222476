package analytics

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gradeline/gradeline/analytics/internal/chtest"
	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/analytics/schema"
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

// BenchmarkIrisQueries loads GRADELINE_BENCH_IRIS_ROWS (default 10M) rows
// through JetStream (the rows of deploy/bench), waits for the engine's
// merges, then times every iris query three ways, interleaved so all see
// the same machine state: "direct" is the statement of the library run
// with optimize_use_projections = 0 (the query before migration 3),
// "shipped" is iris.Range / iris.Stats as they are, "NATS" is the same
// query through the analytics query service. It prints the p50s and the
// ratio shipped/direct, then the p50 cost of a 10,000-row insert with and
// without the projections (two fresh databases, interleaved).
//
//	go test -run '^$' -bench IrisQueries -benchtime 1x ./analytics/
func BenchmarkIrisQueries(b *testing.B) {
	total := 10_000_000
	if v := os.Getenv("GRADELINE_BENCH_IRIS_ROWS"); v != "" {
		total, _ = strconv.Atoi(v)
	}
	runs := 15
	if v, err := strconv.Atoi(os.Getenv("GRADELINE_BENCH_QUERY_RUNS")); err == nil && v > 0 {
		runs = v
	}
	ctx := context.Background()
	for range b.N {
		s := startStack(b, nil)
		rows := make([]bus.IrisRow, bus.MaxIrisRows)
		start := time.Now()
		for sent := 0; sent < total; sent += len(rows) {
			for i := range rows {
				j := sent + i
				rows[i] = bus.IrisRow{SepalLength: 4 + float64(j%40)/10, SepalWidth: 2 + float64(j%25)/10,
					PetalLength: 1 + float64(j%60)/10, PetalWidth: 0.1 + float64(j%25)/10, Species: bus.IrisSpecies[j%3]}
			}
			if _, err := bus.Publish(ctx, s.js, irisEvent(rows...)); err != nil {
				b.Fatal(err)
			}
		}
		s.waitAcked(b, bus.ConsumerAnalyticsIris)
		loaded := time.Since(start)
		settle := time.Now()
		eventually(b, "merges and mutations finish", func() bool {
			return s.count(b, "SELECT count() FROM system.merges WHERE database = currentDatabase()")+
				s.count(b, "SELECT count() FROM system.mutations WHERE database = currentDatabase() AND NOT is_done") == 0
		})
		fmt.Printf("iris: %d rows loaded through JetStream in %.1f s (%.0f rows/s), merges settled %.1f s later; %d parts\n",
			total, loaded.Seconds(), float64(total)/loaded.Seconds(), time.Since(settle).Seconds(),
			s.count(b, "SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = ? AND active", iris.Table))

		sepal := iris.Filter{Lower: map[string]float64{"sepal_length": 5}, Upper: map[string]float64{"sepal_length": 6.5}}
		setosa := iris.Filter{Species: []string{"setosa"}}
		ranges := []struct {
			name string
			q    iris.RangeQuery
		}{
			{"range p3×100 sepal 5..6.5 by petal_length", iris.RangeQuery{IrisFilter: sepal, Sort: "petal_length", Page: 3, PerPage: 100}},
			{"range p1×100 by sepal_width", iris.RangeQuery{Sort: "sepal_width", PerPage: 100}},
			{"range p1000×100 setosa by petal_width", iris.RangeQuery{IrisFilter: setosa, Sort: "petal_width", Page: 1000, PerPage: 100}},
			{"range p1×100 row-id order", iris.RangeQuery{PerPage: 100}},
			{"range p1×100 sepal 5..6.5 row-id order", iris.RangeQuery{IrisFilter: sepal, PerPage: 100}},
		}
		stats := []struct {
			name string
			q    iris.StatsQuery
		}{
			{"mean all", iris.StatsQuery{Func: "mean"}},
			{"mean setosa", iris.StatsQuery{IrisFilter: setosa, Func: "mean"}},
			{"stddev all", iris.StatsQuery{Func: "stddev"}},
			{"median all", iris.StatsQuery{Func: "median"}},
			{"quantile 0.9 setosa", iris.StatsQuery{IrisFilter: setosa, Func: "quantile", Q: 0.9}},
			{"median sepal 5..6.5", iris.StatsQuery{IrisFilter: sepal, Func: "median"}},
			{"mean setosa sepal 5..6.5, petal_width ≤ 1", iris.StatsQuery{IrisFilter: iris.Filter{Species: []string{"setosa"},
				Lower: sepal.Lower, Upper: map[string]float64{"sepal_length": 6.5, "petal_width": 1}}, Func: "mean"}},
		}
		type query struct {
			name                string
			direct, shipped, ns func() error
		}
		var queries []query
		for _, r := range ranges {
			queries = append(queries, query{r.name,
				func() error { return irisDirectRange(ctx, s.conn, r.q) },
				func() error { _, err := iris.Range(ctx, s.conn, r.q); return err },
				func() error { _, err := bus.Request[iris.Page](ctx, s.nc, bus.SvcIrisRange, r.q); return err }})
		}
		for _, st := range stats {
			queries = append(queries, query{st.name,
				func() error { return irisDirectStats(ctx, s.conn, st.q) },
				func() error { _, err := iris.Stats(ctx, s.conn, st.q); return err },
				func() error { _, err := bus.Request[[]iris.Stat](ctx, s.nc, bus.SvcIrisStats, st.q); return err }})
		}
		fmt.Printf("%-42s %12s %12s %8s %12s\n", "p50 of "+strconv.Itoa(runs)+" runs at "+strconv.Itoa(total)+" rows", "direct", "shipped", "ratio", "via NATS")
		for _, q := range queries {
			var d, sh, ns []time.Duration
			for range runs {
				for _, m := range []struct {
					f   func() error
					out *[]time.Duration
				}{{q.direct, &d}, {q.shipped, &sh}, {q.ns, &ns}} {
					t0 := time.Now()
					if err := m.f(); err != nil {
						b.Fatalf("%s: %v", q.name, err)
					}
					*m.out = append(*m.out, time.Since(t0))
				}
			}
			pd, ps, pn := p50Of(d), p50Of(sh), p50Of(ns)
			fmt.Printf("%-42s %9.1f ms %9.1f ms %8.3f %9.1f ms\n", q.name, msOf(pd), msOf(ps), msOf(ps)/msOf(pd), msOf(pn))
		}
		benchInsertCost(b)
	}
}

// benchInsertCost times 10,000-row inserts into a table with and without
// the projections of migration 3, interleaved.
func benchInsertCost(b *testing.B) {
	ctx := context.Background()
	_, plain := chtest.Database(b)
	for _, m := range schema.Migrations {
		if m.Version >= 3 {
			continue // the tables as they were before the projections
		}
		for _, stmt := range m.Statements {
			if err := plain.Exec(ctx, stmt); err != nil {
				b.Fatal(err)
			}
		}
	}
	_, full := chtest.Database(b)
	if _, err := schema.Migrate(ctx, full, quiet); err != nil {
		b.Fatal(err)
	}
	rows := make([]bus.IrisRow, bus.MaxIrisRows)
	for i := range rows {
		rows[i] = bus.IrisRow{SepalLength: 4 + float64(i%40)/10, SepalWidth: 2 + float64(i%25)/10,
			PetalLength: 1 + float64(i%60)/10, PetalWidth: 0.1 + float64(i%25)/10, Species: bus.IrisSpecies[i%3]}
	}
	var withOut, with []time.Duration
	for range 40 {
		for _, m := range []struct {
			conn driver.Conn
			out  *[]time.Duration
		}{{plain, &withOut}, {full, &with}} {
			t0 := time.Now()
			if err := iris.Insert(ctx, m.conn, iris.Batch{EventID: bus.NewID(), Rows: rows, Time: time.Now()}); err != nil {
				b.Fatal(err)
			}
			*m.out = append(*m.out, time.Since(t0))
		}
	}
	p, w := p50Of(withOut), p50Of(with)
	fmt.Printf("10,000-row insert p50 of 40: %.1f ms without projections, %.1f ms with (%.2f×)\n", msOf(p), msOf(w), msOf(w)/msOf(p))
}

// irisUnoptimised runs st the way it ran before migration 3: from the rows.
func irisUnoptimised(st iris.Statement) iris.Statement {
	st.Settings = clickhouse.Settings{"optimize_use_projections": 0}
	return st
}

// irisDirectRange runs the page and count queries of q side by side, as
// iris.Range does, without projections.
func irisDirectRange(ctx context.Context, conn driver.Conn, q iris.RangeQuery) error {
	page, count, err := iris.RangeStatements(q)
	if err != nil {
		return err
	}
	page, count = irisUnoptimised(page), irisUnoptimised(count)
	var total uint64
	countErr := make(chan error, 1)
	go func() { countErr <- conn.QueryRow(count.Context(ctx), count.SQL).Scan(&total) }()
	var rows []bus.IrisRow
	err = irisScanAll(ctx, conn, page, func(r driver.Rows) error {
		var x bus.IrisRow
		err := r.Scan(&x.SepalLength, &x.SepalWidth, &x.PetalLength, &x.PetalWidth, &x.Species)
		rows = append(rows, x)
		return err
	})
	if cerr := <-countErr; err == nil {
		err = cerr
	}
	return err
}

// irisDirectStats runs the direct stats query of q without projections.
func irisDirectStats(ctx context.Context, conn driver.Conn, q iris.StatsQuery) error {
	st, err := iris.StatsStatement(q)
	if err != nil {
		return err
	}
	var out []iris.Stat
	return irisScanAll(ctx, conn, irisUnoptimised(st), func(r driver.Rows) error {
		var s iris.Stat
		v := make([]float64, 4)
		err := r.Scan(&s.Label, &s.Count, &v[0], &v[1], &v[2], &v[3])
		out = append(out, s)
		return err
	})
}

func irisScanAll(ctx context.Context, conn driver.Conn, st iris.Statement, scan func(driver.Rows) error) error {
	rows, err := conn.Query(st.Context(ctx), st.SQL)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

func p50Of(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
