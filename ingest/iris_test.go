package ingest_test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/analytics"
	"github.com/gradeline/gradeline/analytics/localch"
	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
)

var (
	analyticsOnce serviceOnce
	// analyticsCH is the HTTP interface of the tests' ClickHouse engine.
	analyticsCH string
)

// needAnalytics starts the ClickHouse engine and the real analytics
// service once for the test binary.
func needAnalytics(t *testing.T) {
	t.Helper()
	analyticsOnce.once.Do(func() {
		launcher := os.Getenv("GRADELINE_CHDB_LAUNCHER")
		if launcher == "" {
			analyticsOnce.err = fmt.Errorf("GRADELINE_CHDB_LAUNCHER is not set: run `make install` (or `make test`, which sets it)")
			return
		}
		ch, err := localch.Start(context.Background(), localch.Options{Dir: filepath.Join(testDir, "clickhouse"), Launcher: launcher})
		if err != nil {
			analyticsOnce.err = fmt.Errorf("ClickHouse engine: %v (run `make install`)", err)
			return
		}
		stopServices = append(stopServices, func() { _ = ch.Close() })
		analyticsCH = ch.HTTPURL()
		analyticsOnce.err = startService("analytics", func(ctx context.Context) error {
			return analytics.Run(ctx, analytics.Config{NATSURL: natsURL, ClickHouseDSN: ch.DSN(), Logger: quiet, Registerer: prometheus.NewRegistry()})
		}, bus.SvcIrisStats, bus.IrisStatsQuery{Func: "count"})
	})
	if analyticsOnce.err != nil {
		t.Fatal(analyticsOnce.err)
	}
}

// canonicalIris reads scikit-learn's iris.csv, the reference copy.
func canonicalIris(t *testing.T) []bus.IrisRow {
	t.Helper()
	dir := os.Getenv("GRADELINE_DATASETS_DIR")
	if dir == "" {
		t.Fatal("GRADELINE_DATASETS_DIR is not set: run `make install`")
	}
	f, err := os.Open(filepath.Join(dir, "sklearn", "iris.csv"))
	if err != nil {
		t.Fatalf("%v: run `make install`", err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var rows []bus.IrisRow
	for _, r := range recs[1:] {
		v := make([]float64, 4)
		for i := range v {
			v[i], _ = strconv.ParseFloat(r[i], 64)
		}
		k, _ := strconv.Atoi(r[4])
		rows = append(rows, bus.IrisRow{SepalLength: v[0], SepalWidth: v[1], PetalLength: v[2], PetalWidth: v[3], Species: bus.IrisSpecies[k]})
	}
	if len(rows) != 150 {
		t.Fatalf("%d rows", len(rows))
	}
	return rows
}

func col(r bus.IrisRow, c string) float64 {
	switch c {
	case "sepal_length":
		return r.SepalLength
	case "sepal_width":
		return r.SepalWidth
	case "petal_length":
		return r.PetalLength
	default:
		return r.PetalWidth
	}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func TestIrisQueriesEndToEnd(t *testing.T) {
	needAnalytics(t)
	rows := canonicalIris(t)
	s := startIngest(t)
	c, _ := s.newUser(t)

	// Mean per species, checked against the dataset.
	r := c.json("POST", "/api/v1/iris/stats/mean", `{}`)
	if r.Status != 200 {
		t.Fatalf("mean: %d %s", r.Status, r.Body)
	}
	data := r.JSON(t)["data"].([]any)
	if len(data) != 3 {
		t.Fatalf("mean rows %v", data)
	}
	for _, d := range data {
		m := d.(map[string]any)
		sp := m["label"].(string)
		for _, cn := range bus.IrisColumns {
			sum, n := 0.0, 0
			for _, row := range rows {
				if row.Species == sp {
					sum += col(row, cn)
					n++
				}
			}
			if got := m["mean_"+cn].(float64); !near(got, sum/float64(n)) {
				t.Errorf("%s mean_%s = %v, want %v", sp, cn, got, sum/float64(n))
			}
			if m["count"] != float64(n) {
				t.Errorf("%s count %v", sp, m["count"])
			}
		}
	}

	// The seed's /stats/mean/ with the seed's example body: a bare list.
	r = c.json("POST", "/stats/mean/", `{"species": ["setosa", "versicolor"], "lower": {"sepal_width": 3.0}, "upper": {"sepal_length": 6.1}}`)
	if r.Status != 200 {
		t.Fatalf("seed mean: %d %s", r.Status, r.Body)
	}
	var seedMeans []map[string]any
	mustUnmarshal(t, r.Body, &seedMeans)
	if len(seedMeans) != 2 {
		t.Fatalf("seed mean %s", r.Body)
	}
	for _, m := range seedMeans {
		sp := m["label"].(string)
		sum, n := 0.0, 0
		for _, row := range rows {
			if row.Species == sp && row.SepalWidth >= 3.0 && row.SepalLength <= 6.1 {
				sum += row.SepalLength
				n++
			}
		}
		if !near(m["mean_sepal_length"].(float64), sum/float64(n)) {
			t.Errorf("seed mean %s: %v want %v", sp, m["mean_sepal_length"], sum/float64(n))
		}
	}
	r = c.json("POST", "/stats/mean/", `{"species": ["setosa", "versicolor"]}`)
	mustUnmarshal(t, r.Body, &seedMeans)
	want := map[string]float64{"setosa": 5.006, "versicolor": 5.936}
	for _, m := range seedMeans {
		if !near(m["mean_sepal_length"].(float64), want[m["label"].(string)]) {
			t.Errorf("known mean %v", m)
		}
	}

	// The seed's /range/ with the seed's example body.
	r = c.json("POST", "/range/", `{"species": "setosa", "lower": {"sepal_length": 5.0, "sepal_width": 3.0}, "upper": {"sepal_length": 5.1}}`)
	if r.Status != 200 {
		t.Fatalf("seed range: %d %s", r.Status, r.Body)
	}
	var seedRows []map[string]any
	mustUnmarshal(t, r.Body, &seedRows)
	wantN := 0
	for _, row := range rows {
		if row.Species == "setosa" && row.SepalLength >= 5.0 && row.SepalLength <= 5.1 && row.SepalWidth >= 3.0 {
			wantN++
		}
	}
	if len(seedRows) != wantN || wantN == 0 {
		t.Fatalf("seed range %d rows, want %d", len(seedRows), wantN)
	}
	for _, sr := range seedRows {
		if sr["label"] != "setosa" || sr["sepal_length"].(float64) < 5.0 || sr["sepal_length"].(float64) > 5.1 {
			t.Fatalf("seed row %v", sr)
		}
	}

	// v1 range: pages walk all rows once, in a stable order.
	seen := map[string]bool{}
	total := -1
	for page := 1; ; page++ {
		r := c.json("POST", "/api/v1/iris/range", map[string]any{"species": []string{"versicolor", "virginica"}, "lower": map[string]float64{"petal_length": 4.0},
			"page": page, "per_page": 7, "sort": "petal_length"})
		if r.Status != 200 {
			t.Fatalf("range page %d: %d %s", page, r.Status, r.Body)
		}
		p := r.JSON(t)
		total = int(p["total"].(float64))
		d := p["data"].([]any)
		if p["page"] != float64(page) || p["per_page"] != float64(7) {
			t.Fatalf("page header %v", p)
		}
		for _, x := range d {
			m := x.(map[string]any)
			key := fmt.Sprint(m["sepal_length"], m["sepal_width"], m["petal_length"], m["petal_width"], m["species"], len(seen))
			seen[key] = true
			if m["petal_length"].(float64) < 4.0 {
				t.Fatalf("row below the bound %v", m)
			}
		}
		if len(d) < 7 {
			break
		}
	}
	wantN = 0
	for _, row := range rows {
		if row.Species != "setosa" && row.PetalLength >= 4.0 {
			wantN++
		}
	}
	if total != wantN || len(seen) != wantN {
		t.Fatalf("range total %d, walked %d, want %d", total, len(seen), wantN)
	}

	// Other functions use the function name as prefix.
	for _, fn := range []string{"min", "max", "median", "stddev", "count"} {
		r := c.json("POST", "/api/v1/iris/stats/"+fn, `{"species":"virginica"}`)
		if r.Status != 200 {
			t.Fatalf("%s: %d %s", fn, r.Status, r.Body)
		}
		d := r.JSON(t)["data"].([]any)
		if len(d) != 1 || d[0].(map[string]any)["label"] != "virginica" {
			t.Fatalf("%s: %s", fn, r.Body)
		}
		if _, ok := d[0].(map[string]any)[fn+"_petal_width"]; !ok {
			t.Fatalf("%s: no %s_petal_width in %s", fn, fn, r.Body)
		}
	}
	var minV, maxV = math.Inf(1), math.Inf(-1)
	for _, row := range rows {
		if row.Species == "virginica" {
			minV, maxV = math.Min(minV, row.SepalLength), math.Max(maxV, row.SepalLength)
		}
	}
	r = c.json("POST", "/api/v1/iris/stats/max", `{"species":"virginica"}`)
	if got := r.JSON(t)["data"].([]any)[0].(map[string]any)["max_sepal_length"]; got != maxV {
		t.Fatalf("max %v want %v", got, maxV)
	}
	r = c.json("POST", "/api/v1/iris/stats/quantile?q=0.9", `{"species":["setosa"]}`)
	if r.Status != 200 {
		t.Fatalf("quantile: %d %s", r.Status, r.Body)
	}
	q := r.JSON(t)["data"].([]any)[0].(map[string]any)
	if q["q"] != 0.9 || q["quantile_sepal_length"] == nil {
		t.Fatalf("quantile %v", q)
	}
}

// chMutate runs an ALTER on the tests' ClickHouse engine and returns once
// its mutation has finished.
func chMutate(t *testing.T, stmt string) {
	t.Helper()
	resp, err := http.Post(analyticsCH+"/?mutations_sync=2", "text/plain", strings.NewReader(stmt))
	if err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
	defer resp.Body.Close()
	if body, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d %s", stmt, resp.StatusCode, body)
	}
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := jsonUnmarshal(b, v); err != nil {
		t.Fatalf("%v: %s", err, truncate(b))
	}
}

// Measurements go through the event path into ClickHouse; a batch over
// bus.MaxIrisRows is split into several events.
func TestIrisMeasurementsReachAnalytics(t *testing.T) {
	needAnalytics(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	// Values no canonical row has, so the rows can be found again, and
	// removed after: TestIrisQueriesEndToEnd expects the canonical rows
	// alone, whatever order the tests run in and however often.
	base := 900 + float64(time.Now().UnixNano()%50)
	t.Cleanup(func() { chMutate(t, "ALTER TABLE "+schema.TableIris+" DELETE WHERE sepal_length >= 900") })
	n := bus.MaxIrisRows + 5
	var b strings.Builder
	b.WriteString(`{"source":"ingest-test","rows":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"sepal_length":%v,"sepal_width":%v,"petal_length":1.5,"petal_width":0.25,"species":"virginica"}`, base, float64(i%100)/10)
	}
	b.WriteString("]}")
	r := c.json("POST", "/api/v1/iris/measurements", b.String())
	if r.Status != http.StatusAccepted {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	acc := r.JSON(t)
	if acc["accepted"] != float64(n) || acc["events"] != float64(2) {
		t.Fatalf("accepted %v", acc)
	}
	eventually(t, "measurements in ClickHouse", 60*time.Second, func() bool {
		r := c.json("POST", "/api/v1/iris/range", map[string]any{"lower": map[string]float64{"sepal_length": base}, "upper": map[string]float64{"sepal_length": base}, "per_page": 1})
		if r.Status != 200 {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		return r.JSON(t)["total"] == float64(n)
	})
	// A bare array works too.
	r = c.json("POST", "/api/v1/iris/measurements", `[{"sepal_length":999,"sepal_width":3,"petal_length":1.4,"petal_width":0.2,"species":"setosa"}]`)
	if r.Status != 202 || r.JSON(t)["accepted"] != float64(1) {
		t.Fatalf("bare array: %d %s", r.Status, r.Body)
	}
	eventually(t, "the bare array's row in ClickHouse", 60*time.Second, func() bool {
		r := c.json("POST", "/api/v1/iris/range", map[string]any{"lower": map[string]float64{"sepal_length": 999}, "per_page": 1})
		return r.Status == 200 && r.JSON(t)["total"] == float64(1)
	})
}

func TestIrisBadInputs(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	for _, tc := range []struct {
		name, path, body string
		status           int
		detail           string
	}{
		{"unknown species", "/api/v1/iris/range", `{"species":"rose"}`, 422, "species"},
		{"species injection", "/api/v1/iris/range", `{"species":"setosa' OR 1=1 --"}`, 422, "species"},
		{"species array injection", "/api/v1/iris/stats/mean", `{"species":["setosa","x'); DROP TABLE iris; --"]}`, 422, "species"},
		{"species number", "/api/v1/iris/range", `{"species":5}`, 422, "species"},
		{"species object", "/api/v1/iris/range", `{"species":{"$ne":""}}`, 422, "species"},
		{"unknown column", "/api/v1/iris/range", `{"lower":{"petal_size":1}}`, 422, "lower.petal_size"},
		{"column injection", "/api/v1/iris/range", `{"upper":{"sepal_length) OR (1=1":1}}`, 422, "upper."},
		{"lower above upper", "/api/v1/iris/range", `{"lower":{"sepal_length":6},"upper":{"sepal_length":5}}`, 422, "lower.sepal_length"},
		{"non-numeric bound", "/api/v1/iris/range", `{"lower":{"sepal_length":"abc"}}`, 422, "lower.sepal_length: must be a number"},
		{"numeric string bound", "/api/v1/iris/stats/mean", `{"upper":{"petal_width":"2"}}`, 422, "upper.petal_width"},
		{"null-ish bound", "/api/v1/iris/range", `{"lower":{"sepal_width":true}}`, 422, "lower.sepal_width"},
		{"bounds not an object", "/api/v1/iris/range", `{"lower":[1,2]}`, 422, "lower"},
		{"page zero", "/api/v1/iris/range", `{"page":0}`, 422, "page"},
		{"page negative", "/api/v1/iris/range", `{"page":-3}`, 422, "page"},
		{"page fractional", "/api/v1/iris/range", `{"page":1.5}`, 422, "page"},
		{"page string", "/api/v1/iris/range", `{"page":"1"}`, 422, "page"},
		{"per_page too big", "/api/v1/iris/range", `{"per_page":1001}`, 422, "per_page"},
		{"per_page zero", "/api/v1/iris/range", `{"per_page":0}`, 422, "per_page"},
		{"every offending field at once", "/api/v1/iris/range", `{"species":"rose","lower":{"petal_size":1},"per_page":5000}`, 422, "lower.petal_size: unknown column (known: [sepal_length sepal_width petal_length petal_width]) | per_page: must be between 1 and 1000 | species: unknown"},
		{"pagination named beside the filter", "/api/v1/iris/range", `{"species":"rose","per_page":5000}`, 422, "per_page: must be between"},
		{"sort injection", "/api/v1/iris/range", `{"sort":"sepal_length; DROP TABLE iris"}`, 422, "sort"},
		{"unknown field", "/api/v1/iris/range", `{"specie":"setosa"}`, 422, "specie: unknown field"},
		{"stats take no page", "/api/v1/iris/stats/mean", `{"page":1}`, 422, "page: unknown field"},
		{"malformed JSON", "/api/v1/iris/range", `{"species":`, 400, "malformed"},
		{"body not an object", "/api/v1/iris/range", `["setosa"]`, 422, "body"},
		{"unknown function", "/api/v1/iris/stats/variance", `{}`, 422, "fn"},
		{"function injection", "/api/v1/iris/stats/sum%28x%29", `{}`, 422, "fn"},
		{"quantile without q", "/api/v1/iris/stats/quantile", `{}`, 422, "q"},
		{"quantile q out of range", "/api/v1/iris/stats/quantile?q=1.5", `{}`, 422, "q"},
		{"quantile q not a number", "/api/v1/iris/stats/quantile?q=abc", `{}`, 422, "q"},
		{"q on another function", "/api/v1/iris/stats/max?q=0.5", `{}`, 422, "q"},
		{"seed range bad bound", "/range/", `{"lower":{"sepal_length":"five"}}`, 422, "lower.sepal_length"},
		{"seed mean unknown species", "/stats/mean/", `{"species":"Iris-setosa"}`, 422, "species"},
		{"measurements empty", "/api/v1/iris/measurements", `{"rows":[]}`, 422, "rows"},
		{"measurements missing rows", "/api/v1/iris/measurements", `{}`, 422, "rows: required"},
		{"measurement missing field", "/api/v1/iris/measurements", `{"rows":[{"sepal_length":5,"sepal_width":3,"petal_length":1,"petal_width":0.2}]}`, 422, "rows[0].species: required"},
		{"measurement string value", "/api/v1/iris/measurements", `{"rows":[{"sepal_length":"5.1","sepal_width":3,"petal_length":1,"petal_width":0.2,"species":"setosa"}]}`, 422, "rows[0].sepal_length"},
		{"measurement negative", "/api/v1/iris/measurements", `{"rows":[{"sepal_length":-5,"sepal_width":3,"petal_length":1,"petal_width":0.2,"species":"setosa"}]}`, 422, "rows[0]"},
		{"measurement unknown species", "/api/v1/iris/measurements", `{"rows":[{"sepal_length":5,"sepal_width":3,"petal_length":1,"petal_width":0.2,"species":"setosa'--"}]}`, 422, "rows[0]"},
		{"measurement unknown field", "/api/v1/iris/measurements", `{"rows":[{"sepal_length":5,"sepal_width":3,"petal_length":1,"petal_width":0.2,"species":"setosa","id":"x"}]}`, 422, "rows[0].id"},
		{"measurement second row bad", "/api/v1/iris/measurements", `[{"sepal_length":5,"sepal_width":3,"petal_length":1,"petal_width":0.2,"species":"setosa"},{"sepal_length":1e9,"sepal_width":3,"petal_length":1,"petal_width":0.2,"species":"setosa"}]`, 422, "rows[1]"},
		{"measurement source injection", "/api/v1/iris/measurements", `{"source":"x'); DROP","rows":[{"sepal_length":5,"sepal_width":3,"petal_length":1,"petal_width":0.2,"species":"setosa"}]}`, 422, "source"},
		{"measurements malformed", "/api/v1/iris/measurements", `{"rows":[`, 400, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := expectError(t, c.json("POST", tc.path, tc.body), tc.status)
			if !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
	expectError(t, c.do("POST", "/api/v1/iris/range", strings.NewReader("species=setosa"), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 415)

	for _, tc := range []struct {
		name, query, detail string
	}{
		{"bad from", "from=yesterday", "from"},
		{"bad to", "to=2026-13-45T00:00:00Z", "to"},
		{"bad bucket", "bucket=hourly", "bucket"},
		{"zero bucket", "bucket=0s", "bucket"},
		{"negative bucket", "bucket=-1h", "bucket"},
		{"from after to", "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"},
		{"too many buckets", "from=2000-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&bucket=1s", "bucket"},
	} {
		t.Run("stats "+tc.name, func(t *testing.T) {
			for _, p := range []string{"/api/v1/stats/grades?", "/api/v1/stats/annotations?"} {
				if got := expectError(t, c.do("GET", p+tc.query, nil, nil), 422); !strings.Contains(got, tc.detail) {
					t.Fatalf("%s%s: %q lacks %q", p, tc.query, got, tc.detail)
				}
			}
		})
	}
	expectError(t, c.do("GET", "/api/v1/stats/grades?model=a%27b", nil, nil), 422)
}

func TestStatsEndToEnd(t *testing.T) {
	needAnalytics(t)
	s := startIngest(t)
	c, name := s.newUser(t)
	for i := 0; i < 3; i++ {
		if r := c.json("POST", "/api/v1/annotations", `{"annotation":{"i":1}}`); r.Status != 202 {
			t.Fatal(r.Status)
		}
	}
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	to := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	eventually(t, "annotation counts", 60*time.Second, func() bool {
		r := c.do("GET", "/api/v1/stats/annotations?from="+from+"&to="+to+"&bucket=5m", nil, nil)
		if r.Status != 200 {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		var count float64
		for _, x := range r.JSON(t)["data"].([]any) {
			if m := x.(map[string]any); m["author"] == name {
				count += m["count"].(float64)
			}
		}
		return count == 3
	})
	r := c.do("GET", "/api/v1/stats/grades?model=fashion&bucket=1h", nil, nil)
	if r.Status != 200 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	b := r.JSON(t)
	if _, ok := b["data"].([]any); !ok || b["bucket"] != "1h0m0s" || b["model"] != "fashion" {
		t.Fatalf("grade stats %v", b)
	}
	_ = sort.Strings
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
