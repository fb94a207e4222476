package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/annotator/localmongo"
	"github.com/gradeline/gradeline/bus"
)

var (
	client *mongo.Client
	server *localmongo.Server
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "store-test-")
	if err != nil {
		panic(err)
	}
	srv, err := localmongo.Start(context.Background(), localmongo.Options{Dir: dir, SharedBuffers: "64MB"})
	server = srv
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedded FerretDB:", err)
		os.Exit(1)
	}
	client, err = mongo.Connect(options.Client().ApplyURI(srv.URI()))
	if err != nil {
		panic(err)
	}
	code := m.Run()
	_ = client.Disconnect(context.Background())
	_ = srv.Close()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func newStore(t testing.TB) (*Store, *Metrics) {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// Named after the test and emptied first: a run with -count=N (one
	// embedded server for the whole binary) starts each time from nothing.
	db := client.Database(strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
	if err := db.Drop(context.Background()); err != nil {
		t.Fatal(err)
	}
	return New(db, m), m
}

func annotation(author, image, body string) *bus.AnnotationCreated {
	return &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), Author: author, ImageID: image, Annotation: json.RawMessage(body)}
}

func check(t testing.TB) func([]error, error) {
	return func(res []error, err error) {
		t.Helper()
		noErrors(t, res, err)
	}
}

func noErrors(t testing.TB, res []error, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range res {
		if e != nil {
			t.Fatalf("result %d: %v", i, e)
		}
	}
}

func TestAnnotationBodies(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	cases := []struct {
		name, body string
		asDoc      bool // stored as a BSON document (else as JSON text)
		// breaks the contract (bus.ValidateAnnotation): such a body can no
		// longer arrive, and one stored before is never served
		refused bool
	}{
		{"flat", `{"label":"cat","score":0.93,"n":3,"ok":true,"none":null}`, true, false},
		{"nested", `{"box":{"x":1,"y":2,"w":30.5,"h":4},"tags":["a","b"],"pts":[{"x":1},{"x":2}]}`, true, false},
		{"big int64", `{"n":9223372036854775807,"m":-9223372036854775808}`, true, false},
		{"unicode", `{"名前":"猫","emoji":"😺","esc":"a\"b\\c\n"}`, true, false},
		{"empty", `{}`, true, false},
		{"nested arrays", `{"polygon":[[0,0],[1,0],[1,1]]}`, false, false},
		{"dollar key", `{"$where":"x","a":1}`, false, false},
		{"dotted key", `{"a.b":1}`, false, false},
		{"duplicate key", `{"a":1,"a":2}`, false, true},
		{"int beyond int64", `{"n":123456789012345678901234567890}`, false, false},
		{"float overflow", `{"f":1e400}`, false, false},
		{"deep", strings.Repeat(`{"a":`, 70) + "1" + strings.Repeat("}", 70), false, true},
		{"nul in key", `{"a\u0000b":1}`, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, ok := jsonToDoc([]byte(tc.body))
			if ok != tc.asDoc {
				t.Fatalf("jsonToDoc ok=%v, want %v", ok, tc.asDoc)
			}
			ev := annotation("alice", "img-1", tc.body)
			res, err := s.InsertAnnotations(ctx, []*bus.AnnotationCreated{ev})
			noErrors(t, res, err)
			got, found, err := s.GetAnnotation(ctx, ev.ID)
			if tc.refused {
				if err == nil {
					t.Fatalf("a body that breaks the contract was served: %s", got.Annotation)
				}
				return
			}
			if err != nil || !found {
				t.Fatalf("get: found=%v err=%v", found, err)
			}
			if !tc.asDoc {
				if string(got.Annotation) != tc.body {
					t.Fatalf("text fallback changed the body: %s", got.Annotation)
				}
			} else {
				var want, have any
				if err := json.Unmarshal([]byte(tc.body), &want); err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(got.Annotation, &have); err != nil {
					t.Fatalf("stored annotation is not JSON: %s", got.Annotation)
				}
				if !reflect.DeepEqual(want, have) {
					t.Fatalf("round trip: got %s, want %s", got.Annotation, tc.body)
				}
			}
			if got.Author != "alice" || got.ImageID != "img-1" || !got.CreatedAt.Equal(ev.Time.Truncate(time.Millisecond)) {
				t.Fatalf("fields: %+v (event time %v)", got, ev.Time)
			}
		})
	}
}

func TestInsertAnnotationsIdempotent(t *testing.T) {
	s, m := newStore(t)
	ctx := context.Background()
	a, b, c := annotation("u", "", `{"i":1}`), annotation("u", "", `{"i":2}`), annotation("u", "", `{"i":3}`)
	// b twice in one batch, then a redelivered batch.
	check(t)(s.InsertAnnotations(ctx, []*bus.AnnotationCreated{a, b, b}))
	check(t)(s.InsertAnnotations(ctx, []*bus.AnnotationCreated{a, b, c}))
	l, err := s.ListAnnotations(ctx, AnnotationFilter{}, Page{Limit: 10}, nil)
	if err != nil || l.Total == nil || *l.Total != 3 || len(l.Data) != 3 {
		t.Fatalf("listed %d (total %v), %v; want 3", len(l.Data), l.Total, err)
	}
	if w, d := testutil.ToFloat64(m.written.WithLabelValues(CollAnnotations)), testutil.ToFloat64(m.duplicates.WithLabelValues(CollAnnotations)); w != 3 || d != 3 {
		t.Fatalf("metrics written=%v duplicates=%v, want 3 and 3", w, d)
	}
	if n := testutil.CollectAndCount(m.writeSeconds); n == 0 {
		t.Fatal("no write latency observed")
	}
}

func TestUnreachableIsBatchError(t *testing.T) {
	mc, err := mongo.Connect(options.Client().ApplyURI("mongodb://127.0.0.1:1/").SetServerSelectionTimeout(300 * time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Disconnect(context.Background())
	m, _ := NewMetrics(prometheus.NewRegistry())
	s := New(mc.Database("x"), m)
	ctx := context.Background()
	res, err := s.InsertAnnotations(ctx, []*bus.AnnotationCreated{annotation("u", "", `{}`)})
	if err == nil || res != nil {
		t.Fatalf("want a batch error, got res=%v err=%v", res, err)
	}
	if _, err := s.ApplyCatalog(ctx, []bus.Event{tagsSet("i", "o", "a")}); err == nil {
		t.Fatal("catalogue: want a batch error")
	}
	if _, err := s.ApplyGrades(ctx, []bus.Event{failed("g", "boom")}); err == nil {
		t.Fatal("grades: want a batch error")
	}
	if _, err := s.recordPending(ctx, []*bus.ImageSubmitted{submitted("g", "i", "o")}); err == nil {
		t.Fatal("pending: want a batch error")
	}
}

func TestPaginationStable(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	// Many annotations share created_at: the _id tie-break keeps pages apart.
	var evs []*bus.AnnotationCreated
	at := time.Now().UTC()
	for i := range 57 {
		ev := annotation(fmt.Sprintf("u%d", i%3), "img", `{}`)
		ev.Time = at.Add(time.Duration(i/10) * time.Second)
		evs = append(evs, ev)
	}
	check(t)(s.InsertAnnotations(ctx, evs))
	// Walk by cursor, and by page number (the older form): both visit every
	// annotation once, newest first.
	walk := func(next func(prev bus.List[bus.Annotation], n int64) (Page, bool)) {
		t.Helper()
		seen := map[string]bool{}
		var prevAt time.Time
		var l bus.List[bus.Annotation]
		for n := int64(0); ; n++ {
			p, ok := next(l, n)
			if !ok {
				break
			}
			var err error
			if l, err = s.ListAnnotations(ctx, AnnotationFilter{ImageID: "img"}, p, nil); err != nil {
				t.Fatalf("page %d: %v", n, err)
			}
			if len(l.Data) == 0 {
				break
			}
			if l.Total != nil {
				t.Fatalf("page %d: total %d given though the result spans pages", n, *l.Total)
			}
			for _, a := range l.Data {
				if seen[a.ID] {
					t.Fatalf("annotation %s on two pages", a.ID)
				}
				if !prevAt.IsZero() && a.CreatedAt.After(prevAt) {
					t.Fatalf("not newest first: %v after %v", a.CreatedAt, prevAt)
				}
				seen[a.ID], prevAt = true, a.CreatedAt
			}
		}
		if len(seen) != 57 {
			t.Fatalf("walked %d annotations, want 57", len(seen))
		}
	}
	walk(func(prev bus.List[bus.Annotation], n int64) (Page, bool) {
		if n == 0 {
			return Page{Limit: 8}, true
		}
		if prev.Next == "" {
			return Page{}, false
		}
		c, err := ParseCursor(prev.Next)
		if err != nil {
			t.Fatal(err)
		}
		return Page{Limit: 8, After: c}, true
	})
	walk(func(_ bus.List[bus.Annotation], n int64) (Page, bool) { return Page{Skip: n * 8, Limit: 8}, true })

	l, err := s.ListAnnotations(ctx, AnnotationFilter{ImageID: "img", Author: "u1"}, Page{Limit: 100}, nil)
	if err != nil || l.Total == nil || *l.Total != 19 || len(l.Data) != 19 || l.Next != "" {
		t.Fatalf("author filter: %d listed, total %v, next %q, err %v; want 19 and no next", len(l.Data), l.Total, l.Next, err)
	}
}

func TestParseCursorRejects(t *testing.T) {
	for _, in := range []string{"", "!!", "bm90LWEtY3Vyc29y", Cursor{At: time.Now(), ID: ""}.Encode(), Cursor{At: time.Now(), ID: strings.Repeat("x", 300)}.Encode()} {
		if _, err := ParseCursor(in); !errors.Is(err, ErrBadCursor) {
			t.Errorf("ParseCursor(%q) = %v, want ErrBadCursor", in, err)
		}
	}
	c := Cursor{At: time.Date(2026, 12, 2, 10, 0, 0, 123456789, time.UTC), ID: "0193-abc"}
	got, err := ParseCursor(c.Encode())
	if err != nil || !got.At.Equal(c.At) || got.ID != c.ID {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
}

func catalogued(img, owner string, tags ...string) *bus.ImageCatalogued {
	return &bus.ImageCatalogued{
		Meta: bus.NewMeta(bus.TypeImageCatalogued), ImageID: img, Owner: owner, Filename: img + ".png",
		Width: 4, Height: 3, Tags: tags,
		Image: bus.ImageRef{Object: "obj-" + img, SHA256: strings.Repeat("a", 64), ContentType: "image/png", Size: 42},
	}
}

func tagsSet(img, owner string, tags ...string) *bus.ImageTagsSet {
	return &bus.ImageTagsSet{Meta: bus.NewMeta(bus.TypeImageTagsSet), ImageID: img, Owner: owner, Tags: tags}
}

func deleted(img, owner string) *bus.ImageDeleted {
	return &bus.ImageDeleted{Meta: bus.NewMeta(bus.TypeImageDeleted), ImageID: img, Owner: owner}
}

func permutations(n int) [][]int {
	if n == 1 {
		return [][]int{{0}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := append(append(append([]int{}, p[:i]...), n-1), p[i:]...)
			out = append(out, q)
		}
	}
	return out
}

func TestCatalogOrderIndependent(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for pi, perm := range permutations(3) {
		for _, oneBatch := range []bool{false, true} {
			img := fmt.Sprintf("img-%d-%v", pi, oneBatch)
			// Created in time order: catalogued, then two tag changes.
			evs := []bus.Event{catalogued(img, "alice", "orig"), tagsSet(img, "alice", "first"), tagsSet(img, "alice", "second", "x")}
			order := make([]bus.Event, len(perm))
			for i, j := range perm {
				order[i] = evs[j]
			}
			if oneBatch {
				check(t)(s.ApplyCatalog(ctx, order))
			} else {
				for _, ev := range order {
					check(t)(s.ApplyCatalog(ctx, []bus.Event{ev}))
				}
			}
			// A replay of everything changes nothing.
			check(t)(s.ApplyCatalog(ctx, evs))
			got, ok, err := s.GetImage(ctx, "alice", img)
			if err != nil || !ok {
				t.Fatalf("order %v: get: ok=%v err=%v", perm, ok, err)
			}
			if !reflect.DeepEqual(got.Tags, []string{"second", "x"}) || got.Filename != img+".png" || got.Size != 42 ||
				got.ContentType != "image/png" || got.Object != "obj-"+img || got.Width != 4 {
				t.Fatalf("order %v (one batch %v): got %+v", perm, oneBatch, got)
			}
			if want := evs[2].EventMeta().Time.Truncate(time.Millisecond); !got.UpdatedAt.Equal(want) {
				t.Fatalf("order %v: updated_at %v, want %v", perm, got.UpdatedAt, want)
			}
		}
	}
}

func TestCatalogTombstone(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	cases := map[string]func(c *bus.ImageCatalogued, tg *bus.ImageTagsSet, d *bus.ImageDeleted) [][]bus.Event{
		"deleted then catalogued replayed": func(c *bus.ImageCatalogued, tg *bus.ImageTagsSet, d *bus.ImageDeleted) [][]bus.Event {
			return [][]bus.Event{{c}, {tg}, {d}, {c}, {tg}}
		},
		"deleted first": func(c *bus.ImageCatalogued, tg *bus.ImageTagsSet, d *bus.ImageDeleted) [][]bus.Event {
			return [][]bus.Event{{d}, {tg}, {c}}
		},
		"one batch": func(c *bus.ImageCatalogued, tg *bus.ImageTagsSet, d *bus.ImageDeleted) [][]bus.Event {
			return [][]bus.Event{{d, c, tg, c}}
		},
	}
	for name, steps := range cases {
		t.Run(name, func(t *testing.T) {
			img := "img-" + strings.ReplaceAll(name, " ", "-")
			for _, batch := range steps(catalogued(img, "bob", "t"), tagsSet(img, "bob", "t", "u"), deleted(img, "bob")) {
				check(t)(s.ApplyCatalog(ctx, batch))
			}
			if _, ok, err := s.GetImage(ctx, "bob", img); err != nil || ok {
				t.Fatalf("deleted image visible: ok=%v err=%v", ok, err)
			}
			l, err := s.ListImages(ctx, ImageFilter{Owner: "bob", Tags: []string{"t"}}, Page{Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			for _, im := range l.Data {
				if im.ID == img {
					t.Fatal("deleted image listed")
				}
			}
		})
	}
}

func TestListImages(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	var evs []bus.Event
	for i := range 12 {
		tags := []string{"all"}
		if i%2 == 0 {
			tags = append(tags, "even")
		}
		if i%3 == 0 {
			tags = append(tags, "three")
		}
		evs = append(evs, catalogued(fmt.Sprintf("i%02d", i), "carol", tags...))
	}
	evs = append(evs, catalogued("other", "dave", "all", "even"), tagsSet("ghost", "carol", "all"))
	check(t)(s.ApplyCatalog(ctx, evs))
	cases := []struct {
		tags []string
		want int64
	}{
		{nil, 12}, {[]string{"all"}, 12}, {[]string{"even"}, 6}, {[]string{"even", "three"}, 2},
		{[]string{"three", "even", "all"}, 2}, {[]string{"missing"}, 0}, {[]string{"even", "missing"}, 0},
	}
	for _, tc := range cases {
		l, err := s.ListImages(ctx, ImageFilter{Owner: "carol", Tags: tc.tags}, Page{Limit: 100})
		if err != nil || l.Total == nil || *l.Total != tc.want || int64(len(l.Data)) != tc.want {
			t.Fatalf("tags %v: total %v len %d err %v; want %d", tc.tags, l.Total, len(l.Data), err, tc.want)
		}
		for _, im := range l.Data {
			if im.Owner != "carol" {
				t.Fatalf("tags %v: listed %s of %s", tc.tags, im.ID, im.Owner)
			}
		}
	}
	if _, ok, _ := s.GetImage(ctx, "carol", "other"); ok {
		t.Fatal("another owner's image found")
	}
	if _, ok, _ := s.GetImage(ctx, "carol", "ghost"); ok {
		t.Fatal("uncatalogued placeholder found")
	}
}

func submitted(id, img, owner string) *bus.ImageSubmitted {
	m := bus.NewMeta(bus.TypeImageSubmitted)
	m.ID = id
	return &bus.ImageSubmitted{Meta: m, ImageID: img, Owner: owner, Model: "fashion",
		Image: bus.ImageRef{Object: "o", SHA256: strings.Repeat("b", 64), ContentType: "image/png", Size: 1}}
}

// completed and failed are results as inference publishes them: with the
// submission's image, owner, model and time.
func completed(id string) *bus.GradeCompleted {
	return &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: id, ImageID: "img", Owner: "erin",
		Model: "fashion", ModelVersion: "1", Label: "bag", Score: 0.9,
		Scores: map[string]float64{"bag": 0.9, "coat": 0.1, "a.b": 0}, InferenceMS: 1.5, BatchSize: 4,
		SubmittedAt: time.Now().UTC().Add(-time.Second)}
}

func failed(id, reason string) *bus.GradeFailed {
	return &bus.GradeFailed{Meta: bus.NewMeta(bus.TypeGradeFailed), GradeID: id, ImageID: "img", Owner: "erin",
		Reason: reason, Model: "fashion", SubmittedAt: time.Now().UTC().Add(-time.Second)}
}

func TestGradesOrderIndependent(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	type step func(id string) error
	pend := func(id string) error {
		res, err := s.recordPending(ctx, []*bus.ImageSubmitted{submitted(id, "img", "erin")})
		return firstErr(res, err)
	}
	done := func(id string) error { return firstErr(s.ApplyGrades(ctx, []bus.Event{completed(id)})) }
	fail := func(id string) error { return firstErr(s.ApplyGrades(ctx, []bus.Event{failed(id, "bad image")})) }
	cases := []struct {
		name   string
		steps  []step
		status string
	}{
		{"pending only", []step{pend, pend}, bus.GradeStatusPending},
		{"pending then completed", []step{pend, done}, bus.GradeStatusCompleted},
		{"completed then pending", []step{done, pend, done, pend}, bus.GradeStatusCompleted},
		{"failed then pending", []step{fail, pend}, bus.GradeStatusFailed},
		{"pending failed completed", []step{pend, fail, done}, bus.GradeStatusCompleted},
		{"completed then failed", []step{pend, done, fail}, bus.GradeStatusCompleted},
		{"failed without pending, replayed", []step{fail, fail}, bus.GradeStatusFailed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := bus.NewID()
			for _, st := range tc.steps {
				if err := st(id); err != nil {
					t.Fatal(err)
				}
			}
			g, ok, err := s.GetGrade(ctx, id, "")
			if err != nil || !ok {
				t.Fatalf("get: ok=%v err=%v", ok, err)
			}
			if g.Status != tc.status {
				t.Fatalf("status %q, want %q", g.Status, tc.status)
			}
			hasPending := false
			for _, st := range tc.steps {
				hasPending = hasPending || reflect.ValueOf(st).Pointer() == reflect.ValueOf(pend).Pointer()
			}
			if hasPending && (g.Owner != "erin" || g.ImageID != "img" || g.SubmittedAt.IsZero()) {
				t.Fatalf("submission fields missing: %+v", g)
			}
			switch tc.status {
			case bus.GradeStatusCompleted:
				if g.Label != "bag" || g.Scores["coat"] != 0.1 || len(g.Scores) != 3 || g.ModelVersion != "1" ||
					g.Reason != "" || g.CompletedAt.IsZero() || g.BatchSize != 4 {
					t.Fatalf("completed grade: %+v", g)
				}
			case bus.GradeStatusFailed:
				if g.Reason != "bad image" || g.Label != "" {
					t.Fatalf("failed grade: %+v", g)
				}
			case bus.GradeStatusPending:
				if g.Label != "" || !g.CompletedAt.IsZero() {
					t.Fatalf("pending grade: %+v", g)
				}
			}
			if _, ok, _ := s.GetGrade(ctx, id, "mallory"); ok {
				t.Fatal("grade visible to another owner")
			}
		})
	}
	if _, ok, err := s.GetGrade(ctx, "nope", ""); ok || err != nil {
		t.Fatalf("unknown grade: ok=%v err=%v", ok, err)
	}
}

func firstErr(res []error, err error) error {
	if err != nil {
		return err
	}
	for _, e := range res {
		if e != nil {
			return e
		}
	}
	return nil
}

func TestEnsureIndexesTwice(t *testing.T) {
	// A restarted service finds its indexes already there.
	db := client.Database("indexes_twice")
	ctx := context.Background()
	for range 3 {
		m, _ := NewMetrics(prometheus.NewRegistry())
		if err := New(db, m).EnsureIndexes(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cur, err := db.Collection(CollAnnotations).Indexes().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var idx []struct {
		Name string `bson:"name"`
	}
	if err := cur.All(ctx, &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx) != 4 { // _id, image_id, author, shelf
		t.Fatalf("annotations indexes %v, want _id, image_id, author and shelf", idx)
	}
}

func TestInsertManyItemErrors(t *testing.T) {
	// A document the server refuses is reported for its index only; the
	// others are stored and a duplicate counts as stored.
	s, m := newStore(t)
	ctx := context.Background()
	coll := s.db.Collection("items")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "old"}}); err != nil {
		t.Fatal(err)
	}
	docs := []any{
		bson.D{{Key: "_id", Value: "a"}},
		bson.D{{Key: "_id", Value: "bad"}, {Key: "$refused", Value: 1}},
		bson.D{{Key: "_id", Value: "old"}},
		bson.D{{Key: "_id", Value: "c"}},
	}
	dup, item, err := s.insertMany(ctx, coll, []string{"a", "bad", "old", "c"}, docs)
	if err != nil {
		t.Fatal(err)
	}
	var ie *ItemError
	if !errors.As(item[1], &ie) || ie.ID != "bad" {
		t.Fatalf("item errors %v: want one for index 1", item)
	}
	if item[0] != nil || item[2] != nil || item[3] != nil || !dup[2] || dup[0] || dup[3] {
		t.Fatalf("dup %v item %v", dup, item)
	}
	if n, _ := coll.CountDocuments(ctx, bson.D{}); n != 3 {
		t.Fatalf("%d documents, want old, a and c", n)
	}
	if w := testutil.ToFloat64(m.written.WithLabelValues("items")); w != 2 {
		t.Fatalf("written %v, want 2", w)
	}
}

// TestInsertManyAcrossCommands: a batch larger than one insert command
// holds is split, and each write error still names its own document.
func TestInsertManyAcrossCommands(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	coll := s.db.Collection("big")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "old"}}); err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("x", 3<<20)
	ids := []string{"a", "b", "old", "c", "bad"}
	var docs []any
	for _, id := range ids[:4] {
		docs = append(docs, bson.D{{Key: "_id", Value: id}, {Key: "pad", Value: pad}})
	}
	docs = append(docs, bson.D{{Key: "_id", Value: "bad"}, {Key: "$refused", Value: 1}})
	dup, item, err := s.insertMany(ctx, coll, ids, docs)
	if err != nil {
		t.Fatal(err)
	}
	var ie *ItemError
	if !dup[2] || dup[0] || dup[1] || dup[3] || item[0] != nil || item[1] != nil || item[3] != nil ||
		!errors.As(item[4], &ie) || ie.ID != "bad" {
		t.Fatalf("dup %v item %v: want old (third, in the second command) a duplicate and bad (in the last) refused", dup, item)
	}
	if n, _ := coll.CountDocuments(ctx, bson.D{}); n != 4 {
		t.Fatalf("%d documents, want old, a, b and c", n)
	}
}

func TestAnnotationChanges(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	a := annotation("ann", "img", `{"v":1}`)
	upd := func(id, author, body string) *bus.AnnotationUpdated {
		return &bus.AnnotationUpdated{Meta: bus.NewMeta(bus.TypeAnnotationUpdated), AnnotationID: id, Author: author, Annotation: json.RawMessage(body)}
	}
	// A change to an annotation not stored yet is retried, not lost.
	early := upd(a.ID, "ann", `{"v":0}`)
	res, err := s.ApplyAnnotations(ctx, []bus.Event{early})
	if err != nil || !errors.Is(res[0], ErrNotStoredYet) {
		t.Fatalf("update before create: %v %v", res, err)
	}
	u2, u3 := upd(a.ID, "ann", `{"v":2}`), upd(a.ID, "ann", `{"v":3,"deep":{"x":[1,2]}}`)
	check(t)(s.ApplyAnnotations(ctx, []bus.Event{a, u2, u3}))
	// Redelivered older update, and another author's: no effect.
	check(t)(s.ApplyAnnotations(ctx, []bus.Event{u2, upd(a.ID, "mallory", `{"v":666}`)}))
	got, ok, err := s.GetAnnotation(ctx, a.ID)
	if err != nil || !ok || string(got.Annotation) != `{"v":3,"deep":{"x":[1,2]}}` || got.UpdatedAt.IsZero() {
		t.Fatalf("after updates: %s %v %v", got.Annotation, ok, err)
	}
	del := &bus.AnnotationDeleted{Meta: bus.NewMeta(bus.TypeAnnotationDeleted), AnnotationID: a.ID, Author: "ann"}
	check(t)(s.ApplyAnnotations(ctx, []bus.Event{del}))
	// Replayed creation and update after the deletion: it stays deleted.
	check(t)(s.ApplyAnnotations(ctx, []bus.Event{a, upd(a.ID, "ann", `{"v":4}`)}))
	if _, ok, err := s.GetAnnotation(ctx, a.ID); ok || err != nil {
		t.Fatalf("deleted annotation still found: %v", err)
	}
	l, err := s.ListAnnotations(ctx, AnnotationFilter{ImageID: "img"}, Page{Limit: 10}, nil)
	if err != nil || len(l.Data) != 0 {
		t.Fatalf("deleted annotation listed: %+v %v", l, err)
	}
}

// A hostile record already in the store (written before the contract
// bounded annotations) is skipped and reported, and the rest of the
// listing is served; a lookup of it fails alone.
func TestHostileStoredAnnotationSkipped(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	check(t)(s.InsertAnnotations(ctx, []*bus.AnnotationCreated{annotation("u", "img", `{"ok":1}`), annotation("u", "img", `{"ok":2}`)}))
	deep := strings.Repeat(`{"a":`, 9999) + "1" + strings.Repeat("}", 9999)
	if _, err := s.annotations.InsertOne(ctx, bson.D{{Key: "_id", Value: "hostile"}, {Key: "image_id", Value: "img"},
		{Key: "author", Value: "u"}, {Key: "annotation_json", Value: deep}, {Key: "created_at", Value: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	var skipped []string
	l, err := s.ListAnnotations(ctx, AnnotationFilter{ImageID: "img"}, Page{Limit: 10}, func(id string, err error) { skipped = append(skipped, id) })
	if err != nil || len(l.Data) != 2 || len(skipped) != 1 || skipped[0] != "hostile" {
		t.Fatalf("listing: %d served, skipped %v, %v", len(l.Data), skipped, err)
	}
	if _, _, err := s.GetAnnotation(ctx, "hostile"); err == nil {
		t.Fatal("the hostile record was served")
	}
}

// TestAuthorShelves walks an author's annotations through shelves of 5:
// every live annotation once, newest first, by cursor and by page number,
// across a restart (a new Store claims fresh shelves) and with annotations
// stored before shelves existed.
func TestAuthorShelves(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	at := time.Now().UTC().Add(-time.Hour)
	// Annotations from before shelves: no shelf field, stored directly.
	var want []string
	for i := range 7 {
		d := annotationDoc{ID: bus.NewID(), Author: "ann", Annotation: mustDoc(t, `{"old":1}`), CreatedAt: at.Add(time.Duration(i) * time.Second)}
		if _, err := s.annotations.InsertOne(ctx, d); err != nil {
			t.Fatal(err)
		}
		want = append(want, d.ID)
	}
	newEvent := func(author string, i int) *bus.AnnotationCreated {
		ev := annotation(author, "", `{}`)
		ev.Time = at.Add(time.Minute + time.Duration(i)*time.Second)
		return ev
	}
	var deleted []bus.Event
	for batch := range 4 {
		var evs []*bus.AnnotationCreated
		for i := range 11 {
			ev := newEvent("ann", batch*11+i)
			evs = append(evs, ev, newEvent("1:ann", batch*11+i))
			if i == 3 {
				deleted = append(deleted, &bus.AnnotationDeleted{Meta: bus.NewMeta(bus.TypeAnnotationDeleted), AnnotationID: ev.ID, Author: "ann"})
			} else {
				want = append(want, ev.ID)
			}
		}
		if batch == 2 {
			// A restart: the open shelves are forgotten.
			s = New(s.db, s.m)
		}
		s.shelves.size = 5
		check(t)(s.InsertAnnotations(ctx, evs))
	}
	check(t)(s.ApplyAnnotations(ctx, deleted))
	slices.Reverse(want)

	walk := func(name string, next func(prev bus.List[bus.Annotation], n int64) (Page, bool)) {
		t.Helper()
		var got []string
		var l bus.List[bus.Annotation]
		for n := int64(0); n < 100; n++ {
			p, ok := next(l, n)
			if !ok {
				break
			}
			var err error
			if l, err = s.ListAnnotations(ctx, AnnotationFilter{Author: "ann"}, p, nil); err != nil {
				t.Fatalf("%s: page %d: %v", name, n, err)
			}
			if len(l.Data) == 0 {
				break
			}
			for _, a := range l.Data {
				if a.Author != "ann" {
					t.Fatalf("%s: annotation of %q listed", name, a.Author)
				}
				got = append(got, a.ID)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: listed %d annotations, want %d newest first\ngot  %v\nwant %v", name, len(got), len(want), got, want)
		}
	}
	for _, limit := range []int64{1, 4, 5, 8, 100} {
		walk(fmt.Sprintf("cursor/%d", limit), func(prev bus.List[bus.Annotation], n int64) (Page, bool) {
			if n == 0 {
				return Page{Limit: limit}, true
			}
			if prev.Next == "" {
				return Page{}, false
			}
			c, err := ParseCursor(prev.Next)
			if err != nil {
				t.Fatal(err)
			}
			return Page{Limit: limit, After: c}, true
		})
		walk(fmt.Sprintf("page/%d", limit), func(_ bus.List[bus.Annotation], n int64) (Page, bool) {
			return Page{Skip: n * limit, Limit: limit}, true
		})
	}
	// Another replica (no memory of the shelves) lists the same.
	writer := s
	s = New(s.db, s.m)
	walk("other replica", func(prev bus.List[bus.Annotation], n int64) (Page, bool) {
		if n == 0 {
			return Page{Limit: 4}, true
		}
		if prev.Next == "" {
			return Page{}, false
		}
		c, err := ParseCursor(prev.Next)
		if err != nil {
			t.Fatal(err)
		}
		return Page{Limit: 4, After: c}, true
	})
	s = writer
	l, err := s.ListAnnotations(ctx, AnnotationFilter{Author: "ann"}, Page{Limit: 100}, nil)
	if err != nil || l.Total == nil || int(*l.Total) != len(want) || l.Next != "" {
		t.Fatalf("one page: total %v, next %q, err %v; want %d and no next", l.Total, l.Next, err, len(want))
	}
	// A cursor of a listing by author is not one of a listing by image.
	l, err = s.ListAnnotations(ctx, AnnotationFilter{Author: "ann"}, Page{Limit: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCursor(l.Next)
	if err != nil || !c.Shelved {
		t.Fatalf("cursor %q: %+v %v, want a shelf cursor", l.Next, c, err)
	}
	if _, err := s.ListAnnotations(ctx, AnnotationFilter{ImageID: "img"}, Page{Limit: 3, After: c}, nil); !errors.Is(err, ErrBadCursor) {
		t.Fatalf("shelf cursor on a listing by image: %v, want ErrBadCursor", err)
	}
}

// TestShelvesFreshStore: a store that starts empty has no annotations from
// before shelves, and a cursor without a shelf is refused for an author.
func TestShelvesFreshStore(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	check(t)(s.InsertAnnotations(ctx, []*bus.AnnotationCreated{annotation("u", "", `{}`), annotation("u", "", `{}`)}))
	if legacy, err := s.shelves.hasLegacy(ctx); err != nil || legacy {
		t.Fatalf("legacy %v, %v; want false on a fresh store", legacy, err)
	}
	_, err := s.ListAnnotations(ctx, AnnotationFilter{Author: "u"}, Page{Limit: 1, After: &Cursor{At: time.Now(), ID: "x"}}, nil)
	if !errors.Is(err, ErrBadCursor) {
		t.Fatalf("cursor without a shelf: %v, want ErrBadCursor", err)
	}
}

func mustDoc(t *testing.T, js string) bson.Raw {
	t.Helper()
	d, ok := jsonToDoc(json.RawMessage(js))
	if !ok {
		t.Fatalf("%s: not storable as a document", js)
	}
	return d
}

// TestListGrades pages through an owner's grades of one image, newest
// submission first, each with its result when stored; another owner's
// grades of the same image, and other images, are not listed.
func TestListGrades(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	at := time.Now().UTC().Truncate(time.Millisecond)
	var subs []*bus.ImageSubmitted
	var want []string
	for i := range 7 {
		sub := submitted(bus.NewID(), "img-1", "erin")
		sub.Time = at.Add(time.Duration(i) * time.Second)
		subs = append(subs, sub, submitted(bus.NewID(), "img-1", "mallory"), submitted(bus.NewID(), "img-2", "erin"))
		want = append(want, sub.ID)
	}
	check(t)(s.recordPending(ctx, subs))
	done := completed(want[6])
	done.ImageID, done.Owner = "img-1", "erin"
	fail := failed(want[5], "undecodable image")
	fail.ImageID = "img-1"
	check(t)(s.ApplyGrades(ctx, []bus.Event{done, fail}))
	slices.Reverse(want)

	var got []bus.Grade
	p := Page{Limit: 3}
	for range 10 {
		l, err := s.ListGrades(ctx, "img-1", "erin", p)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l.Data...)
		if l.Next == "" {
			break
		}
		if p.After, err = ParseCursor(l.Next); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for _, g := range got {
		ids = append(ids, g.ID)
		if g.Owner != "erin" || g.ImageID != "img-1" {
			t.Fatalf("grade %+v listed for erin's img-1", g)
		}
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("listed %v, want %v", ids, want)
	}
	if got[0].Status != bus.GradeStatusCompleted || got[0].Label != "bag" || got[1].Status != bus.GradeStatusFailed ||
		got[1].Reason != "undecodable image" || got[2].Status != bus.GradeStatusPending {
		t.Fatalf("statuses %q/%q, %q/%q, %q; want completed with its label, failed with its reason, pending",
			got[0].Status, got[0].Label, got[1].Status, got[1].Reason, got[2].Status)
	}
	l, err := s.ListGrades(ctx, "img-3", "erin", Page{Limit: 3})
	if err != nil || len(l.Data) != 0 || l.Total == nil || *l.Total != 0 {
		t.Fatalf("unknown image: %+v, %v; want an empty list with total 0", l, err)
	}
}

// TestLegacyGrades: grades stored before the history was one document
// (the submission in the history, the result in CollGrades) read whole,
// in listings too; a result alone in CollGrades is found; a legacy
// submission whose result arrives now is completed in the history.
func TestLegacyGrades(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	at := time.Now().UTC().Truncate(time.Millisecond)
	var subs []*bus.ImageSubmitted
	for i := range 3 {
		sub := submitted(bus.NewID(), "img-l", "erin")
		sub.Time = at.Add(time.Duration(i) * time.Second)
		subs = append(subs, sub)
	}
	// The old submissions consumer stored exactly what recordPending does.
	check(t)(s.recordPending(ctx, subs))
	legacy := func(id, label string) {
		t.Helper()
		c := completed(id)
		c.ImageID, c.Label, c.SubmittedAt = "img-l", label, time.Time{}
		c.Scores = map[string]float64{label: 1}
		if _, err := s.legacy.InsertOne(ctx, docOf(bus.GradeFrom(nil, c))); err != nil {
			t.Fatal(err)
		}
	}
	legacy(subs[0].ID, "old")
	alone := bus.NewID()
	legacy(alone, "alone")
	// subs[1]'s result comes now; subs[2] stays pending.
	now := completed(subs[1].ID)
	now.ImageID, now.Label, now.SubmittedAt = "img-l", "new", time.Time{}
	now.Scores = map[string]float64{"new": 1}
	check(t)(s.ApplyGrades(ctx, []bus.Event{now}))

	l, err := s.ListGrades(ctx, "img-l", "erin", Page{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ id, status, label string }
	var got []row
	for _, g := range l.Data {
		got = append(got, row{g.ID, g.Status, g.Label})
		if g.SubmittedAt.IsZero() {
			t.Errorf("grade %s listed without its submission's time", g.ID)
		}
	}
	want := []row{{subs[2].ID, bus.GradeStatusPending, ""}, {subs[1].ID, bus.GradeStatusCompleted, "new"}, {subs[0].ID, bus.GradeStatusCompleted, "old"}}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	g, ok, err := s.GetGrade(ctx, alone, "erin")
	if err != nil || !ok || g.Status != bus.GradeStatusCompleted || g.Label != "alone" {
		t.Fatalf("a legacy result alone: %+v %v %v", g, ok, err)
	}
	if _, ok, _ := s.GetGrade(ctx, alone, "mallory"); ok {
		t.Fatal("a legacy result visible to another owner")
	}
	g, ok, err = s.GetGrade(ctx, subs[0].ID, "erin")
	if err != nil || !ok || g.Status != bus.GradeStatusCompleted || g.Label != "old" || !g.SubmittedAt.Equal(subs[0].Time) {
		t.Fatalf("a legacy grade in two halves: %+v %v %v", g, ok, err)
	}
}

// TestShelvesAfterRestart: a restarted annotator goes on filling the
// author's newest shelf while it has room, instead of leaving short
// shelves behind at every restart.
func TestShelvesAfterRestart(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	s.shelves.size = 5
	var evs []*bus.AnnotationCreated
	for range 3 {
		evs = append(evs, annotation("a", "", `{}`))
	}
	check(t)(s.InsertAnnotations(ctx, evs))
	first := s
	s = New(s.db, s.m)
	s.shelves.size = 5
	evs = nil
	for range 4 {
		evs = append(evs, annotation("a", "", `{}`))
	}
	check(t)(s.InsertAnnotations(ctx, evs))
	count := func(shelf string) int64 {
		n, err := s.annotations.CountDocuments(ctx, bson.D{{Key: "shelf", Value: shelf}})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if a, b := count("1:a"), count("2:a"); a != 5 || b != 2 {
		t.Fatalf("shelves hold %d and %d, want 5 and 2", a, b)
	}
	// The first process still remembers shelf 1 as the newest: its listing
	// finds shelf 2 all the same.
	l, err := first.ListAnnotations(ctx, AnnotationFilter{Author: "a"}, Page{Limit: 10}, nil)
	if err != nil || len(l.Data) != 7 || l.Data[0].ID != evs[3].ID {
		t.Fatalf("listed %d (first %v), %v; want all 7, the newest first", len(l.Data), l.Data, err)
	}
}

// TestResultsInOneBatch: failures are stored by the same batch insert as
// completed grades; within one batch, whatever the order, a completed
// result wins over a failure of the same grade, and a redelivered failure
// does not replace a completed result.
func TestResultsInOneBatch(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	done := func(id string) bus.Event { return completed(id) }
	fail := func(id string) bus.Event { return failed(id, "undecodable image") }
	check(t)(s.ApplyGrades(ctx, []bus.Event{fail("g1"), done("g1"), done("g2"), fail("g2"), fail("g3"), fail("g3")}))
	check(t)(s.ApplyGrades(ctx, []bus.Event{fail("g1"), fail("g4")}))
	for id, want := range map[string]string{"g1": bus.GradeStatusCompleted, "g2": bus.GradeStatusCompleted, "g3": bus.GradeStatusFailed, "g4": bus.GradeStatusFailed} {
		g, ok, err := s.GetGrade(ctx, id, "")
		if err != nil || !ok || g.Status != want {
			t.Fatalf("%s: %+v %v %v, want %s", id, g, ok, err, want)
		}
		if want == bus.GradeStatusFailed && g.Reason != "undecodable image" || want == bus.GradeStatusCompleted && (g.Reason != "" || g.Label != "bag") {
			t.Fatalf("%s: %+v", id, g)
		}
	}
}

// TestImageShelves walks an owner's catalogue through shelves of 5: every
// live image once, newest first, by cursor, with and without a tag; images
// from before shelves come last; a placeholder made by an early tags event
// gets its shelf when the image is catalogued, and a replay keeps it.
func TestImageShelves(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Millisecond)
	var want, wantEven []string
	for i := range 3 { // from before shelves
		d := imageDoc{ID: fmt.Sprintf("old%d", i), Owner: "olga", Tags: []string{"even"}, Catalogued: true, CreatedAt: at.Add(time.Duration(i) * time.Second)}
		if _, err := s.images.InsertOne(ctx, d); err != nil {
			t.Fatal(err)
		}
		want, wantEven = append(want, d.ID), append(wantEven, d.ID)
	}
	s.imageShelves.size = 5
	check(t)(s.ApplyCatalog(ctx, []bus.Event{tagsSet("early", "olga", "even")})) // a placeholder first
	var evs []bus.Event
	for i := range 17 {
		tags := []string{"all"}
		if i%2 == 0 {
			tags = append(tags, "even")
		}
		id := fmt.Sprintf("img%02d", i)
		if i == 16 {
			id, tags = "early", []string{"all"} // newer than the tags event: these tags win
		}
		ev := catalogued(id, "olga", tags...)
		ev.Time = at.Add(time.Minute + time.Duration(i)*time.Second)
		evs = append(evs, ev, catalogued(fmt.Sprintf("dan%02d", i), "dan", "even"))
		want = append(want, id)
		if i%2 == 0 && id != "early" {
			wantEven = append(wantEven, id)
		}
	}
	check(t)(s.ApplyCatalog(ctx, evs))
	check(t)(s.ApplyCatalog(ctx, evs[len(evs)-2:])) // a replay
	slices.Reverse(want)
	slices.Reverse(wantEven)
	walk := func(tags []string, limit int64) []string {
		t.Helper()
		var got []string
		p := Page{Limit: limit}
		for range 100 {
			l, err := s.ListImages(ctx, ImageFilter{Owner: "olga", Tags: tags}, p)
			if err != nil {
				t.Fatal(err)
			}
			for _, im := range l.Data {
				got = append(got, im.ID)
			}
			if l.Next == "" {
				break
			}
			if p.After, err = ParseCursor(l.Next); err != nil {
				t.Fatal(err)
			}
		}
		return got
	}
	for _, limit := range []int64{1, 4, 7, 100} {
		if got := walk(nil, limit); !slices.Equal(got, want) {
			t.Fatalf("all, pages of %d:\ngot  %v\nwant %v", limit, got, want)
		}
		if got := walk([]string{"even"}, limit); !slices.Equal(got, wantEven) {
			t.Fatalf("even, pages of %d:\ngot  %v\nwant %v", limit, got, wantEven)
		}
	}
	d, ok, err := findOne[imageDoc](ctx, s.images, bson.D{{Key: "_id", Value: "early"}})
	if err != nil || !ok || d.Shelf != "4:olga" {
		t.Fatalf("placeholder catalogued: shelf %q, %v %v; want 4:olga (kept on replay)", d.Shelf, ok, err)
	}
}

// recordPending records submissions as the edge does when it answers them
// before their result: one grade.pending event each.
func (s *Store) recordPending(ctx context.Context, subs []*bus.ImageSubmitted) ([]error, error) {
	evs := make([]bus.Event, len(subs))
	for i, sub := range subs {
		evs[i] = bus.PendingOf(sub)
	}
	return s.ApplyGrades(ctx, evs)
}
