package schema

import "strings"

// Projections of the iris table (migration 3). They live inside each part
// of the table, so they hold exactly the rows the part holds: a redelivery
// dropped by insert deduplication never reaches them, and duplicates that
// slipped past the window are in the table and its projections alike until
// a merge collapses them, when the merged part's projections are rebuilt
// (deduplicate_merge_projection_mode = 'rebuild'). ClickHouse reads a
// projection instead of the rows when it can answer a query from it, with
// the same result. (A materialized view would not do: on this engine a block
// dropped by insert deduplication still reaches the view, and duplicates
// collapsed by a merge of the table stay counted in the view's table.)
const (
	// ProjectionIrisCounts holds the number of rows per (species,
	// sepal_length, sepal_width, petal_length, petal_width): every filter
	// is a condition on its keys, so package iris computes every statistic
	// from it (exact median and quantiles included), and ClickHouse answers
	// the count of any range query from it. Measured values repeat (0.1 cm
	// steps), so it is a small fraction of the rows.
	ProjectionIrisCounts = "iris_counts"
	// ProjectionIrisOrderPrefix + column holds the rows ordered by (column,
	// event_id, row_idx): a range query sorted by the column reads in
	// order and stops after its page.
	ProjectionIrisOrderPrefix = "iris_by_"
)

// irisProjections returns the statements of migration 3. Its column list
// is its own (not bus.IrisColumns), so the released migration never changes.
func irisProjections() []string {
	cols := []string{"sepal_length", "sepal_width", "petal_length", "petal_width"}
	alter := "ALTER TABLE " + TableIris + " "
	// ReplacingMergeTree refuses projections unless told what merges do
	// to them; 'rebuild' keeps them equal to the deduplicated rows.
	stmts := []string{alter + "MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild'"}
	names := []string{ProjectionIrisCounts}
	keys := "species, " + strings.Join(cols, ", ")
	stmts = append(stmts, alter+"ADD PROJECTION IF NOT EXISTS "+ProjectionIrisCounts+
		" (SELECT "+keys+", count() GROUP BY "+keys+")")
	for _, c := range cols {
		names = append(names, ProjectionIrisOrderPrefix+c)
		stmts = append(stmts, alter+"ADD PROJECTION IF NOT EXISTS "+ProjectionIrisOrderPrefix+c+
			" (SELECT event_id, row_idx, species, sepal_length, sepal_width, petal_length, petal_width ORDER BY "+
			c+", event_id, row_idx)")
	}
	// Rows inserted before the migration get the projections by a
	// background mutation (asynchronous: the start does not wait for it);
	// until it finishes, queries read those parts' rows, with the same
	// results. Running it twice only builds the projections again.
	mat := make([]string, len(names))
	for i, n := range names {
		mat[i] = "MATERIALIZE PROJECTION " + n
	}
	return append(stmts, alter+strings.Join(mat, ", "))
}
