package iris

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/csv"
	"fmt"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// canonicalCSV is scikit-learn's iris.csv (BSD-3-Clause): a header line
// "150,4,setosa,versicolor,virginica", then four measurements and a class
// index per line. It carries the corrections to two setosa rows that the
// original UCI file lacks.
//
//go:embed iris.csv
var canonicalCSV []byte

// CanonicalEventID is the fixed event id of the canonical dataset. It sorts
// before every UUIDv7, so the canonical rows come first in row-id order.
const CanonicalEventID = "00000000-0000-7000-8000-000000000150"

// CanonicalSource is the source recorded for the canonical rows.
const CanonicalSource = "scikit-learn iris.csv"

// Canonical returns the 150 rows of the canonical dataset, in file order
// (which is their row-id order once provisioned).
func Canonical() ([]Row, error) {
	r := csv.NewReader(bytes.NewReader(canonicalCSV))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("iris: canonical csv: %w", err)
	}
	if len(recs) < 1 || len(recs[0]) < 2 {
		return nil, fmt.Errorf("iris: canonical csv: no header")
	}
	n, err := strconv.Atoi(recs[0][0])
	if err != nil || n != len(recs)-1 {
		return nil, fmt.Errorf("iris: canonical csv: header says %q rows, file has %d", recs[0][0], len(recs)-1)
	}
	names := recs[0][2:]
	rows := make([]Row, 0, n)
	for i, rec := range recs[1:] {
		if len(rec) != 5 {
			return nil, fmt.Errorf("iris: canonical csv line %d: %d fields", i+2, len(rec))
		}
		var v [4]float64
		for j := range v {
			if v[j], err = strconv.ParseFloat(rec[j], 64); err != nil {
				return nil, fmt.Errorf("iris: canonical csv line %d: %w", i+2, err)
			}
		}
		class, err := strconv.Atoi(rec[4])
		if err != nil || class < 0 || class >= len(names) {
			return nil, fmt.Errorf("iris: canonical csv line %d: bad class %q", i+2, rec[4])
		}
		row := Row{SepalLength: v[0], SepalWidth: v[1], PetalLength: v[2], PetalWidth: v[3], Species: names[class]}
		if err := row.Validate(); err != nil {
			return nil, fmt.Errorf("iris: canonical csv line %d: %w", i+2, err)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// Provision inserts the canonical dataset unless it is there already and
// reports whether it inserted. It is safe to call at every start and from
// several replicas at once: the fixed event id is also the insert's
// deduplication token.
func Provision(ctx context.Context, conn driver.Conn) (bool, error) {
	var n uint64
	st := Statement{
		SQL:    "SELECT count() FROM " + Table + " WHERE event_id = {id:String}",
		Params: clickhouse.Parameters{"id": CanonicalEventID},
	}
	if err := conn.QueryRow(st.Context(ctx), st.SQL).Scan(&n); err != nil {
		return false, fmt.Errorf("iris: provision: %w", err)
	}
	if n > 0 {
		return false, nil
	}
	rows, err := Canonical()
	if err != nil {
		return false, err
	}
	err = Insert(ctx, conn, Batch{EventID: CanonicalEventID, Source: CanonicalSource, Time: time.Unix(0, 0), Rows: rows})
	if err != nil {
		return false, fmt.Errorf("iris: provision: %w", err)
	}
	return true, nil
}
