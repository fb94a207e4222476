package analytics

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/gradeline/gradeline/analytics/internal/chtest"
	"github.com/gradeline/gradeline/analytics/internal/iristest"
	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
)

// Statistics answered from the projections (migration 3) count every row
// once when events arrive through JetStream more than once: republished
// under another message id, and redelivered after a lost ack.
func TestIrisProjectionsCountRedeliveriesOnce(t *testing.T) {
	var failed atomic.Int32
	s := startStack(t, func(table string) error {
		if table == schema.TableIris && failed.Add(1) <= 2 {
			return errors.New("simulated lost ack")
		}
		return nil
	})
	rows := iristest.Load(t, chtest.IrisCSV(t)) // the canonical rows, provisioned by Run
	var evs []*bus.IrisMeasured
	for k := range 3 {
		var batch []bus.IrisRow
		for i := range 500 {
			j := k*500 + i
			batch = append(batch, bus.IrisRow{SepalLength: 4 + float64(j%37)/10, SepalWidth: 2 + float64(j%23)/10,
				PetalLength: 1 + float64(j%59)/10, PetalWidth: 0.1 + float64(j%24)/10, Species: bus.IrisSpecies[j%3]})
		}
		evs = append(evs, irisEvent(batch...))
		rows = append(rows, batch...)
	}
	for _, ev := range evs {
		s.publish(t, ev)
		s.publishDuplicate(t, ev)
	}
	s.waitAcked(t, bus.ConsumerAnalyticsIris)
	if failed.Load() < 2 {
		t.Fatalf("the simulated lost ack ran %d times", failed.Load())
	}
	ctx := context.Background()
	for _, f := range []bus.IrisFilter{{}, {Species: []string{"setosa", "virginica"}}} {
		for _, fn := range []struct {
			name string
			q    float64
		}{{"count", 0}, {"mean", 0}, {"stddev", 0}, {"min", 0}, {"max", 0}, {"median", 0}, {"quantile", 0.1}, {"quantile", 0.77}} {
			got, err := bus.Request[[]bus.IrisStat](ctx, s.nc, bus.SvcIrisStats, bus.IrisStatsQuery{IrisFilter: f, Func: fn.name, Q: fn.q})
			if err != nil {
				t.Fatal(err)
			}
			want, counts := iristest.Stats(rows, f, fn.name, fn.q)
			if len(got) != len(want) {
				t.Fatalf("%s %v: %d species, want %d", fn.name, f, len(got), len(want))
			}
			for _, st := range got {
				if st.Count != counts[st.Label] {
					t.Errorf("%s %v %s: count %d, want %d", fn.name, f, st.Label, st.Count, counts[st.Label])
				}
				for c, w := range want[st.Label] {
					if !iristest.Close(st.Values[c], w) {
						t.Errorf("%s %v %s %s = %v, want %v", fn.name, f, st.Label, c, st.Values[c], w)
					}
				}
			}
		}
	}
	// A sorted page read from the column order: the rows computed here.
	want := iristest.Range(rows, bus.IrisFilter{}, "sepal_width")
	p, err := bus.Request[bus.Page[bus.IrisRow]](ctx, s.nc, bus.SvcIrisRange, bus.IrisRangeQuery{Sort: "sepal_width", Page: 4, PerPage: 50})
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != int64(len(want)) || len(p.Data) != 50 {
		t.Fatalf("total %d, %d rows; want %d, 50", p.Total, len(p.Data), len(want))
	}
	for i, r := range p.Data {
		// Ties are broken by row id, which is not the order of rows here:
		// compare the sort column only.
		if r.SepalWidth != want[150+i].SepalWidth {
			t.Fatalf("row %d of page 4: sepal_width %v, want %v", i, r.SepalWidth, want[150+i].SepalWidth)
		}
	}
}
