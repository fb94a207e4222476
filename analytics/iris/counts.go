package iris

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// MaxCountedValues bounds the distinct (species, value) pairs of one column
// that Stats reads to compute a statistic from counts. Past it the counts
// are about as many as the rows, so ClickHouse stops the counts query
// early (TOO_MANY_ROWS) and Stats runs the direct query instead. The bound
// holds per aggregating thread, which is enough to stop early.
const MaxCountedValues = 10_000

// maxCountedValues is MaxCountedValues; the tests lower it.
var maxCountedValues = MaxCountedValues

// codeTooManyRows is ClickHouse's TOO_MANY_ROWS, raised by
// max_rows_to_group_by with group_by_overflow_mode = 'throw'.
const codeTooManyRows = 158

// countsFallbacks counts the counts queries that hit MaxCountedValues
// (read by the tests, which check which path answered).
var countsFallbacks atomic.Int64

// CountsStatement returns the query that Stats runs first: per column (0..3
// in Columns order), species and value, the number of matching rows.
// ClickHouse answers it from the counts projection
// (schema.ProjectionIrisCounts), whose keys every filter is a condition
// on: a row per distinct measurement instead of every row.
func CountsStatement(q StatsQuery) (Statement, error) {
	if err := NormalizeStats(&q); err != nil {
		return Statement{}, err
	}
	return countsStatement(q), nil
}

// countsStatement is CountsStatement of a query NormalizeStats passed.
func countsStatement(q StatsQuery) Statement {
	params := clickhouse.Parameters{}
	w := where(q.IrisFilter, params)
	parts := make([]string, len(Columns))
	for i, c := range Columns {
		col := columnSQL[c]
		parts[i] = fmt.Sprintf("SELECT toUInt8(%d), toString(species), %s, count() FROM %s%s GROUP BY species, %s",
			i, col, Table, w, col)
	}
	return Statement{
		SQL:    strings.Join(parts, " UNION ALL "),
		Params: params,
		Settings: clickhouse.Settings{
			"max_rows_to_group_by":   maxCountedValues,
			"group_by_overflow_mode": "throw",
		},
	}
}

// valueCount is one distinct value of a column and its number of rows.
type valueCount struct {
	v float64
	n uint64
}

// statsFromCounts runs st (countsStatement of q) and computes q's function
// of every column per species from the counts.
func statsFromCounts(ctx context.Context, conn driver.Conn, q StatsQuery, st Statement) ([]Stat, error) {
	rows, err := conn.Query(st.Context(ctx), st.SQL)
	if err != nil {
		return nil, fmt.Errorf("iris: stats from counts: %w", err)
	}
	defer rows.Close()
	bySpecies := map[string]*[4][]valueCount{}
	for rows.Next() {
		var (
			col     uint8
			species string
			vc      valueCount
		)
		if err := rows.Scan(&col, &species, &vc.v, &vc.n); err != nil {
			return nil, fmt.Errorf("iris: stats from counts: %w", err)
		}
		cols := bySpecies[species]
		if cols == nil {
			cols = new([4][]valueCount)
			bySpecies[species] = cols
		}
		cols[col] = append(cols[col], vc)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("iris: stats from counts: %w", err)
	}
	species := make([]string, 0, len(bySpecies))
	for s := range bySpecies {
		species = append(species, s)
	}
	slices.Sort(species) // ORDER BY species of the direct query
	out := make([]Stat, 0, len(species))
	for _, sp := range species {
		cols := bySpecies[sp]
		s := Stat{Label: sp, Values: make(map[string]float64, len(Columns))}
		for _, vc := range cols[0] {
			s.Count += vc.n
		}
		for i, c := range Columns {
			vcs := cols[i]
			slices.SortFunc(vcs, func(a, b valueCount) int { return cmp.Compare(a.v, b.v) })
			// JSON has no NaN: an undefined value is left out.
			if v := fromCounts(q, vcs); !math.IsNaN(v) && !math.IsInf(v, 0) {
				s.Values[c] = Round(v)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// fromCounts returns q's function of the values that vcs (sorted by value,
// at least one) counts, as the direct query's aggregate would.
func fromCounts(q StatsQuery, vcs []valueCount) float64 {
	var n, sum float64
	for _, vc := range vcs {
		n += float64(vc.n)
		sum += vc.v * float64(vc.n)
	}
	mean := sum / n
	switch q.Func {
	case "count":
		return n
	case "mean":
		return mean
	case "min":
		return vcs[0].v
	case "max":
		return vcs[len(vcs)-1].v
	case "stddev":
		// Two passes over the distinct values: as stable as
		// stddevSampStable, and undefined (NaN) for one row.
		if n < 2 {
			return math.NaN()
		}
		var ss float64
		for _, vc := range vcs {
			d := vc.v - mean
			ss += float64(vc.n) * float64(d*d)
		}
		return math.Sqrt(ss / (n - 1))
	case "median":
		return quantileFromCounts(vcs, 0.5)
	case "quantile":
		return quantileFromCounts(vcs, q.Q)
	}
	panic("iris: unvalidated function " + q.Func)
}

// quantileFromCounts returns quantileExactInclusive(level) of the values
// that vcs (sorted by value) count, with ClickHouse's arithmetic: h =
// level*(n-1)+1, the values x at ranks floor(h)-1 and floor(h) (0-based),
// x[k-1] + (h-k)*(x[k]-x[k-1]). NaN when vcs counts nothing.
func quantileFromCounts(vcs []valueCount, level float64) float64 {
	var total uint64
	for _, vc := range vcs {
		total += vc.n
	}
	if total == 0 {
		return math.NaN()
	}
	h := level*float64(total-1) + 1
	k := uint64(h)
	if k >= total {
		return vcs[len(vcs)-1].v
	}
	if k < 1 {
		return vcs[0].v
	}
	lo, hi := rankValue(vcs, k-1), rankValue(vcs, k)
	// The explicit conversion rounds the product, as ClickHouse does: no
	// fused multiply-add may change the last bit.
	return lo + float64((h-float64(k))*(hi-lo))
}

// rankValue returns the value at 0-based rank r of the sorted values that
// vcs counts.
func rankValue(vcs []valueCount, r uint64) float64 {
	for _, vc := range vcs {
		if r < vc.n {
			return vc.v
		}
		r -= vc.n
	}
	return vcs[len(vcs)-1].v
}
