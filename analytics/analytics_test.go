package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gradeline/gradeline/analytics/internal/chtest"
	"github.com/gradeline/gradeline/analytics/internal/iristest"
	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/analytics/schema"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
)

func TestMain(m *testing.M) { chtest.Main(m) }

var quiet = slog.New(slog.DiscardHandler)

type stack struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	conn driver.Conn // the test's own connection to the service's database
	reg  *prometheus.Registry
}

// startStack runs analytics against a fresh embedded NATS and a fresh
// database on the shared engine, and waits until it answers queries.
func startStack(t testing.TB, afterInsert func(table string) error) *stack {
	t.Helper()
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), Setup: &bus.TopologyOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	dsn, conn := chtest.Database(t)
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{NATSURL: ns.ClientURL(), ClickHouseDSN: dsn, Logger: quiet, Registerer: reg,
			StartTimeout: 30 * time.Second, afterInsert: afterInsert})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(time.Minute): // a drain bounded by DrainTimeout must end well before
			t.Errorf("Run did not return a minute after its context was cancelled")
		}
	})
	nc, js, err := bus.Connect(context.Background(), ns.ClientURL(), "analytics-test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s := &stack{nc: nc, js: js, conn: conn, reg: reg}
	eventually(t, "the query service answers", func() bool {
		select {
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		default:
		}
		_, err := bus.Request[[]bus.IrisStat](context.Background(), nc, bus.SvcIrisStats, bus.IrisStatsQuery{Func: "count"})
		return err == nil
	})
	return s
}

// eventually polls cond; the bound is a liveness limit, not a timing check.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// publishDuplicate stores ev again under another Nats-Msg-Id, as a publisher
// retrying after the stream's duplicate window would.
func (s *stack) publishDuplicate(t testing.TB, ev bus.Event) {
	t.Helper()
	subject, err := bus.SubjectOf(ev.EventMeta().Type)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(ev)
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, ev.EventMeta().ID+"-again")
	if _, err := s.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

func (s *stack) publish(t testing.TB, evs ...bus.Event) uint64 {
	t.Helper()
	var last uint64
	for _, ev := range evs {
		ack, err := bus.Publish(context.Background(), s.js, ev)
		if err != nil {
			t.Fatal(err)
		}
		last = ack.Sequence
	}
	return last
}

func (s *stack) consumerInfo(t testing.TB, spec bus.ConsumerSpec) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := s.js.Consumer(context.Background(), spec.Stream, spec.Durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// waitAcked waits until the consumer acknowledged everything in its stream.
func (s *stack) waitAcked(t testing.TB, spec bus.ConsumerSpec) {
	t.Helper()
	st, err := s.js.Stream(context.Background(), spec.Stream)
	if err != nil {
		t.Fatal(err)
	}
	si, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	last := si.State.LastSeq
	eventually(t, spec.Durable+" acks everything", func() bool {
		info := s.consumerInfo(t, spec)
		return info.AckFloor.Stream >= last && info.NumAckPending == 0
	})
}

func (s *stack) count(t testing.TB, sql string, args ...any) uint64 {
	t.Helper()
	var n uint64
	if err := s.conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// injectedSource is stored verbatim: inserts never build SQL from data.
const injectedSource = `test'); DROP TABLE iris_measurements; --\`

func irisEvent(rows ...bus.IrisRow) *bus.IrisMeasured {
	return &bus.IrisMeasured{Meta: bus.NewMeta(bus.TypeIrisMeasured), Source: injectedSource, Rows: rows}
}

// Every query type over NATS against the canonical rows, checked against
// values computed from the reference CSV.
func TestQueriesOverNATS(t *testing.T) {
	s := startStack(t, nil)
	ctx := context.Background()
	rows := iristest.Load(t, chtest.IrisCSV(t))
	filter := bus.IrisFilter{Species: []string{"versicolor", "virginica"},
		Lower: map[string]float64{"sepal_length": 5.5}, Upper: map[string]float64{"sepal_length": 6.5, "petal_width": 2}}
	for _, f := range []bus.IrisFilter{{}, filter} {
		for _, fn := range []struct {
			name string
			q    float64
		}{{"mean", 0}, {"min", 0}, {"max", 0}, {"median", 0}, {"stddev", 0}, {"count", 0}, {"quantile", 0.9}} {
			got, err := bus.Request[[]bus.IrisStat](ctx, s.nc, bus.SvcIrisStats, bus.IrisStatsQuery{IrisFilter: f, Func: fn.name, Q: fn.q})
			if err != nil {
				t.Fatalf("%s: %v", fn.name, err)
			}
			want, counts := iristest.Stats(rows, f, fn.name, fn.q)
			if len(got) != len(want) {
				t.Fatalf("%s: %d species, want %d", fn.name, len(got), len(want))
			}
			for _, st := range got {
				if st.Count != counts[st.Label] {
					t.Errorf("%s %s: count %d, want %d", fn.name, st.Label, st.Count, counts[st.Label])
				}
				for c, w := range want[st.Label] {
					if !iristest.Close(st.Values[c], w) {
						t.Errorf("%s %s %s = %v, want %v", fn.name, st.Label, c, st.Values[c], w)
					}
				}
			}
		}
		// Walk every page: no overlap, no gap, the expected order.
		want := iristest.Range(rows, f, "petal_length")
		var got []bus.IrisRow
		for page := 1; ; page++ {
			p, err := bus.Request[bus.Page[bus.IrisRow]](ctx, s.nc, bus.SvcIrisRange,
				bus.IrisRangeQuery{IrisFilter: f, Sort: "petal_length", Page: page, PerPage: 11})
			if err != nil {
				t.Fatal(err)
			}
			if p.Total != int64(len(want)) {
				t.Fatalf("total %d, want %d", p.Total, len(want))
			}
			if len(p.Data) == 0 {
				break
			}
			got = append(got, p.Data...)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("pages walked %d rows that differ from the %d expected", len(got), len(want))
		}
	}
	means, err := bus.Request[[]bus.IrisStat](ctx, s.nc, bus.SvcIrisStats, bus.IrisStatsQuery{Func: "mean"})
	if err != nil || len(means) != 3 || means[0].Values["sepal_length"] != 5.006 || means[1].Values["sepal_length"] != 5.936 {
		t.Fatalf("means %+v, %v: want setosa 5.006, versicolor 5.936", means, err)
	}
}

// A redelivered or republished iris batch adds no rows: one copy is stored
// twice in the stream under another message id, and the first insert of
// every event "loses its ack" (the handler fails after the insert), so
// JetStream redelivers it.
func TestIrisMeasurementsIdempotent(t *testing.T) {
	var failed atomic.Int32
	s := startStack(t, func(table string) error {
		if table == schema.TableIris && failed.Add(1) <= 2 {
			return errors.New("simulated lost ack")
		}
		return nil
	})
	a := irisEvent(bus.IrisRow{SepalLength: 1, SepalWidth: 1, PetalLength: 1, PetalWidth: 1, Species: "setosa"},
		bus.IrisRow{SepalLength: 1, SepalWidth: 1, PetalLength: 1, PetalWidth: 1, Species: "setosa"})
	b := irisEvent(bus.IrisRow{SepalLength: 2, SepalWidth: 2, PetalLength: 2, PetalWidth: 2, Species: "virginica"})
	s.publish(t, a)
	s.publishDuplicate(t, a)
	s.publish(t, a) // within the duplicate window: dropped by the stream
	s.publish(t, b)
	s.publishDuplicate(t, b)
	s.waitAcked(t, bus.ConsumerAnalyticsIris)
	if failed.Load() < 2 {
		t.Fatalf("the simulated lost ack ran %d times", failed.Load())
	}
	if info := s.consumerInfo(t, bus.ConsumerAnalyticsIris); info.NumRedelivered == 0 && info.Delivered.Consumer <= 4 {
		t.Fatalf("no redelivery happened: %+v", info.Delivered)
	}
	if n := s.count(t, "SELECT count() FROM "+iris.Table+" WHERE event_id != ?", iris.CanonicalEventID); n != 3 {
		t.Fatalf("%d rows from 2 events of 3 rows delivered several times, want 3", n)
	}
	if n := s.count(t, "SELECT count() FROM "+iris.Table+" WHERE source = ?", injectedSource); n != 3 {
		t.Fatalf("%d rows with the source stored verbatim, want 3", n)
	}
	stats, err := bus.Request[[]bus.IrisStat](context.Background(), s.nc, bus.SvcIrisStats, bus.IrisStatsQuery{Func: "count"})
	if err != nil || len(stats) != 3 || stats[0].Count != 52 || stats[2].Count != 51 {
		t.Fatalf("counts %+v %v, want setosa 52 and virginica 51", stats, err)
	}
	if got := s.rowsInserted(t, schema.TableIris); got < 3 {
		t.Fatalf("rows_inserted_total{iris} = %v", got)
	}
}

// rowsInserted reads gradeline_analytics_rows_inserted_total{table}.
func (s *stack) rowsInserted(t *testing.T, table string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "gradeline_analytics_rows_inserted_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "table" && l.GetValue() == table {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no rows_inserted_total for %s", table)
	return 0
}

type gradeSample struct{ score, ms float64 }

type gradeKey struct {
	bucket       time.Time
	model, label string
}

// Grade and annotation statistics per bucket, checked against values
// computed here; redelivered and republished events count once.
func TestGradeAndAnnotationStats(t *testing.T) {
	var failed atomic.Int32
	s := startStack(t, func(table string) error {
		if (table == schema.TableGrades || table == schema.TableAnnotations) && failed.Add(1) <= 2 {
			return errors.New("simulated lost ack")
		}
		return nil
	})
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	var evs []bus.Event
	labels := []string{"cat", "dog", "bird"}
	want := map[gradeKey][]gradeSample{}
	for i := range 60 {
		model := []string{"fashion", "digits"}[i%2]
		label := labels[i%3]
		tm := base.Add(time.Duration(i) * 4 * time.Minute) // 60 events over 4 hours
		score, ms := 0.5+float64(i%7)/20, float64(3+i%11)+float64(i)/100
		ev := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: bus.NewID(), ImageID: "img", Owner: "u",
			Model: model, ModelVersion: "1", Label: label, Score: score, Scores: map[string]float64{label: score}, InferenceMS: ms, BatchSize: 4}
		ev.Time = tm
		evs = append(evs, ev)
		want[gradeKey{tm.Truncate(time.Hour), model, label}] = append(want[gradeKey{tm.Truncate(time.Hour), model, label}], gradeSample{score, ms})
	}
	fail := &bus.GradeFailed{Meta: bus.NewMeta(bus.TypeGradeFailed), GradeID: bus.NewID(), ImageID: "img", Owner: "u", Model: "fashion", Reason: "undecodable image"}
	fail.Time = base.Add(90 * time.Minute)
	evs = append(evs, fail)
	want[gradeKey{base.Add(time.Hour), "fashion", ""}] = []gradeSample{{0, 0}}
	// One grade outside the window.
	late := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: bus.NewID(), Model: "fashion", Label: "cat", Scores: map[string]float64{"cat": 1}}
	late.Time = base.Add(4 * time.Hour)
	evs = append(evs, late)
	// Another owner's grades in the same window: counted for them and for
	// all, never for "u".
	wantV := map[gradeKey][]gradeSample{}
	for i := range 4 {
		ev := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: bus.NewID(), ImageID: "img", Owner: "v",
			Model: "fashion", ModelVersion: "1", Label: "cat", Score: 1, Scores: map[string]float64{"cat": 1}, InferenceMS: 2, BatchSize: 1}
		ev.Time = base.Add(time.Duration(i) * 30 * time.Minute)
		evs = append(evs, ev)
		k := gradeKey{ev.Time.Truncate(time.Hour), "fashion", "cat"}
		wantV[k] = append(wantV[k], gradeSample{1, 2})
	}

	// Free-text fields travel as data, never as SQL.
	authors := []string{"ann", "bob'); DROP TABLE annotations; --"}
	wantAnn := map[string]uint64{}
	for i := range 10 {
		ev := &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), Author: authors[i%2], ImageID: "img", Annotation: json.RawMessage(`{"box":[1,2,3,4]}`)}
		ev.Time = base.Add(time.Duration(i) * 25 * time.Minute)
		evs = append(evs, ev)
		wantAnn[fmt.Sprintf("%s %s", ev.Time.Truncate(2*time.Hour).Format(time.RFC3339), ev.Author)]++
	}
	s.publish(t, evs...)
	s.publishDuplicate(t, evs[0])
	s.publishDuplicate(t, fail)
	s.publishDuplicate(t, evs[len(evs)-1])
	s.waitAcked(t, bus.ConsumerAnalyticsGrades)
	s.waitAcked(t, bus.ConsumerAnalyticsAnnotations)
	if n := s.count(t, "SELECT count() FROM "+schema.TableGrades+" FINAL"); n != 66 {
		t.Fatalf("%d grade rows, want 66", n)
	}
	if n := s.count(t, "SELECT count() FROM "+schema.TableAnnotations+" FINAL"); n != 10 {
		t.Fatalf("%d annotation rows, want 10", n)
	}

	got, err := bus.Request[[]bus.GradeStatsRow](ctx, s.nc, bus.SvcStatsGrades,
		bus.GradeStatsQuery{Owner: "u", From: base, To: base.Add(4 * time.Hour), Bucket: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d: %+v", len(got), len(want), got)
	}
	for i, r := range got {
		if i > 0 && r.Bucket.Before(got[i-1].Bucket) {
			t.Errorf("buckets out of order")
		}
		w, ok := want[gradeKey{r.Bucket, r.Model, r.Label}]
		if !ok {
			t.Fatalf("unexpected row %+v", r)
		}
		var scores, times []float64
		for _, smp := range w {
			scores = append(scores, smp.score)
			times = append(times, smp.ms)
		}
		mean := 0.0
		for _, x := range scores {
			mean += x / float64(len(scores))
		}
		if r.Count != uint64(len(w)) || !iristest.Close(r.MeanScore, mean) ||
			!iristest.Close(r.P50InferenceMS, iristest.Quantile(times, 0.5)) || !iristest.Close(r.P99InferenceMS, iristest.Quantile(times, 0.99)) {
			t.Errorf("row %+v, want count %d mean %v p50 %v p99 %v", r, len(w), mean, iristest.Quantile(times, 0.5), iristest.Quantile(times, 0.99))
		}
	}
	// The model filter; a model that does not exist, or an injection
	// attempt, matches nothing.
	for model, wantRows := range map[string]int{"digits": countModel(want, "digits"), "nope": 0,
		"fashion' OR '1'='1": 0, "fashion) OR 1=1 --": 0, `fashion\' OR 1=1`: 0} {
		rows, err := bus.Request[[]bus.GradeStatsRow](ctx, s.nc, bus.SvcStatsGrades,
			bus.GradeStatsQuery{Owner: "u", Model: model, From: base, To: base.Add(4 * time.Hour), Bucket: time.Hour})
		if err != nil || len(rows) != wantRows {
			t.Errorf("model %q: %d rows, %v; want %d", model, len(rows), err, wantRows)
		}
		for _, r := range rows {
			if r.Model != model {
				t.Errorf("model %q: row of %q", model, r.Model)
			}
		}
	}

	// The owner scope: each owner sees their own rows, All sees both, and
	// an owner that is an injection attempt matches nothing.
	for _, tc := range []struct {
		name string
		q    bus.GradeStatsQuery
		want map[gradeKey][]gradeSample
	}{
		{"owner v", bus.GradeStatsQuery{Owner: "v"}, wantV},
		{"all", bus.GradeStatsQuery{All: true}, mergeGrades(want, wantV)},
		{"owner injection", bus.GradeStatsQuery{Owner: "u' OR '1'='1"}, nil},
		{"owner nobody", bus.GradeStatsQuery{Owner: "nobody"}, nil},
	} {
		tc.q.From, tc.q.To, tc.q.Bucket = base, base.Add(4*time.Hour), time.Hour
		rows, err := bus.Request[[]bus.GradeStatsRow](ctx, s.nc, bus.SvcStatsGrades, tc.q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		gotCounts := map[gradeKey]int{}
		for _, r := range rows {
			gotCounts[gradeKey{r.Bucket, r.Model, r.Label}] = int(r.Count)
		}
		wantCounts := map[gradeKey]int{}
		for k, v := range tc.want {
			wantCounts[k] = len(v)
		}
		if fmt.Sprint(gotCounts) != fmt.Sprint(wantCounts) {
			t.Errorf("%s: counts %v, want %v", tc.name, gotCounts, wantCounts)
		}
	}

	for _, tc := range []struct {
		name string
		q    bus.AnnotationStatsQuery
		keep func(author string) bool
	}{
		{"all", bus.AnnotationStatsQuery{All: true}, func(string) bool { return true }},
		{"author ann", bus.AnnotationStatsQuery{Author: "ann"}, func(a string) bool { return a == "ann" }},
		// Free text as the scope is data too: it matches only itself.
		{"author injection", bus.AnnotationStatsQuery{Author: authors[1]}, func(a string) bool { return a == authors[1] }},
		{"author nobody", bus.AnnotationStatsQuery{Author: "nobody"}, func(string) bool { return false }},
	} {
		tc.q.From, tc.q.To, tc.q.Bucket = base, base.Add(6*time.Hour), 2*time.Hour
		ann, err := bus.Request[[]bus.AnnotationStatsRow](ctx, s.nc, bus.SvcStatsAnnotations, tc.q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		gotAnn := map[string]uint64{}
		for _, r := range ann {
			gotAnn[fmt.Sprintf("%s %s", r.Bucket.Format(time.RFC3339), r.Author)] = r.Count
		}
		wantScoped := map[string]uint64{}
		for k, n := range wantAnn {
			if _, author, _ := strings.Cut(k, " "); tc.keep(author) {
				wantScoped[k] = n
			}
		}
		if fmt.Sprint(gotAnn) != fmt.Sprint(wantScoped) {
			t.Errorf("%s: annotation counts %v, want %v", tc.name, gotAnn, wantScoped)
		}
	}
}

func mergeGrades(a, b map[gradeKey][]gradeSample) map[gradeKey][]gradeSample {
	out := map[gradeKey][]gradeSample{}
	for _, m := range []map[gradeKey][]gradeSample{a, b} {
		for k, v := range m {
			out[k] = append(out[k], v...)
		}
	}
	return out
}

func countModel(want map[gradeKey][]gradeSample, model string) int {
	n := 0
	for k := range want {
		if k.model == model {
			n++
		}
	}
	return n
}

// While ClickHouse is down nothing is acked; once it is back the backlog is
// inserted, once.
func TestClickHouseOutage(t *testing.T) {
	s := startStack(t, nil)
	before := s.count(t, "SELECT count() FROM "+iris.Table)
	var evs []bus.Event
	for i := range 5 {
		evs = append(evs, irisEvent(bus.IrisRow{SepalLength: float64(i), SepalWidth: 1, PetalLength: 1, PetalWidth: 1, Species: "versicolor"},
			bus.IrisRow{SepalLength: float64(i), SepalWidth: 2, PetalLength: 2, PetalWidth: 2, Species: "versicolor"}))
	}
	grade := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: bus.NewID(), Model: "m", Label: "x", Score: 0.9, Scores: map[string]float64{"x": 0.9}, InferenceMS: 5}
	chtest.Restart(t, func() {
		s.publish(t, append(evs, grade)...)
		eventually(t, "delivery attempts while ClickHouse is down", func() bool {
			info := s.consumerInfo(t, bus.ConsumerAnalyticsIris)
			return info.NumRedelivered > 0 || info.Delivered.Stream >= 5 && info.NumAckPending > 0
		})
		info := s.consumerInfo(t, bus.ConsumerAnalyticsIris)
		if info.AckFloor.Stream != 0 {
			t.Fatalf("acked up to %d while ClickHouse was down", info.AckFloor.Stream)
		}
		// A query while down is a clean 503, not a hang or a 500.
		_, err := bus.Request[[]bus.IrisStat](context.Background(), s.nc, bus.SvcIrisStats, bus.IrisStatsQuery{Func: "mean"})
		var be *bus.Error
		if !errors.As(err, &be) || be.Code != http.StatusServiceUnavailable {
			t.Fatalf("query while down: %v, want 503", err)
		}
	})
	s.waitAcked(t, bus.ConsumerAnalyticsIris)
	s.waitAcked(t, bus.ConsumerAnalyticsGrades)
	if n := s.count(t, "SELECT count() FROM "+iris.Table); n != before+10 {
		t.Fatalf("%d rows after the outage, want %d", n, before+10)
	}
	if n := s.count(t, "SELECT count() FROM "+schema.TableGrades); n != 1 {
		t.Fatalf("%d grade rows after the outage, want 1", n)
	}
}

// Bad input over NATS: 422 naming the field, or 400 for undecodable JSON;
// never a 500.
func TestBadInputOverNATS(t *testing.T) {
	s := startStack(t, nil)
	ctx := context.Background()
	now := time.Now().UTC()
	cases := []struct {
		name    string
		subject string
		req     any
		code    bus.Code
		field   string
	}{
		{"unknown species", bus.SvcIrisRange, bus.IrisRangeQuery{IrisFilter: bus.IrisFilter{Species: []string{"rose"}}}, 422, "species"},
		{"species injection", bus.SvcIrisStats, bus.IrisStatsQuery{Func: "mean", IrisFilter: bus.IrisFilter{Species: []string{"setosa' OR 1=1 --"}}}, 422, "species"},
		{"unknown column", bus.SvcIrisRange, bus.IrisRangeQuery{IrisFilter: bus.IrisFilter{Lower: map[string]float64{"stem": 1}}}, 422, "lower.stem"},
		{"column injection", bus.SvcIrisStats, bus.IrisStatsQuery{Func: "mean", IrisFilter: bus.IrisFilter{Upper: map[string]float64{"1=1; DROP TABLE grades": 1}}}, 422, "upper.1=1; DROP TABLE grades"},
		{"lower > upper", bus.SvcIrisRange, bus.IrisRangeQuery{IrisFilter: bus.IrisFilter{Lower: map[string]float64{"petal_width": 2}, Upper: map[string]float64{"petal_width": 1}}}, 422, "lower.petal_width"},
		{"page < 1", bus.SvcIrisRange, bus.IrisRangeQuery{Page: -2}, 422, "page"},
		{"per_page > 1000", bus.SvcIrisRange, bus.IrisRangeQuery{PerPage: 5000}, 422, "per_page"},
		{"sort injection", bus.SvcIrisRange, bus.IrisRangeQuery{Sort: "rand()"}, 422, "sort"},
		{"bad func", bus.SvcIrisStats, bus.IrisStatsQuery{Func: "sum"}, 422, "func"},
		{"bad q", bus.SvcIrisStats, bus.IrisStatsQuery{Func: "quantile", Q: 2}, 422, "q"},
		{"non-numeric bound", bus.SvcIrisRange, json.RawMessage(`{"lower":{"sepal_length":"5; DROP TABLE iris_measurements"}}`), 400, ""},
		{"grades from > to", bus.SvcStatsGrades, bus.GradeStatsQuery{All: true, From: now, To: now.Add(-time.Hour), Bucket: time.Minute}, 422, "from"},
		{"grades negative bucket", bus.SvcStatsGrades, bus.GradeStatsQuery{Owner: "u", Bucket: -time.Hour}, 422, "bucket"},
		{"grades bucket < 1ms", bus.SvcStatsGrades, bus.GradeStatsQuery{All: true, Bucket: time.Microsecond}, 422, "bucket"},
		{"grades too many buckets", bus.SvcStatsGrades, bus.GradeStatsQuery{All: true, From: now.Add(-365 * 24 * time.Hour), To: now, Bucket: time.Second}, 422, "bucket"},
		{"grades year 1600", bus.SvcStatsGrades, bus.GradeStatsQuery{All: true, From: time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC), To: now, Bucket: 24 * 365 * time.Hour}, 422, "from"},
		{"annotations from > to", bus.SvcStatsAnnotations, bus.AnnotationStatsQuery{All: true, From: now, To: now.Add(-time.Second)}, 422, "from"},
		{"annotations bucket 0 negative", bus.SvcStatsAnnotations, bus.AnnotationStatsQuery{Author: "ann", Bucket: -1}, 422, "bucket"},
		// The scope is never implied: without an owner/author or all the
		// query is refused, not widened to every user.
		{"grades without scope", bus.SvcStatsGrades, bus.GradeStatsQuery{}, 422, "owner"},
		{"grades empty scope as JSON", bus.SvcStatsGrades, json.RawMessage(`{"owner":"","all":false}`), 422, "owner"},
		{"grades owner and all", bus.SvcStatsGrades, bus.GradeStatsQuery{Owner: "u", All: true}, 422, "all"},
		{"annotations without scope", bus.SvcStatsAnnotations, bus.AnnotationStatsQuery{}, 422, "author"},
		{"annotations empty scope as JSON", bus.SvcStatsAnnotations, json.RawMessage(`{}`), 422, "author"},
		{"annotations author and all", bus.SvcStatsAnnotations, bus.AnnotationStatsQuery{Author: "ann", All: true}, 422, "all"},
		{"annotations without scope and bad window", bus.SvcStatsAnnotations, bus.AnnotationStatsQuery{Bucket: -1}, 422, "author"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bus.Request[json.RawMessage](ctx, s.nc, tc.subject, tc.req)
			var be *bus.Error
			if !errors.As(err, &be) || be.Code != tc.code {
				t.Fatalf("err = %v, want %d", err, tc.code)
			}
			if tc.field == "" {
				return
			}
			for _, d := range be.Details {
				if strings.HasPrefix(d, tc.field+":") {
					return
				}
			}
			t.Fatalf("details %q name no %q", be.Details, tc.field)
		})
	}
	// Undecodable JSON: 400 from the service itself.
	reply, err := s.nc.Request(bus.SvcIrisStats, []byte(`{"func":`), 10*time.Second)
	if err != nil || reply.Header.Get(micro.ErrorCodeHeader) != "400" {
		t.Fatalf("undecodable request: %v %v, want a 400 reply", reply, err)
	}
	// Defaults: a stats query with only its scope is valid (last 24h, hourly).
	if _, err := bus.Request[[]bus.GradeStatsRow](ctx, s.nc, bus.SvcStatsGrades, bus.GradeStatsQuery{Owner: "u"}); err != nil {
		t.Fatalf("default window: %v", err)
	}
	if _, err := bus.Request[[]bus.AnnotationStatsRow](ctx, s.nc, bus.SvcStatsAnnotations, bus.AnnotationStatsQuery{All: true}); err != nil {
		t.Fatalf("default window: %v", err)
	}
	if n := s.count(t, "SELECT count() FROM "+iris.Table); n != 150 {
		t.Fatalf("%d iris rows after the bad requests, want 150", n)
	}
}

func TestRunRequiresConfig(t *testing.T) {
	for _, cfg := range []Config{{}, {NATSURL: "nats://127.0.0.1:1"}, {ClickHouseDSN: "clickhouse://127.0.0.1:1/default"}} {
		if err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "required") {
			t.Errorf("Run(%+v) = %v, want a required-config error", cfg, err)
		}
	}
}

// An unreachable ClickHouse at start is retried, then reported.
func TestRunGivesUpOnUnreachableClickHouse(t *testing.T) {
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	err = Run(context.Background(), Config{NATSURL: ns.ClientURL(), ClickHouseDSN: "clickhouse://127.0.0.1:1/default",
		Logger: quiet, Registerer: prometheus.NewRegistry(), StartTimeout: 500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "prepare clickhouse") {
		t.Fatalf("Run = %v, want a prepare error", err)
	}
}

// A statistics reply larger than MaxStatsRows is refused with 422 (it
// would not fit a NATS message), one within the bound is answered.
func TestStatsResultBound(t *testing.T) {
	ctx := context.Background()
	_, conn := chtest.Database(t)
	if _, err := schema.Migrate(ctx, conn, quiet); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	rows := make([]annotationRow, MaxStatsRows+1)
	for i := range rows {
		rows[i] = annotationRow{EventID: bus.NewID(), Author: "ann", Time: base.Add(time.Duration(i) * time.Second)}
	}
	if err := insertAnnotations(ctx, conn, rows); err != nil {
		t.Fatal(err)
	}
	q := bus.AnnotationStatsQuery{Author: "ann", From: base, To: base.Add(2 * time.Hour), Bucket: time.Second}
	_, err := AnnotationStats(ctx, conn, q)
	var be *bus.Error
	if !errors.As(err, &be) || be.Code != http.StatusUnprocessableEntity || !strings.HasPrefix(be.Details[0], "bucket:") {
		t.Fatalf("err = %v, want 422 on bucket", err)
	}
	q.Bucket = time.Minute
	got, err := AnnotationStats(ctx, conn, q)
	if err != nil || len(got) != (MaxStatsRows+59)/60 {
		t.Fatalf("%d rows, %v; want %d", len(got), err, (MaxStatsRows+59)/60)
	}
	var total uint64
	for _, r := range got {
		total += r.Count
	}
	if total != MaxStatsRows+1 {
		t.Fatalf("counted %d annotations, want %d", total, MaxStatsRows+1)
	}
}

func TestClickHouseCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ClickHouseCheck(chtest.Server().DSN())(ctx); err != nil {
		t.Fatalf("running engine: %v", err)
	}
	if err := ClickHouseCheck("clickhouse://127.0.0.1:1/default?dial_timeout=500ms")(ctx); err == nil {
		t.Fatal("closed port reported ready")
	}
	if err := ClickHouseCheck("::not a dsn")(ctx); err == nil {
		t.Fatal("malformed DSN reported ready")
	}
}

// TestReviewAndAgreement: the review queue orders an owner's graded
// catalogue images by the latest prediction's score, drops annotated ones
// on request and never lists uploads or other owners' images; agreement
// compares the latest prediction per version with the latest human image
// label, leaving out labels made from predictions.
func TestReviewAndAgreement(t *testing.T) {
	s := startStack(t, nil)
	ctx := context.Background()
	base := time.Now().UTC().Add(-time.Hour).Truncate(time.Millisecond)
	at := 0
	grade := func(owner, img, version, label string, score float64, catalogued bool) *bus.GradeCompleted {
		at++
		ev := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: bus.NewID(), ImageID: img, Owner: owner,
			Model: "fashion", ModelVersion: version, Label: label, Score: score, Scores: map[string]float64{label: score}, Catalogued: catalogued}
		ev.Time = base.Add(time.Duration(at) * time.Second)
		return ev
	}
	annotation := func(img, body string) *bus.AnnotationCreated {
		at++
		ev := &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), Author: "someone", ImageID: img, Annotation: json.RawMessage(body)}
		ev.Time = base.Add(time.Duration(at) * time.Second)
		return ev
	}
	s.publish(t,
		grade("u", "a", "1", "cat", 0.9, true), grade("u", "a", "1", "dog", 0.3, true), // latest of a: 0.3
		grade("u", "b", "1", "cat", 0.5, true),
		grade("u", "c", "1", "bird", 0.2, true), grade("u", "c", "2", "cat", 0.95, true), // latest of c: 0.95
		grade("u", "upload", "1", "cat", 0.01, false), // not a catalogue image
		grade("v", "d", "1", "cat", 0.05, true),       // another owner
		annotation("b", `{"label":"cat"}`),
		annotation("a", `{"label":"cat","boxes":[{"label":"cat","x":1,"y":1,"width":2,"height":2}]}`),
		annotation("c", `{"label":"cat"}`),
		annotation("c", `{"label":"dog","from_grade":"g"}`), // accepted prediction: not a second opinion
		annotation("d", `{"note":"free-form"}`),
	)
	s.waitAcked(t, bus.ConsumerAnalyticsGrades)
	s.waitAcked(t, bus.ConsumerAnalyticsAnnotations)

	queue := func(q bus.ReviewQuery) string {
		t.Helper()
		items, err := bus.Request[[]bus.ReviewItem](ctx, s.nc, bus.SvcStatsReview, q)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, it := range items {
			ids = append(ids, fmt.Sprintf("%s:%s:%g", it.ImageID, it.Label, it.Score))
		}
		return strings.Join(ids, " ")
	}
	if got := queue(bus.ReviewQuery{Owner: "u"}); got != "a:dog:0.3 b:cat:0.5 c:cat:0.95" {
		t.Fatalf("queue %q", got)
	}
	if got := queue(bus.ReviewQuery{Owner: "u", PerPage: 2, Page: 2}); got != "c:cat:0.95" {
		t.Fatalf("page 2 %q", got)
	}
	if got := queue(bus.ReviewQuery{Owner: "v", Unannotated: true}); got != "" {
		t.Fatalf("v's queue without annotated images %q, want empty (d has an annotation)", got)
	}
	s.publish(t, grade("u", "e", "1", "cat", 0.4, true))
	s.waitAcked(t, bus.ConsumerAnalyticsGrades)
	if got := queue(bus.ReviewQuery{Owner: "u", Unannotated: true}); got != "e:cat:0.4" {
		t.Fatalf("unannotated queue %q", got)
	}

	rows, err := bus.Request[[]bus.AgreementRow](ctx, s.nc, bus.SvcStatsAgreement, bus.AgreementQuery{Owner: "u", Model: "fashion"})
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%+v", rows)
	// v1: a predicted dog (human cat), b cat (cat), c bird (cat); v2: c cat (cat).
	want := "[{ModelVersion:1 Compared:3 Agree:1 Rate:0.3333333333333333 Confusion:[{Predicted:bird Human:cat Count:1} {Predicted:cat Human:cat Count:1} {Predicted:dog Human:cat Count:1}]} " +
		"{ModelVersion:2 Compared:1 Agree:1 Rate:1 Confusion:[{Predicted:cat Human:cat Count:1}]}]"
	if got != want {
		t.Fatalf("agreement\n got %s\nwant %s", got, want)
	}
	for _, q := range []any{bus.ReviewQuery{}, bus.ReviewQuery{Owner: "u", PerPage: 5000}, bus.AgreementQuery{Owner: "u"}} {
		subj := bus.SvcStatsReview
		if _, ok := q.(bus.AgreementQuery); ok {
			subj = bus.SvcStatsAgreement
		}
		_, err := bus.Request[json.RawMessage](ctx, s.nc, subj, q)
		var be *bus.Error
		if !errors.As(err, &be) || be.Code != bus.CodeUnprocessable {
			t.Fatalf("%+v: %v, want 422", q, err)
		}
	}
}

// TestRegradeAgreement: shadow grades of a regrade run are stored once
// (a redelivered event too) and compared with the served version per
// grade: agreeing, changed per label, and the pairs.
func TestRegradeAgreement(t *testing.T) {
	s := startStack(t, nil)
	ctx := context.Background()
	served := func(id, label string) *bus.GradeCompleted {
		return &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: id, ImageID: "img-" + id, Owner: "u",
			Model: "fashion", ModelVersion: "1", Label: label, Score: 0.5, Scores: map[string]float64{label: 0.5}}
	}
	shadow := func(of, owner, label string) *bus.GradeShadow {
		ev := &bus.GradeShadow{Meta: bus.NewMeta(bus.TypeGradeShadow), Run: "r1", Of: of, ImageID: "img-" + of, Owner: owner,
			Model: "fashion", ModelVersion: "2", Label: label, Score: 0.7}
		ev.ID = "r1/" + of
		return ev
	}
	failedShadow := shadow("g5", "u", "")
	failedShadow.Reason = "undecodable"
	sh := []bus.Event{shadow("g1", "u", "bag"), shadow("g2", "u", "coat"), shadow("g3", "u", "coat"), shadow("g9", "v", "bag"), failedShadow}
	s.publish(t, append([]bus.Event{served("g1", "bag"), served("g2", "bag"), served("g3", "coat"), served("g4", "bag"), served("g5", "bag")}, sh...)...)
	s.publishDuplicate(t, sh[0])
	s.waitAcked(t, bus.ConsumerAnalyticsGrades)
	s.waitAcked(t, bus.ConsumerAnalyticsRegrades)
	if n := s.count(t, "SELECT count() FROM "+schema.TableShadows+" FINAL"); n != 5 {
		t.Fatalf("%d shadow rows, want 5", n)
	}
	got, err := bus.Request[bus.RegradeAgreement](ctx, s.nc, bus.SvcStatsRegrade, bus.RegradeAgreementQuery{Owner: "u", Model: "fashion", A: "1", B: "2"})
	if err != nil {
		t.Fatal(err)
	}
	// g1 bag→bag, g2 bag→coat, g3 coat→coat; g4 has no shadow, g5's failed, g9 is v's.
	want := "{A:1 B:2 Compared:3 Agree:2 Rate:0.6666666666666666 PerLabel:[{Label:bag Agree:1 Changed:1} {Label:coat Agree:1 Changed:0}] " +
		"Confusion:[{A:bag B:bag Count:1} {A:bag B:coat Count:1} {A:coat B:coat Count:1}]}"
	if fmt.Sprintf("%+v", got) != want {
		t.Fatalf("agreement\n got %+v\nwant %s", got, want)
	}
	_, err = bus.Request[bus.RegradeAgreement](ctx, s.nc, bus.SvcStatsRegrade, bus.RegradeAgreementQuery{Owner: "u", Model: "fashion", A: "1"})
	var be *bus.Error
	if !errors.As(err, &be) || be.Code != bus.CodeUnprocessable || !strings.Contains(strings.Join(be.Details, " "), "b: required") {
		t.Fatalf("without b: %v, want 422 naming b", err)
	}
}
