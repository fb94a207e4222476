package iris_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gradeline/gradeline/analytics/internal/chtest"
	"github.com/gradeline/gradeline/analytics/internal/iristest"
	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
)

// unoptimised makes a statement run the way it did before the projections:
// ClickHouse reads the rows.
func unoptimised(st iris.Statement) iris.Statement {
	st.Settings = clickhouse.Settings{"optimize_use_projections": 0}
	return st
}

// directStats runs the direct stats query of q on the rows.
func directStats(t *testing.T, conn driver.Conn, q iris.StatsQuery) []iris.Stat {
	t.Helper()
	st, err := iris.StatsStatement(q)
	if err != nil {
		t.Fatal(err)
	}
	st = unoptimised(st)
	rows, err := conn.Query(st.Context(context.Background()), st.SQL)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := []iris.Stat{}
	for rows.Next() {
		var s iris.Stat
		v := make([]float64, len(iris.Columns))
		if err := rows.Scan(&s.Label, &s.Count, &v[0], &v[1], &v[2], &v[3]); err != nil {
			t.Fatal(err)
		}
		s.Values = map[string]float64{}
		for i, c := range iris.Columns {
			if !math.IsNaN(v[i]) && !math.IsInf(v[i], 0) {
				s.Values[c] = iris.Round(v[i])
			}
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// directRange runs the direct page and count queries of q on the rows.
func directRange(t *testing.T, conn driver.Conn, q iris.RangeQuery) ([]bus.IrisRow, uint64) {
	t.Helper()
	ctx := context.Background()
	page, count, err := iris.RangeStatements(q)
	if err != nil {
		t.Fatal(err)
	}
	page, count = unoptimised(page), unoptimised(count)
	var total uint64
	if err := conn.QueryRow(count.Context(ctx), count.SQL).Scan(&total); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(page.Context(ctx), page.SQL)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := []bus.IrisRow{}
	for rows.Next() {
		var r bus.IrisRow
		if err := rows.Scan(&r.SepalLength, &r.SepalWidth, &r.PetalLength, &r.PetalWidth, &r.Species); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out, total
}

// insertSlipped stores b's rows again under another deduplication token: a
// redelivery that came after more than schema.DedupWindow other inserts.
func insertSlipped(t *testing.T, conn driver.Conn, b iris.Batch) {
	t.Helper()
	ctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{
		"insert_deduplication_token": "slipped:" + b.EventID,
	}))
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+iris.Table+
		" (event_id, row_idx, species, sepal_length, sepal_width, petal_length, petal_width, source, measured_at)")
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range b.Rows {
		if err := batch.Append(b.EventID, uint32(i), r.Species, r.SepalLength, r.SepalWidth, r.PetalLength, r.PetalWidth,
			b.Source, b.Time); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
}

// randomRows returns n rows; value draws a measurement.
func randomRows(rng *rand.Rand, n int, value func() float64) []bus.IrisRow {
	rows := make([]bus.IrisRow, n)
	for i := range rows {
		rows[i] = bus.IrisRow{SepalLength: value(), SepalWidth: value(), PetalLength: value(), PetalWidth: value(),
			Species: bus.IrisSpecies[rng.IntN(len(bus.IrisSpecies))]}
	}
	return rows
}

// datasets: measured to 0.1 cm like the real data (few distinct values:
// the counts answer), and continuous values (distinct per row: more than
// the bound on counted values, so Stats falls back to the direct query).
var datasets = []struct {
	name      string
	events    int
	rows      int
	value     func(*rand.Rand) float64
	fallsBack bool
}{
	{"tenths", 4, 1500, func(r *rand.Rand) float64 { return float64(r.IntN(80)) / 10 }, false},
	{"continuous", 3, 4000, func(r *rand.Rand) float64 { return r.Float64() * 8 }, true},
}

// countedValues is the bound on counted values in these tests: the
// continuous rows exceed it, the measured ones (240 pairs) do not.
const countedValues = 1000

// loadDataset inserts the events of a dataset the way the consumer does,
// one of them twice (a redelivery within the window: dropped) and one
// again past the window (stored twice until a merge). It returns the
// rows as the table holds them before and after that merge.
func loadDataset(t *testing.T, conn driver.Conn, events, perEvent int, value func(*rand.Rand) float64) (stored, unique []bus.IrisRow) {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(13, uint64(perEvent)))
	var batches []iris.Batch
	for range events {
		b := iris.Batch{EventID: bus.NewID(), Source: "test", Time: time.Unix(1700000000, 0),
			Rows: randomRows(rng, perEvent, func() float64 { return value(rng) })}
		if err := iris.Insert(ctx, conn, b); err != nil {
			t.Fatal(err)
		}
		batches = append(batches, b)
		unique = append(unique, b.Rows...)
	}
	if err := iris.Insert(ctx, conn, batches[0]); err != nil { // redelivered: dropped by its token
		t.Fatal(err)
	}
	insertSlipped(t, conn, batches[1])
	stored = append(slices.Clone(unique), batches[1].Rows...)
	return stored, unique
}

var statsFuncs = []struct {
	fn string
	q  float64
}{{"mean", 0}, {"min", 0}, {"max", 0}, {"median", 0}, {"stddev", 0}, {"count", 0},
	{"quantile", 0}, {"quantile", 0.1}, {"quantile", 0.25}, {"quantile", 1.0 / 3}, {"quantile", 0.9}, {"quantile", 1}}

var projectionFilters = []struct {
	name string
	f    bus.IrisFilter
}{
	{"all", bus.IrisFilter{}},
	{"setosa", bus.IrisFilter{Species: []string{"setosa"}}},
	{"two species", bus.IrisFilter{Species: []string{"virginica", "versicolor"}}},
	{"sepal 2..5.5 inclusive", bus.IrisFilter{Lower: map[string]float64{"sepal_length": 2}, Upper: map[string]float64{"sepal_length": 5.5}}},
	{"combined", bus.IrisFilter{Species: []string{"versicolor", "virginica"},
		Lower: map[string]float64{"petal_length": 1.5, "sepal_width": 2.8}, Upper: map[string]float64{"petal_width": 6}}},
	{"nothing", bus.IrisFilter{Lower: map[string]float64{"sepal_length": 100}}},
}

// The statistics and pages answered with the projections equal the direct
// query on the rows, and the values computed here from the stored rows:
// for measured and continuous data, with a redelivered event, and with a
// duplicate that slipped past the deduplication window, before and after
// the merge that collapses it.
func TestProjectionsMatchDirectQuery(t *testing.T) {
	ctx := context.Background()
	defer func(v int) { *iris.MaxCountedValuesVar = v }(*iris.MaxCountedValuesVar)
	*iris.MaxCountedValuesVar = countedValues
	for _, ds := range datasets {
		t.Run(ds.name, func(t *testing.T) {
			_, conn := chtest.Database(t)
			if _, err := schema.Migrate(ctx, conn, quiet); err != nil {
				t.Fatal(err)
			}
			stored, unique := loadDataset(t, conn, ds.events, ds.rows, ds.value)
			for _, state := range []struct {
				name  string
				rows  []bus.IrisRow
				merge bool
			}{{"slipped duplicate stored", stored, false}, {"merged", unique, true}} {
				if state.merge {
					if err := conn.Exec(ctx, "OPTIMIZE TABLE "+iris.Table+" FINAL"); err != nil {
						t.Fatal(err)
					}
				}
				if n := countRows(t, conn); n != uint64(len(state.rows)) {
					t.Fatalf("%s: %d rows in the table, want %d", state.name, n, len(state.rows))
				}
				t.Run(state.name, func(t *testing.T) {
					checkStats(t, conn, state.rows, ds.fallsBack)
					checkRanges(t, conn)
				})
			}
		})
	}
}

func checkStats(t *testing.T, conn driver.Conn, rows []bus.IrisRow, fallsBack bool) {
	ctx := context.Background()
	for _, f := range projectionFilters {
		for _, fn := range statsFuncs {
			q := iris.StatsQuery{IrisFilter: f.f, Func: fn.fn, Q: fn.q}
			t.Run(fmt.Sprintf("stats/%s/%s/%.3g", f.name, fn.fn, fn.q), func(t *testing.T) {
				before := iris.CountsFallbacks.Load()
				got, err := iris.Stats(ctx, conn, q)
				if err != nil {
					t.Fatal(err)
				}
				// The bound holds per aggregating thread: past 4× it, some
				// thread of up to 4 certainly meets it.
				matching := 0
				for _, r := range rows {
					if iristest.Match(r, f.f) {
						matching++
					}
				}
				fell := iris.CountsFallbacks.Load() > before
				if !fallsBack && fell || fallsBack && matching >= 4*countedValues && !fell {
					t.Errorf("fell back to the direct query: %v (%d matching rows, continuous: %v)", fell, matching, fallsBack)
				}
				direct := directStats(t, conn, q)
				// Order statistics and counts are exact; sums may differ
				// in the last bits with the order of addition.
				exact := fn.fn != "mean" && fn.fn != "stddev"
				compareStats(t, "direct query", got, direct, exact)
				want, counts := iristest.Stats(rows, f.f, fn.fn, fn.q)
				var expected []iris.Stat
				for sp, vals := range want {
					expected = append(expected, iris.Stat{Label: sp, Values: vals, Count: counts[sp]})
				}
				slices.SortFunc(expected, func(a, b iris.Stat) int { return strings.Compare(a.Label, b.Label) })
				compareStats(t, "computed here", got, expected, false)
			})
		}
	}
}

func compareStats(t *testing.T, what string, got, want []iris.Stat, exact bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d species, %s has %d: %+v vs %+v", len(got), what, len(want), got, want)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Label != w.Label || g.Count != w.Count || len(g.Values) != len(w.Values) {
			t.Fatalf("%+v, %s has %+v", g, what, w)
		}
		for c, wv := range w.Values {
			gv, ok := g.Values[c]
			if !ok || exact && gv != wv || !iristest.Close(gv, wv) {
				t.Errorf("%s %s = %v, %s has %v", g.Label, c, gv, what, wv)
			}
		}
	}
}

func checkRanges(t *testing.T, conn driver.Conn) {
	ctx := context.Background()
	for _, f := range projectionFilters {
		for _, sortCol := range append([]string{""}, iris.Columns...) {
			t.Run(fmt.Sprintf("range/%s/%s", f.name, sortCol), func(t *testing.T) {
				const perPage = 97
				_, total := directRange(t, conn, iris.RangeQuery{IrisFilter: f.f, PerPage: 1})
				last := int(total+perPage-1) / perPage
				for _, page := range slices.Compact([]int{1, 2, last / 2, last, last + 1}) {
					if page < 1 {
						continue
					}
					q := iris.RangeQuery{IrisFilter: f.f, Sort: sortCol, Page: page, PerPage: perPage}
					got, err := iris.Range(ctx, conn, q)
					if err != nil {
						t.Fatal(err)
					}
					want, wantTotal := directRange(t, conn, q)
					if got.Total != int64(wantTotal) || !slices.Equal(got.Data, want) {
						t.Fatalf("page %d: total %d, %d rows; the direct query: total %d, %d rows, first differences %v",
							page, got.Total, len(got.Data), wantTotal, len(want), firstDiff(got.Data, want))
					}
				}
			})
		}
	}
}

func firstDiff(a, b []bus.IrisRow) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("row %d: %+v vs %+v", i, a[i], b[i])
		}
	}
	return "none in the common prefix"
}

// explain returns the projections (or the table) ClickHouse reads for st,
// and whether it reads in order.
func explain(t *testing.T, conn driver.Conn, st iris.Statement) (reads []string, inOrder bool) {
	t.Helper()
	rows, err := conn.Query(st.Context(context.Background()), "EXPLAIN "+st.SQL)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		if _, after, ok := strings.Cut(line, "ReadFromMergeTree ("); ok {
			reads = append(reads, strings.TrimSuffix(strings.TrimSpace(after), ")"))
		}
		if strings.Contains(line, "Read type: InOrder") {
			inOrder = true
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return reads, inOrder
}

// ClickHouse answers from the projections: the counts for statistics and
// for the count of a range, whatever the filter; the column orders for
// sorted pages (read in order).
func TestProjectionsAreUsed(t *testing.T) {
	ctx := context.Background()
	_, conn := chtest.Database(t)
	if _, err := schema.Migrate(ctx, conn, quiet); err != nil {
		t.Fatal(err)
	}
	loadDataset(t, conn, 3, 3000, datasets[0].value)
	setosa := bus.IrisFilter{Species: []string{"setosa"}}
	bounded := bus.IrisFilter{Lower: map[string]float64{"sepal_length": 2}, Upper: map[string]float64{"sepal_length": 5.5}}
	combined := projectionFilters[4].f
	var counts []string
	for range iris.Columns {
		counts = append(counts, schema.ProjectionIrisCounts)
	}
	for _, f := range []bus.IrisFilter{{}, setosa, bounded, combined} {
		st, err := iris.CountsStatement(iris.StatsQuery{IrisFilter: f, Func: "median"})
		if err != nil {
			t.Fatal(err)
		}
		if reads, _ := explain(t, conn, st); !slices.Equal(reads, counts) {
			t.Errorf("the counts of %v read %v, want %v", f, reads, counts)
		}
		_, count, _ := iris.RangeStatements(iris.RangeQuery{IrisFilter: f})
		want := counts[:1]
		if len(f.Species)+len(f.Lower)+len(f.Upper) == 0 {
			want = nil // the number of rows of the parts: nothing read
		}
		if reads, _ := explain(t, conn, count); !slices.Equal(reads, want) {
			t.Errorf("the count of a range over %v reads %v", f, reads)
		}
	}
	for _, f := range []bus.IrisFilter{{}, setosa, bounded} {
		for _, c := range append([]string{""}, iris.Columns...) {
			q := iris.RangeQuery{IrisFilter: f, Sort: c, Page: 3, PerPage: 100}
			page, _, err := iris.RangeStatements(q)
			if err != nil {
				t.Fatal(err)
			}
			if page.Settings == nil { // the filter bounds another column: Range decides
				page = iris.OrderedPage(page, q)
			}
			reads, inOrder := explain(t, conn, page)
			ok := len(reads) == 1 && inOrder
			if c != "" {
				ok = ok && reads[0] == schema.ProjectionIrisOrderPrefix+c
			} else {
				ok = ok && strings.HasSuffix(reads[0], "."+iris.Table) // the table's own order
			}
			if !ok {
				t.Errorf("page sorted by %q, filter %v: reads %v in order %v", c, f, reads, inOrder)
			}
		}
	}
}

// The counts give numpy's linear interpolation: a few values checked by
// hand (1, 2, 2, 4, 10 per species).
func TestQuantileFromCountsByHand(t *testing.T) {
	ctx := context.Background()
	_, conn := chtest.Database(t)
	if _, err := schema.Migrate(ctx, conn, quiet); err != nil {
		t.Fatal(err)
	}
	var rows []bus.IrisRow
	for _, v := range []float64{10, 2, 1, 4, 2} {
		rows = append(rows, bus.IrisRow{SepalLength: v, SepalWidth: v, PetalLength: v, PetalWidth: v, Species: "versicolor"})
	}
	if err := iris.Insert(ctx, conn, iris.Batch{EventID: bus.NewID(), Rows: rows}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		q, want float64
	}{{0, 1}, {0.1, 1.4}, {0.25, 2}, {0.5, 2}, {0.6, 2.8}, {0.75, 4}, {0.8, 5.2}, {0.9, 7.6}, {1, 10}} {
		got, err := iris.Stats(ctx, conn, iris.StatsQuery{Func: "quantile", Q: tc.q})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Label != "versicolor" || got[0].Count != 5 || got[0].Values["petal_width"] != tc.want {
			t.Errorf("quantile %v = %+v, want versicolor %v of 5 rows", tc.q, got, tc.want)
		}
	}
}

// A page whose filter bounds another column reads in order while the page
// ends within the first matching²/all rows, else lets ClickHouse read the
// bounded column's order and sort.
func TestReadsInOrder(t *testing.T) {
	for _, tc := range []struct {
		name          string
		page, perPage int
		matching, all uint64
		want          bool
	}{
		{"4M of 10M match, page 3 of 100", 3, 100, 4_000_000, 10_000_000, true},
		{"4M of 10M match, page 1,000 of 100", 1000, 100, 4_000_000, 10_000_000, true},
		{"4M of 10M match, page 100,000 of 100", 100_000, 100, 4_000_000, 10_000_000, false},
		{"1,000 of 10M match", 1, 100, 1000, 10_000_000, false},
		{"nothing matches", 1, 100, 0, 10_000_000, false},
		{"150 of 150 match", 1, 50, 150, 150, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := iris.RangeQuery{Sort: "petal_length", Page: tc.page, PerPage: tc.perPage}
			if got := iris.ReadsInOrder(q, tc.matching, tc.all); got != tc.want {
				t.Errorf("ReadsInOrder = %v, want %v", got, tc.want)
			}
		})
	}
}
