// Package iris answers range and statistics queries over iris measurements
// stored in ClickHouse. It is a library: it needs only a clickhouse-go
// connection (driver.Conn), no NATS or HTTP. The analytics service answers
// the query subjects with exactly these functions, and the benchmark runs
// them directly to compare against the HTTP path.
//
// Semantics:
//   - a filter keeps rows whose species is one of Species (all when empty)
//     and, for every named column, Lower[c] <= value <= Upper[c]: both bounds
//     are inclusive;
//   - range results are ordered by the sort column (ascending), ties broken
//     by the row id (event id, row index), a total order: pages never
//     overlap or skip while no rows are added;
//   - stats are per species, ordered by species: mean, min, max, median,
//     stddev (the sample standard deviation, n-1), count, and quantile(q)
//     (exact, with linear interpolation between closest ranks, as numpy's
//     default; median is quantile(0.5)). Values are rounded to 12
//     significant digits (see Round). A value that is undefined (stddev of
//     a single row) is left out of Values.
//
// Every value reaches ClickHouse as a typed query parameter ({name:Type});
// column names come from a fixed whitelist, never from the request.
package iris

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
)

// The query and result types are the bus contract's, so a library user and
// the service speak the same language.
type (
	Filter     = bus.IrisFilter
	RangeQuery = bus.IrisRangeQuery
	StatsQuery = bus.IrisStatsQuery
	Row        = bus.IrisRow
	Stat       = bus.IrisStat
	Page       = bus.Page[bus.IrisRow]
)

// Columns are the measurement columns in table order.
var Columns = bus.IrisColumns

// Funcs are the statistics functions StatsQuery.Func may name.
var Funcs = bus.IrisStatsFuncs

// Table is the ClickHouse table of measurements (see package schema).
const Table = schema.TableIris

// Statement is a query, its parameters and the settings it needs (nil
// for most). Run it with conn.Query(st.Context(ctx), st.SQL).
type Statement struct {
	SQL      string
	Params   clickhouse.Parameters
	Settings clickhouse.Settings
}

// Context returns ctx carrying the statement's parameters and settings for
// clickhouse-go.
func (st Statement) Context(ctx context.Context) context.Context {
	opts := []clickhouse.QueryOption{clickhouse.WithParameters(st.Params)}
	if st.Settings != nil {
		opts = append(opts, clickhouse.WithSettings(st.Settings))
	}
	return clickhouse.Context(ctx, opts...)
}

// columnSQL maps an accepted column name to its identifier; lookups through
// it are what keeps request strings out of the SQL text.
var columnSQL = map[string]string{
	"sepal_length": "sepal_length",
	"sepal_width":  "sepal_width",
	"petal_length": "petal_length",
	"petal_width":  "petal_width",
}

func unprocessable(msg string, details []string) error {
	sort.Strings(details)
	return &bus.Error{Code: bus.CodeUnprocessable, Message: msg, Details: details}
}

// details returns the Details of a 422 *bus.Error, or nil.
func details(err error) []string {
	if be, ok := err.(*bus.Error); ok && be.Code == bus.CodeUnprocessable {
		return be.Details
	}
	return nil
}

// NormalizeRange applies the defaults (bus.PageDefaults) and validates q.
// The error is a *bus.Error 422 that names every offending field.
func NormalizeRange(q *RangeQuery) error {
	q.Page, q.PerPage = bus.PageDefaults(q.Page, q.PerPage)
	var d []string
	d = append(d, details(q.IrisFilter.Validate())...)
	d = append(d, details(bus.ValidatePage(q.Page, q.PerPage))...)
	if q.Sort != "" && columnSQL[q.Sort] == "" {
		d = append(d, fmt.Sprintf("sort: unknown column %q (known: %v)", q.Sort, Columns))
	}
	if q.Page >= 1 && q.PerPage >= 1 && uint64(q.Page-1) > math.MaxInt64/uint64(q.PerPage) {
		d = append(d, "page: too large")
	}
	if len(d) > 0 {
		return unprocessable("invalid iris range query", d)
	}
	return nil
}

// NormalizeStats validates q: the filter, a known Func, and for quantile a
// Q in [0, 1]. The error is a *bus.Error 422 naming every offending field.
func NormalizeStats(q *StatsQuery) error {
	var d []string
	d = append(d, details(q.IrisFilter.Validate())...)
	if !slices.Contains(Funcs, q.Func) {
		d = append(d, fmt.Sprintf("func: unknown function %q (known: %v)", q.Func, Funcs))
	}
	if q.Func == "quantile" && !(q.Q >= 0 && q.Q <= 1) { // also rejects NaN
		d = append(d, fmt.Sprintf("q: %v is not in [0, 1]", q.Q))
	}
	if len(d) > 0 {
		return unprocessable("invalid iris stats query", d)
	}
	return nil
}

// where renders the filter as a WHERE clause with parameters. f must be valid.
func where(f Filter, params clickhouse.Parameters) string {
	var conds []string
	if len(f.Species) > 0 {
		names := make([]string, len(f.Species))
		for i, s := range f.Species {
			p := "s" + strconv.Itoa(i)
			params[p] = s
			names[i] = "{" + p + ":String}"
		}
		conds = append(conds, "species IN ("+strings.Join(names, ", ")+")")
	}
	for _, c := range Columns { // fixed order: deterministic SQL
		col := columnSQL[c]
		if v, ok := f.Lower[c]; ok {
			params["lo_"+col] = formatFloat(v)
			conds = append(conds, col+" >= {lo_"+col+":Float64}")
		}
		if v, ok := f.Upper[c]; ok {
			params["hi_"+col] = formatFloat(v)
			conds = append(conds, col+" <= {hi_"+col+":Float64}")
		}
	}
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

func formatFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// RangeStatements returns the page query and the count query of a range
// query (normalized first). When the filter bounds no column other than
// the sort column, the page reads in the sort order (see OrderedPage);
// otherwise which plan is cheaper depends on how many rows match, and
// Range decides with the count.
func RangeStatements(q RangeQuery) (page, count Statement, err error) {
	if err := NormalizeRange(&q); err != nil {
		return Statement{}, Statement{}, err
	}
	page, count = rangeStatements(q)
	if !boundsOtherColumns(q) {
		page = OrderedPage(page, q)
	}
	return page, count, nil
}

// rangeStatements is RangeStatements of a query NormalizeRange passed,
// with the page left to ClickHouse's choice of projection.
func rangeStatements(q RangeQuery) (page, count Statement) {
	params := clickhouse.Parameters{}
	w := where(q.IrisFilter, params)
	order := "event_id, row_idx"
	if q.Sort != "" {
		order = columnSQL[q.Sort] + ", " + order
	}
	params["limit"] = strconv.Itoa(q.PerPage)
	params["offset"] = strconv.FormatUint(uint64(q.Page-1)*uint64(q.PerPage), 10)
	page = Statement{
		SQL: "SELECT sepal_length, sepal_width, petal_length, petal_width, species FROM " + Table + w +
			" ORDER BY " + order + " LIMIT {limit:UInt64} OFFSET {offset:UInt64}",
		Params: params,
	}
	count = Statement{SQL: "SELECT count() FROM " + Table + w, Params: params}
	return page, count
}

// OrderedPage returns page (a page query of q) set to read rows in q's
// order and stop after the page: from the projection ordered by the sort
// column (schema.ProjectionIrisOrderPrefix), or for row-id order from the
// table itself. ClickHouse alone picks the projection with the fewest
// granules to read, which for a filter bounding another column is that
// column's order: every matching row is then read and sorted.
func OrderedPage(page Statement, q RangeQuery) Statement {
	if q.Sort != "" {
		page.Settings = clickhouse.Settings{"preferred_optimize_projection_name": schema.ProjectionIrisOrderPrefix + columnSQL[q.Sort]}
	} else {
		page.Settings = clickhouse.Settings{"optimize_use_projections": 0}
	}
	return page
}

// boundsOtherColumns reports whether q's filter bounds a column other than
// its sort column.
func boundsOtherColumns(q RangeQuery) bool {
	for _, m := range []map[string]float64{q.Lower, q.Upper} {
		for c := range m {
			if c != q.Sort {
				return true
			}
		}
	}
	return false
}

// readsInOrder reports whether reading q's page in order is the cheaper
// plan when matching of the table's all rows pass the filter: in order,
// about
// (offset+limit)*all/matching rows are read before the page is full; the
// other plan reads at least every matching row and sorts them.
func readsInOrder(q RangeQuery, matching, all uint64) bool {
	end := float64(q.Page) * float64(q.PerPage)
	return matching > 0 && end*float64(all) < float64(matching)*float64(matching)
}

// Range returns one page of rows matching q and the total number of
// matching rows. An invalid q gives a *bus.Error 422.
func Range(ctx context.Context, conn driver.Conn, q RangeQuery) (Page, error) {
	// Validated once, here: the statements are built from the result.
	if err := NormalizeRange(&q); err != nil {
		return Page{}, err
	}
	pageSt, countSt := rangeStatements(q)
	out := Page{Page: q.Page, PerPage: q.PerPage}
	var total uint64
	var err error
	if boundsOtherColumns(q) {
		// Count first (a projection answers it, or an index range of
		// one), then read the page the cheaper way.
		var all uint64
		allErr := make(chan error, 1)
		go func() { allErr <- conn.QueryRow(ctx, "SELECT count() FROM "+Table).Scan(&all) }()
		err = conn.QueryRow(countSt.Context(ctx), countSt.SQL).Scan(&total)
		if aerr := <-allErr; err == nil {
			err = aerr
		}
		if err == nil {
			if readsInOrder(q, total, all) {
				pageSt = OrderedPage(pageSt, q)
			}
			out.Data, err = readPage(ctx, conn, pageSt, q.PerPage)
		}
	} else {
		// The count and the page are independent: run them side by side.
		countErr := make(chan error, 1)
		go func() {
			countErr <- conn.QueryRow(countSt.Context(ctx), countSt.SQL).Scan(&total)
		}()
		out.Data, err = readPage(ctx, conn, OrderedPage(pageSt, q), q.PerPage)
		if cerr := <-countErr; err == nil && cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		return Page{}, fmt.Errorf("iris: range: %w", err)
	}
	out.Total = int64(total)
	return out, nil
}

// readPage runs a page query.
func readPage(ctx context.Context, conn driver.Conn, st Statement, perPage int) ([]Row, error) {
	rows, err := conn.Query(st.Context(ctx), st.SQL)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make([]Row, 0, perPage)
	for rows.Next() {
		var r Row
		if err := rows.Scan(&r.SepalLength, &r.SepalWidth, &r.PetalLength, &r.PetalWidth, &r.Species); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// aggregate returns the SQL aggregate of fn applied to col.
func aggregate(fn, col string) string {
	switch fn {
	case "mean":
		return "avg(" + col + ")"
	case "min":
		return "min(" + col + ")"
	case "max":
		return "max(" + col + ")"
	case "median":
		return "quantileExactInclusive(0.5)(" + col + ")"
	case "stddev":
		return "stddevSampStable(" + col + ")"
	case "count":
		return "toFloat64(count(" + col + "))"
	case "quantile":
		return "quantileExactInclusive({q:Float64})(" + col + ")"
	}
	panic("iris: unvalidated function " + fn)
}

// StatsStatement returns the direct query of a stats query, which reads
// the rows: one row per species with the count and the function of each
// column, in Columns order. Stats runs it when the counts are too many.
func StatsStatement(q StatsQuery) (Statement, error) {
	if err := NormalizeStats(&q); err != nil {
		return Statement{}, err
	}
	return statsStatement(q), nil
}

// statsStatement is StatsStatement of a query NormalizeStats passed.
func statsStatement(q StatsQuery) Statement {
	params := clickhouse.Parameters{}
	if q.Func == "quantile" {
		params["q"] = formatFloat(q.Q)
	}
	aggs := make([]string, len(Columns))
	for i, c := range Columns {
		aggs[i] = aggregate(q.Func, columnSQL[c])
	}
	return Statement{
		SQL: "SELECT toString(species), count(), " + strings.Join(aggs, ", ") + " FROM " + Table +
			where(q.IrisFilter, params) + " GROUP BY species ORDER BY species",
		Params: params,
	}
}

// Stats returns the function of every column per species that has
// matching rows. An invalid q gives a *bus.Error 422.
//
// It computes the function from the per-value counts (CountsStatement)
// while the columns have few distinct values among the matching rows
// (MaxCountedValues), else runs the direct query (StatsStatement).
func Stats(ctx context.Context, conn driver.Conn, q StatsQuery) ([]Stat, error) {
	if err := NormalizeStats(&q); err != nil {
		return nil, err
	}
	out, err := statsFromCounts(ctx, conn, q, countsStatement(q))
	if err == nil {
		return out, nil
	}
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) || ex.Code != codeTooManyRows {
		return nil, err
	}
	countsFallbacks.Add(1) // too many distinct values: the direct query is cheaper
	st := statsStatement(q)
	rows, err := conn.Query(st.Context(ctx), st.SQL)
	if err != nil {
		return nil, fmt.Errorf("iris: stats: %w", err)
	}
	defer rows.Close()
	out = []Stat{}
	for rows.Next() {
		var s Stat
		v := make([]float64, len(Columns))
		if err := rows.Scan(&s.Label, &s.Count, &v[0], &v[1], &v[2], &v[3]); err != nil {
			return nil, fmt.Errorf("iris: stats: %w", err)
		}
		s.Values = make(map[string]float64, len(Columns))
		for i, c := range Columns {
			// JSON has no NaN: an undefined value is left out.
			if !math.IsNaN(v[i]) && !math.IsInf(v[i], 0) {
				s.Values[c] = Round(v[i])
			}
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("iris: stats: %w", err)
	}
	return out, nil
}

// SignificantDigits is the precision of statistics results.
const SignificantDigits = 12

// Round rounds v to SignificantDigits significant digits. It removes the
// noise of binary floating-point sums (5.005999999999999 is the mean
// 5.006) and stays far below the precision of any measurement.
func Round(v float64) float64 {
	r, err := strconv.ParseFloat(strconv.FormatFloat(v, 'g', SignificantDigits, 64), 64)
	if err != nil {
		return v
	}
	return r
}

// Batch is one event's measurements.
type Batch struct {
	EventID string
	Source  string
	Time    time.Time
	Rows    []Row
}

// Insert writes a batch as one INSERT whose deduplication token is the
// event id, so inserting the same event again adds no rows. Rows must be
// valid (bus.IrisRow.Validate).
func Insert(ctx context.Context, conn driver.Conn, b Batch) error {
	if b.EventID == "" || len(b.Rows) == 0 {
		return fmt.Errorf("iris: insert: event id and rows are required")
	}
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
		"insert_deduplicate":         1,
		"insert_deduplication_token": "iris:" + b.EventID,
	}))
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+Table+
		" (event_id, row_idx, species, sepal_length, sepal_width, petal_length, petal_width, source, measured_at)")
	if err != nil {
		return fmt.Errorf("iris: insert %s: %w", b.EventID, err)
	}
	defer batch.Close()
	n := len(b.Rows)
	var (
		ids     = make([]string, n)
		idx     = make([]uint32, n)
		species = make([]string, n)
		sl, sw  = make([]float64, n), make([]float64, n)
		pl, pw  = make([]float64, n), make([]float64, n)
		sources = make([]string, n)
		times   = make([]time.Time, n)
	)
	t := b.Time.UTC()
	for i, r := range b.Rows {
		ids[i], idx[i], species[i] = b.EventID, uint32(i), r.Species
		sl[i], sw[i], pl[i], pw[i] = r.SepalLength, r.SepalWidth, r.PetalLength, r.PetalWidth
		sources[i], times[i] = b.Source, t
	}
	for i, col := range []any{ids, idx, species, sl, sw, pl, pw, sources, times} {
		if err := batch.Column(i).Append(col); err != nil {
			return fmt.Errorf("iris: insert %s column %d: %w", b.EventID, i, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("iris: insert %s: %w", b.EventID, err)
	}
	return nil
}
