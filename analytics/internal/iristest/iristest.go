// Package iristest computes the expected answers of iris queries directly
// from the reference CSV, independently of the SQL under test.
package iristest

import (
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

// Load parses iris.csv (header "150,4,setosa,versicolor,virginica") into
// rows in file order.
func Load(t testing.TB, path string) []bus.IrisRow {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	header := strings.Split(strings.TrimSpace(lines[0]), ",")
	names := header[2:]
	var rows []bus.IrisRow
	for _, l := range lines[1:] {
		f := strings.Split(strings.TrimSpace(l), ",")
		var v [4]float64
		for i := range v {
			if v[i], err = strconv.ParseFloat(f[i], 64); err != nil {
				t.Fatal(err)
			}
		}
		c, _ := strconv.Atoi(f[4])
		rows = append(rows, bus.IrisRow{SepalLength: v[0], SepalWidth: v[1], PetalLength: v[2], PetalWidth: v[3], Species: names[c]})
	}
	if n, _ := strconv.Atoi(header[0]); n != len(rows) || n != 150 {
		t.Fatalf("iris.csv: header %s, %d rows", header[0], len(rows))
	}
	return rows
}

// Value returns the named column of r.
func Value(r bus.IrisRow, col string) float64 {
	switch col {
	case "sepal_length":
		return r.SepalLength
	case "sepal_width":
		return r.SepalWidth
	case "petal_length":
		return r.PetalLength
	case "petal_width":
		return r.PetalWidth
	}
	panic("unknown column " + col)
}

// Match reports whether r passes the filter (inclusive bounds).
func Match(r bus.IrisRow, f bus.IrisFilter) bool {
	if len(f.Species) > 0 && !slices.Contains(f.Species, r.Species) {
		return false
	}
	for c, lo := range f.Lower {
		if Value(r, c) < lo {
			return false
		}
	}
	for c, hi := range f.Upper {
		if Value(r, c) > hi {
			return false
		}
	}
	return true
}

// Range returns the matching rows ordered by sort (stable on file order,
// which is the row-id order of the canonical rows).
func Range(rows []bus.IrisRow, f bus.IrisFilter, sortCol string) []bus.IrisRow {
	var out []bus.IrisRow
	for _, r := range rows {
		if Match(r, f) {
			out = append(out, r)
		}
	}
	if sortCol != "" {
		sort.SliceStable(out, func(i, j int) bool { return Value(out[i], sortCol) < Value(out[j], sortCol) })
	}
	return out
}

// Stats returns per species the function of every column over the matching
// rows, and the counts.
func Stats(rows []bus.IrisRow, f bus.IrisFilter, fn string, q float64) (map[string]map[string]float64, map[string]uint64) {
	groups := map[string][]bus.IrisRow{}
	for _, r := range rows {
		if Match(r, f) {
			groups[r.Species] = append(groups[r.Species], r)
		}
	}
	vals := map[string]map[string]float64{}
	counts := map[string]uint64{}
	for sp, g := range groups {
		counts[sp] = uint64(len(g))
		vals[sp] = map[string]float64{}
		for _, c := range bus.IrisColumns {
			xs := make([]float64, len(g))
			for i, r := range g {
				xs[i] = Value(r, c)
			}
			v := apply(fn, q, xs)
			if !math.IsNaN(v) {
				vals[sp][c] = v
			}
		}
	}
	return vals, counts
}

func apply(fn string, q float64, xs []float64) float64 {
	n := float64(len(xs))
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	mean := sum / n
	switch fn {
	case "mean":
		return mean
	case "min":
		return slices.Min(xs)
	case "max":
		return slices.Max(xs)
	case "count":
		return n
	case "stddev":
		if len(xs) < 2 {
			return math.NaN()
		}
		ss := 0.0
		for _, x := range xs {
			ss += (x - mean) * (x - mean)
		}
		return math.Sqrt(ss / (n - 1))
	case "median":
		return Quantile(xs, 0.5)
	case "quantile":
		return Quantile(xs, q)
	}
	panic("unknown func " + fn)
}

// Quantile is the linear interpolation between closest ranks (R-7, numpy's
// default).
func Quantile(xs []float64, q float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	h := float64(len(s)-1) * q
	lo := math.Floor(h)
	i := int(lo)
	if i+1 >= len(s) {
		return s[len(s)-1]
	}
	return s[i] + (h-lo)*(s[i+1]-s[i])
}

// Close reports whether a and b agree to 1e-9 relative.
func Close(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*math.Max(1, math.Max(math.Abs(a), math.Abs(b)))
}
