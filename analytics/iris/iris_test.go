package iris_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gradeline/gradeline/analytics/internal/chtest"
	"github.com/gradeline/gradeline/analytics/internal/iristest"
	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
)

var quiet = slog.New(slog.DiscardHandler)

// canonicalDB returns a connection to a fresh database holding exactly the
// canonical rows, and those rows as read from the reference CSV.
func canonicalDB(t *testing.T) (driver.Conn, []bus.IrisRow) {
	t.Helper()
	ctx := context.Background()
	_, conn := chtest.Database(t)
	if _, err := schema.Migrate(ctx, conn, quiet); err != nil {
		t.Fatal(err)
	}
	if ok, err := iris.Provision(ctx, conn); err != nil || !ok {
		t.Fatalf("provision: inserted=%v err=%v", ok, err)
	}
	return conn, iristest.Load(t, chtest.IrisCSV(t))
}

func countRows(t *testing.T, conn driver.Conn) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM "+iris.Table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The embedded copy is the reference dataset, row for row.
func TestCanonicalMatchesDataset(t *testing.T) {
	got, err := iris.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	want := iristest.Load(t, chtest.IrisCSV(t))
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("row %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

// Provisioning and migrating again (a restart, a second replica) adds
// nothing; inserting the same event twice adds its rows once.
func TestProvisionAndInsertAreIdempotent(t *testing.T) {
	ctx := context.Background()
	conn, _ := canonicalDB(t)
	applied, err := schema.Migrate(ctx, conn, quiet)
	if err != nil || len(applied) != 0 {
		t.Fatalf("second migrate applied %v, err %v", applied, err)
	}
	if ok, err := iris.Provision(ctx, conn); err != nil || ok {
		t.Fatalf("second provision: inserted=%v err=%v", ok, err)
	}
	if n := countRows(t, conn); n != 150 {
		t.Fatalf("%d rows after second provision, want 150", n)
	}
	b := iris.Batch{EventID: bus.NewID(), Rows: []bus.IrisRow{
		{SepalLength: 1, SepalWidth: 2, PetalLength: 3, PetalWidth: 4, Species: "setosa"},
		{SepalLength: 1, SepalWidth: 2, PetalLength: 3, PetalWidth: 4, Species: "setosa"}, // same values, other row
	}}
	for range 3 {
		if err := iris.Insert(ctx, conn, b); err != nil {
			t.Fatal(err)
		}
	}
	if n := countRows(t, conn); n != 152 {
		t.Fatalf("%d rows after inserting one 2-row event three times, want 152", n)
	}
	// Even the canonical token, re-sent directly, is deduplicated.
	rows, _ := iris.Canonical()
	if err := iris.Insert(ctx, conn, iris.Batch{EventID: iris.CanonicalEventID, Rows: rows}); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, conn); n != 152 {
		t.Fatalf("%d rows after re-inserting the canonical event, want 152", n)
	}
}

var filters = []struct {
	name string
	f    bus.IrisFilter
}{
	{"all", bus.IrisFilter{}},
	{"setosa", bus.IrisFilter{Species: []string{"setosa"}}},
	{"two species", bus.IrisFilter{Species: []string{"virginica", "versicolor"}}},
	{"sepal 5..6 inclusive", bus.IrisFilter{Lower: map[string]float64{"sepal_length": 5}, Upper: map[string]float64{"sepal_length": 6}}},
	{"petal width exactly 0.2", bus.IrisFilter{Lower: map[string]float64{"petal_width": 0.2}, Upper: map[string]float64{"petal_width": 0.2}}},
	{"combined", bus.IrisFilter{Species: []string{"versicolor", "virginica"},
		Lower: map[string]float64{"petal_length": 4.5, "sepal_width": 2.8}, Upper: map[string]float64{"petal_width": 1.8}}},
	{"nothing", bus.IrisFilter{Lower: map[string]float64{"sepal_length": 100}}},
}

func TestStatsMatchDataset(t *testing.T) {
	ctx := context.Background()
	conn, rows := canonicalDB(t)
	funcs := []struct {
		fn string
		q  float64
	}{{"mean", 0}, {"min", 0}, {"max", 0}, {"median", 0}, {"stddev", 0}, {"count", 0},
		{"quantile", 0}, {"quantile", 0.1}, {"quantile", 0.25}, {"quantile", 0.9}, {"quantile", 1}}
	for _, f := range filters {
		for _, fn := range funcs {
			t.Run(fmt.Sprintf("%s/%s/%v", f.name, fn.fn, fn.q), func(t *testing.T) {
				got, err := iris.Stats(ctx, conn, iris.StatsQuery{IrisFilter: f.f, Func: fn.fn, Q: fn.q})
				if err != nil {
					t.Fatal(err)
				}
				want, counts := iristest.Stats(rows, f.f, fn.fn, fn.q)
				if len(got) != len(want) {
					t.Fatalf("%d species, want %d: %+v", len(got), len(want), got)
				}
				for i, s := range got {
					if i > 0 && got[i-1].Label >= s.Label {
						t.Errorf("species not in order: %s after %s", s.Label, got[i-1].Label)
					}
					if s.Count != counts[s.Label] {
						t.Errorf("%s count %d, want %d", s.Label, s.Count, counts[s.Label])
					}
					if len(s.Values) != len(want[s.Label]) {
						t.Errorf("%s values %v, want %v", s.Label, s.Values, want[s.Label])
					}
					for c, w := range want[s.Label] {
						if g, ok := s.Values[c]; !ok || !iristest.Close(g, w) {
							t.Errorf("%s %s(%s) = %v, want %v", s.Label, fn.fn, c, g, w)
						}
					}
				}
			})
		}
	}
}

// The values every iris user knows (setosa 5.006 / 3.428 / 1.462 / 0.246).
func TestKnownMeans(t *testing.T) {
	conn, _ := canonicalDB(t)
	got, err := iris.Stats(context.Background(), conn, iris.StatsQuery{Func: "mean"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][4]float64{
		"setosa":     {5.006, 3.428, 1.462, 0.246},
		"versicolor": {5.936, 2.770, 4.260, 1.326},
		"virginica":  {6.588, 2.974, 5.552, 2.026},
	}
	if len(got) != 3 {
		t.Fatalf("got %+v", got)
	}
	for _, s := range got {
		for i, c := range iris.Columns {
			if s.Values[c] != want[s.Label][i] { // exact: see iris.Round
				t.Errorf("%s mean %s = %v, want %v", s.Label, c, s.Values[c], want[s.Label][i])
			}
		}
	}
}

func TestRangeWalksAllPages(t *testing.T) {
	ctx := context.Background()
	conn, rows := canonicalDB(t)
	for _, f := range filters {
		for _, sortCol := range append([]string{""}, iris.Columns...) {
			t.Run(f.name+"/"+sortCol, func(t *testing.T) {
				want := iristest.Range(rows, f.f, sortCol)
				var got []bus.IrisRow
				for page := 1; ; page++ {
					p, err := iris.Range(ctx, conn, iris.RangeQuery{IrisFilter: f.f, Sort: sortCol, Page: page, PerPage: 7})
					if err != nil {
						t.Fatal(err)
					}
					if p.Total != int64(len(want)) || p.Page != page || p.PerPage != 7 {
						t.Fatalf("page %d: total %d page %d per_page %d, want total %d", page, p.Total, p.Page, p.PerPage, len(want))
					}
					if len(p.Data) > 7 {
						t.Fatalf("page %d has %d rows", page, len(p.Data))
					}
					if len(p.Data) == 0 {
						break
					}
					got = append(got, p.Data...)
				}
				// Same rows in the same order: no overlap, no gap, stable ties.
				if len(got) != len(want) {
					t.Fatalf("walked %d rows, want %d", len(got), len(want))
				}
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("row %d = %+v, want %+v", i, got[i], want[i])
					}
				}
			})
		}
	}
}

// Bounds are inclusive: a row equal to a bound is in.
func TestRangeBoundsInclusive(t *testing.T) {
	conn, _ := canonicalDB(t)
	p, err := iris.Range(context.Background(), conn, iris.RangeQuery{IrisFilter: bus.IrisFilter{
		Lower: map[string]float64{"sepal_length": 7.9}, Upper: map[string]float64{"sepal_length": 7.9}}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != 1 || len(p.Data) != 1 || p.Data[0].SepalLength != 7.9 {
		t.Fatalf("got %+v, want the single 7.9 row", p)
	}
	if p.Page != 1 || p.PerPage != bus.DefaultPerPage {
		t.Fatalf("defaults: page %d per_page %d", p.Page, p.PerPage)
	}
}

// Bad input answers 422 naming the field; injection attempts never reach
// the SQL text (the table is intact afterwards).
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	conn, _ := canonicalDB(t)
	inj := "setosa' OR '1'='1"
	col := "sepal_length) OR (1=1"
	ranges := []struct {
		name  string
		q     iris.RangeQuery
		field string
	}{
		{"unknown species", iris.RangeQuery{IrisFilter: bus.IrisFilter{Species: []string{"rose"}}}, "species"},
		{"species injection", iris.RangeQuery{IrisFilter: bus.IrisFilter{Species: []string{inj}}}, "species"},
		{"unknown lower column", iris.RangeQuery{IrisFilter: bus.IrisFilter{Lower: map[string]float64{"stem": 1}}}, "lower.stem"},
		{"upper column injection", iris.RangeQuery{IrisFilter: bus.IrisFilter{Upper: map[string]float64{col: 1}}}, "upper." + col},
		{"lower > upper", iris.RangeQuery{IrisFilter: bus.IrisFilter{Lower: map[string]float64{"sepal_length": 6}, Upper: map[string]float64{"sepal_length": 5}}}, "lower.sepal_length"},
		{"NaN bound", iris.RangeQuery{IrisFilter: bus.IrisFilter{Lower: map[string]float64{"sepal_width": math.NaN()}}}, "lower.sepal_width"},
		{"infinite bound", iris.RangeQuery{IrisFilter: bus.IrisFilter{Upper: map[string]float64{"petal_width": math.Inf(1)}}}, "upper.petal_width"},
		{"page < 1", iris.RangeQuery{Page: -1}, "page"},
		{"page too large", iris.RangeQuery{Page: math.MaxInt, PerPage: 1000}, "page"},
		{"per_page > 1000", iris.RangeQuery{PerPage: 1001}, "per_page"},
		{"per_page < 0", iris.RangeQuery{PerPage: -3}, "per_page"},
		{"unknown sort", iris.RangeQuery{Sort: "species"}, "sort"},
		{"sort injection", iris.RangeQuery{Sort: "sepal_length; DROP TABLE iris_measurements"}, "sort"},
	}
	for _, tc := range ranges {
		t.Run("range/"+tc.name, func(t *testing.T) {
			_, err := iris.Range(ctx, conn, tc.q)
			want422(t, err, tc.field)
		})
	}
	stats := []struct {
		name  string
		q     iris.StatsQuery
		field string
	}{
		{"empty func", iris.StatsQuery{}, "func"},
		{"unknown func", iris.StatsQuery{Func: "avg"}, "func"},
		{"func injection", iris.StatsQuery{Func: "mean(sepal_length)) FROM system.tables --"}, "func"},
		{"q > 1", iris.StatsQuery{Func: "quantile", Q: 1.5}, "q"},
		{"q < 0", iris.StatsQuery{Func: "quantile", Q: -0.1}, "q"},
		{"q NaN", iris.StatsQuery{Func: "quantile", Q: math.NaN()}, "q"},
		{"species injection", iris.StatsQuery{Func: "mean", IrisFilter: bus.IrisFilter{Species: []string{inj}}}, "species"},
		{"column injection", iris.StatsQuery{Func: "mean", IrisFilter: bus.IrisFilter{Lower: map[string]float64{col: 0}}}, "lower." + col},
		{"lower > upper", iris.StatsQuery{Func: "max", IrisFilter: bus.IrisFilter{Lower: map[string]float64{"petal_length": 2}, Upper: map[string]float64{"petal_length": 1}}}, "lower.petal_length"},
	}
	for _, tc := range stats {
		t.Run("stats/"+tc.name, func(t *testing.T) {
			_, err := iris.Stats(ctx, conn, tc.q)
			want422(t, err, tc.field)
		})
	}
	if n := countRows(t, conn); n != 150 {
		t.Fatalf("%d rows after the injection attempts, want 150", n)
	}
}

func want422(t *testing.T, err error, field string) {
	t.Helper()
	var be *bus.Error
	if !errors.As(err, &be) || be.Code != http.StatusUnprocessableEntity {
		t.Fatalf("err = %v, want a 422 *bus.Error", err)
	}
	for _, d := range be.Details {
		if strings.HasPrefix(d, field+":") {
			return
		}
	}
	t.Fatalf("details %q name no %q", be.Details, field)
}
