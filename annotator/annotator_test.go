package annotator_test

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/annotator"
	"github.com/gradeline/gradeline/annotator/localmongo"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
)

const dbName = "gradeline_test"

// env is one real NATS server and one real FerretDB, plus clients the test
// uses to publish and to look into the database.
type env struct {
	t        testing.TB
	ns       *server.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	mongo    *localmongo.Server
	mongoDir string
	db       *mongo.Database
	reg      *prometheus.Registry

	mu        sync.Mutex
	published map[string]uint64 // stream -> the last sequence publish stored there
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, reg: prometheus.NewRegistry(), mongoDir: t.TempDir()}
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	e.ns = ns
	ctx := context.Background()
	e.nc, e.js, err = bus.Connect(ctx, ns.ClientURL(), "annotator-test", quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.nc.Close)
	if err := bus.EnsureTopology(ctx, e.js, bus.TopologyOptions{Replicas: 1, MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	e.startMongo("")
	t.Cleanup(func() { _ = e.mongo.Close() })
	mc, err := mongo.Connect(options.Client().ApplyURI(e.mongo.URI()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mc.Disconnect(context.Background()) })
	e.db = mc.Database(dbName)
	return e
}

func (e *env) startMongo(addr string) {
	e.t.Helper()
	srv, err := localmongo.Start(context.Background(), localmongo.Options{Dir: e.mongoDir, Addr: addr, Log: quietLog()})
	if err != nil {
		e.t.Fatalf("embedded FerretDB: %v", err)
	}
	e.mongo = srv
}

func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// run starts the annotator; the returned function stops it and checks
// that it returned without error.
func (e *env) run() (stop func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- annotator.Run(ctx, annotator.Config{
			NATSURL: e.ns.ClientURL(), MongoURI: e.mongo.URI(), Database: dbName,
			Logger: quietLog(), Registerer: e.reg,
		})
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("annotator.Run: %v", err)
		}
	}
	e.t.Cleanup(stop)
	return stop
}

func (e *env) publish(ev bus.Event) {
	e.t.Helper()
	ack, err := bus.Publish(context.Background(), e.js, ev)
	if err != nil {
		e.t.Fatal(err)
	}
	e.stored(ack)
}

// stored notes what a publish stored, for waitIdle.
func (e *env) stored(ack *jetstream.PubAck) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.published == nil {
		e.published = map[string]uint64{}
	}
	e.published[ack.Stream] = max(e.published[ack.Stream], ack.Sequence)
}

// publishRaw stores data on subject with its own Nats-Msg-Id, bypassing the
// stream's duplicate detection keyed by the event id.
func (e *env) publishRaw(subject string, data []byte) {
	e.t.Helper()
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, "raw-"+bus.NewID())
	ack, err := e.js.PublishMsg(context.Background(), msg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.stored(ack)
}

// waitFor polls cond until it holds; it fails the test after a generous
// bound so a bug shows as a failure, not a hang.
func (e *env) waitFor(what string, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s (last state: %s)", what, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitIdle waits until the durable consumer has settled every message of
// its stream: nothing left to deliver and nothing awaiting an ack.
func (e *env) waitIdle(spec bus.ConsumerSpec) {
	e.t.Helper()
	e.waitFor("consumer "+spec.Durable+" idle", func() (bool, string) {
		c, err := e.js.Consumer(context.Background(), spec.Stream, spec.Durable)
		if err != nil {
			return false, err.Error()
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		// The server tells a consumer of new messages asynchronously: right
		// after a publish its info may still say nothing is pending, so
		// idle also means it has got past what this env published.
		e.mu.Lock()
		want := e.published[spec.Stream]
		e.mu.Unlock()
		return info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream >= want,
			fmt.Sprintf("pending=%d ack_pending=%d redelivered=%d delivered up to %d of %d",
				info.NumPending, info.NumAckPending, info.NumRedelivered, info.Delivered.Stream, want)
	})
}

func (e *env) count(coll string, filter bson.D) int64 {
	e.t.Helper()
	n, err := e.db.Collection(coll).CountDocuments(context.Background(), filter)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) waitCount(coll string, want int64) {
	e.t.Helper()
	e.waitFor(fmt.Sprintf("%d documents in %s", want, coll), func() (bool, string) {
		n, err := e.db.Collection(coll).CountDocuments(context.Background(), bson.D{})
		if err != nil {
			return false, err.Error()
		}
		return n >= want, fmt.Sprintf("%d documents", n)
	})
}

func (e *env) counter(name, collection string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "collection" && l.GetValue() == collection {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func annotation(author, image string, i int) *bus.AnnotationCreated {
	return &bus.AnnotationCreated{
		Meta: bus.NewMeta(bus.TypeAnnotationCreated), Author: author, ImageID: image,
		Annotation: json.RawMessage(fmt.Sprintf(`{"label":"cat","i":%d,"box":[1,2,3,4]}`, i)),
	}
}

func TestExactlyOnce(t *testing.T) {
	e := newEnv(t)
	e.run()
	ev := annotation("alice", "img-1", 1)
	e.publish(ev)
	e.publish(ev) // same Nats-Msg-Id: dropped by the stream
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	e.publishRaw(bus.SubjectAnnotationCreated, data) // reaches the consumer again
	info, err := e.js.Stream(context.Background(), bus.StreamAnnotations)
	if err != nil {
		t.Fatal(err)
	}
	if st := info.CachedInfo().State; st.Msgs != 2 {
		t.Fatalf("stream holds %d messages, want 2 (one deduplicated publish, one bypass)", st.Msgs)
	}
	e.waitIdle(bus.ConsumerAnnotator)
	if n := e.count("annotations", bson.D{}); n != 1 {
		t.Fatalf("%d documents, want 1", n)
	}
	var doc bson.M
	if err := e.db.Collection("annotations").FindOne(context.Background(), bson.D{{Key: "_id", Value: ev.ID}}).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if doc["author"] != "alice" || doc["image_id"] != "img-1" {
		t.Fatalf("stored %v", doc)
	}
	if d := e.counter("gradeline_annotator_documents_duplicate_total", "annotations"); d != 1 {
		t.Fatalf("duplicates counter %v, want 1", d)
	}
	if w := e.counter("gradeline_annotator_documents_written_total", "annotations"); w != 1 {
		t.Fatalf("written counter %v, want 1", w)
	}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var observed uint64
	for _, mf := range mfs {
		if mf.GetName() == "gradeline_annotator_mongo_write_seconds" {
			for _, m := range mf.GetMetric() {
				observed += m.GetHistogram().GetSampleCount()
			}
		}
	}
	if observed == 0 {
		t.Fatalf("write latency histogram has %d samples, want at least one", observed)
	}
}

func TestRedeliveryAfterReplay(t *testing.T) {
	e := newEnv(t)
	stop := e.run()
	const n = 40
	for i := range n {
		e.publish(annotation("bob", "", i))
	}
	e.waitCount("annotations", n)
	e.waitIdle(bus.ConsumerAnnotator)
	stop()
	// A fresh durable consumer replays the whole stream: every event is
	// delivered a second time.
	if err := e.js.DeleteConsumer(context.Background(), bus.StreamAnnotations, bus.ConsumerAnnotator.Durable); err != nil {
		t.Fatal(err)
	}
	e.run()
	e.waitFor("replayed events seen as duplicates", func() (bool, string) {
		d := e.counter("gradeline_annotator_documents_duplicate_total", "annotations")
		return d >= n, fmt.Sprintf("%v duplicates", d)
	})
	e.waitIdle(bus.ConsumerAnnotator)
	if c := e.count("annotations", bson.D{}); c != n {
		t.Fatalf("%d documents after replay, want %d", c, n)
	}
}

func TestRestartMidStream(t *testing.T) {
	e := newEnv(t)
	stop := e.run()
	const n = 500
	ids := make(map[string]bool, n)
	for i := range n {
		ev := annotation(fmt.Sprintf("user-%d", i%7), "", i)
		ids[ev.ID] = true
		e.publish(ev)
		if i == n/3 {
			e.waitFor("some annotations stored", func() (bool, string) {
				c := e.count("annotations", bson.D{})
				return c > 0, fmt.Sprint(c)
			})
			stop() // mid-stream: the rest is published while it is down
		}
	}
	if c := e.count("annotations", bson.D{}); c >= n {
		t.Fatalf("all %d stored while stopped: the test did not stop the annotator mid-stream", c)
	}
	e.run()
	e.waitCount("annotations", n)
	e.waitIdle(bus.ConsumerAnnotator)
	cur, err := e.db.Collection("annotations").Find(context.Background(), bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	var docs []struct {
		ID string `bson:"_id"`
	}
	if err := cur.All(context.Background(), &docs); err != nil {
		t.Fatal(err)
	}
	if len(docs) != n {
		t.Fatalf("%d documents, want %d", len(docs), n)
	}
	for _, d := range docs {
		if !ids[d.ID] {
			t.Fatalf("unexpected document %s", d.ID)
		}
		delete(ids, d.ID)
	}
	if len(ids) != 0 {
		t.Fatalf("%d annotations missing", len(ids))
	}
}

func TestPoisonMessages(t *testing.T) {
	e := newEnv(t)
	e.run()
	bad := []struct {
		data   string
		reason string
	}{
		{`{"id": "x", "type": "annotation.created", `, "undecodable JSON"},
		{fmt.Sprintf(`{"id":%q,"type":"annotation.created","schema_version":99,"time":"2026-01-01T00:00:00Z","author":"a","annotation":{}}`, bus.NewID()),
			"unsupported schema version 99"},
		{fmt.Sprintf(`{"id":%q,"type":"annotation.created","schema_version":1,"time":"2026-01-01T00:00:00Z","author":"a","annotation":[1]}`, bus.NewID()),
			"annotation: must be a JSON object"},
		{fmt.Sprintf(`{"id":%q,"type":"grade.failed","schema_version":1,"time":"2026-01-01T00:00:00Z","grade_id":"g","reason":"r"}`, bus.NewID()),
			`unexpected event type "grade.failed"`},
	}
	for _, b := range bad {
		e.publishRaw(bus.SubjectAnnotationCreated, []byte(b.data))
	}
	good := annotation("carol", "", 7)
	e.publish(good)
	e.waitIdle(bus.ConsumerAnnotator)
	if c := e.count("annotations", bson.D{}); c != 1 {
		t.Fatalf("%d documents, want only the good one", c)
	}
	// Every poison message is on the dead-letter stream with its reason.
	cons, err := e.js.OrderedConsumer(context.Background(), bus.StreamDeadLetter, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.SubjectDeadLetterPrefix + bus.ConsumerAnnotator.Durable},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{} // data -> reason
	for len(got) < len(bad) {
		m, err := cons.Next(jetstream.FetchMaxWait(30 * time.Second))
		if err != nil {
			t.Fatalf("dead letters: have %d of %d: %v", len(got), len(bad), err)
		}
		var dl bus.DeadLetter
		if err := json.Unmarshal(m.Data(), &dl); err != nil {
			t.Fatal(err)
		}
		if dl.Stream != bus.StreamAnnotations || dl.Consumer != bus.ConsumerAnnotator.Durable || dl.Subject != bus.SubjectAnnotationCreated {
			t.Fatalf("dead letter origin: %+v", dl)
		}
		got[string(dl.Data)] = dl.Reason
	}
	for _, b := range bad {
		reason, ok := got[b.data]
		if !ok {
			t.Fatalf("not dead-lettered: %s", b.data)
		}
		if !strings.Contains(reason, b.reason) {
			t.Fatalf("reason %q does not mention %q", reason, b.reason)
		}
	}
}

func TestMongoOutage(t *testing.T) {
	e := newEnv(t)
	e.run()
	for i := range 10 {
		e.publish(annotation("dave", "", i))
	}
	e.waitCount("annotations", 10)
	e.waitIdle(bus.ConsumerAnnotator)

	addr := e.mongo.Addr()
	if err := e.mongo.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 10; i < 60; i++ {
		e.publish(annotation("dave", "", i))
	}
	// The consumer took the messages but cannot ack them while MongoDB is down.
	e.waitFor("deliveries held unacked during the outage", func() (bool, string) {
		c, err := e.js.Consumer(context.Background(), bus.StreamAnnotations, bus.ConsumerAnnotator.Durable)
		if err != nil {
			return false, err.Error()
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return info.NumAckPending > 0 && info.AckFloor.Stream == 10,
			fmt.Sprintf("ack_pending=%d ack_floor=%d", info.NumAckPending, info.AckFloor.Stream)
	})
	// Queries answer 503 meanwhile, not 500 and not silence.
	_, err := request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "u"})
	wantCode(t, err, http.StatusServiceUnavailable)
	e.startMongo(addr)
	e.waitCount("annotations", 60)
	e.waitIdle(bus.ConsumerAnnotator)
	if c := e.count("annotations", bson.D{}); c != 60 {
		t.Fatalf("%d documents after the outage, want 60", c)
	}
}

func TestStartWhileMongoDown(t *testing.T) {
	e := newEnv(t)
	addr := e.mongo.Addr()
	if err := e.mongo.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		e.publish(annotation("ivy", "", i))
	}
	e.run()
	e.waitFor("deliveries attempted while MongoDB is down", func() (bool, string) {
		c, err := e.js.Consumer(context.Background(), bus.StreamAnnotations, bus.ConsumerAnnotator.Durable)
		if err != nil {
			return false, err.Error()
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return info.Delivered.Stream > 0 && info.AckFloor.Stream == 0,
			fmt.Sprintf("delivered=%d ack_floor=%d", info.Delivered.Stream, info.AckFloor.Stream)
	})
	e.startMongo(addr)
	e.waitCount("annotations", 20)
	e.waitIdle(bus.ConsumerAnnotator)
	if c := e.count("annotations", bson.D{}); c != 20 {
		t.Fatalf("%d documents, want 20", c)
	}
	// The indexes were created once MongoDB came back.
	cur, err := e.db.Collection("annotations").Indexes().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var idx []bson.M
	if err := cur.All(context.Background(), &idx); err != nil || len(idx) != 4 {
		t.Fatalf("indexes %v, %v; want _id, image_id, author, shelf", idx, err)
	}
}

func catalogued(img, owner string, tags ...string) *bus.ImageCatalogued {
	return &bus.ImageCatalogued{
		Meta: bus.NewMeta(bus.TypeImageCatalogued), ImageID: img, Owner: owner, Filename: img + ".jpg",
		Width: 640, Height: 480, Tags: tags,
		Image: bus.ImageRef{Object: "images/" + img, SHA256: strings.Repeat("c", 64), ContentType: "image/jpeg", Size: 1234},
	}
}

func tagsSet(img, owner string, tags ...string) *bus.ImageTagsSet {
	return &bus.ImageTagsSet{Meta: bus.NewMeta(bus.TypeImageTagsSet), ImageID: img, Owner: owner, Tags: tags}
}

func request[Resp any](t *testing.T, e *env, subject string, req any) (Resp, error) {
	t.Helper()
	var resp Resp
	var err error
	// The service registers shortly after Run starts.
	e.waitFor("query service", func() (bool, string) {
		resp, err = bus.Request[Resp](context.Background(), e.nc, subject, req)
		return !errors.Is(err, bus.ErrUnavailable), fmt.Sprint(err)
	})
	return resp, err
}

func wantCode(t *testing.T, err error, code bus.Code) {
	t.Helper()
	var be *bus.Error
	if !errors.As(err, &be) || be.Code != code {
		t.Fatalf("want *bus.Error %d, got %v", code, err)
	}
}

func TestCatalogue(t *testing.T) {
	e := newEnv(t)
	e.run()
	// Tag changes published in the wrong order: the newer one wins.
	cat := catalogued("img-a", "erin", "orig")
	older, newer := tagsSet("img-a", "erin", "older"), tagsSet("img-a", "erin", "newer", "x")
	e.publish(cat)
	e.publish(newer)
	e.publish(older)
	// Deleted, then the catalogued event replayed (bypassing stream dedup).
	gone := catalogued("img-b", "erin", "orig")
	e.publish(gone)
	e.publish(&bus.ImageDeleted{Meta: bus.NewMeta(bus.TypeImageDeleted), ImageID: "img-b", Owner: "erin"})
	data, _ := json.Marshal(gone)
	e.publishRaw(bus.SubjectImageCatalogued, data)
	e.waitIdle(bus.ConsumerAnnotatorCatalog)

	img, err := request[bus.Image](t, e, bus.SvcImagesGet, bus.ImageGetQuery{Owner: "erin", ID: "img-a"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(img.Tags, ",") != "newer,x" || img.Filename != "img-a.jpg" || img.Width != 640 ||
		img.SHA256 != cat.Image.SHA256 || img.Size != 1234 || img.ContentType != "image/jpeg" {
		t.Fatalf("image: %+v", img)
	}
	_, err = request[bus.Image](t, e, bus.SvcImagesGet, bus.ImageGetQuery{Owner: "erin", ID: "img-b"})
	wantCode(t, err, http.StatusNotFound)
	page, err := request[bus.List[bus.Image]](t, e, bus.SvcImagesList, bus.ImagesQuery{Owner: "erin"})
	if err != nil || page.Total == nil || *page.Total != 1 || len(page.Data) != 1 || page.Data[0].ID != "img-a" {
		t.Fatalf("list: %+v %v", page, err)
	}
}

func TestGrades(t *testing.T) {
	e := newEnv(t)
	e.run()
	sub := func() *bus.ImageSubmitted {
		return &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: "img", Owner: "frank", Model: "fashion",
			Image: bus.ImageRef{Object: "o", SHA256: strings.Repeat("d", 64), ContentType: "image/png", Size: 9}}
	}
	done := func(s *bus.ImageSubmitted) *bus.GradeCompleted {
		return &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: s.ID, ImageID: s.ImageID, Owner: s.Owner,
			Model: "fashion", ModelVersion: "1", Label: "bag", Score: 0.8, Scores: map[string]float64{"bag": 0.8, "coat": 0.2},
			InferenceMS: 2, BatchSize: 3, SubmittedAt: s.Time}
	}
	first, second, pending := sub(), sub(), sub()
	e.publish(done(first))           // answered with its result: no pending record
	e.publish(bus.PendingOf(second)) // answered 202, then its result
	e.waitIdle(bus.ConsumerAnnotatorGrades)
	e.publish(done(second))
	e.publish(bus.PendingOf(pending))
	failedID := bus.NewID()
	e.publish(&bus.GradeFailed{Meta: bus.NewMeta(bus.TypeGradeFailed), GradeID: failedID, Owner: "frank", Reason: "cannot decode image"})
	e.waitIdle(bus.ConsumerAnnotatorGrades)

	for _, s := range []*bus.ImageSubmitted{first, second} {
		g, err := request[bus.Grade](t, e, bus.SvcGradesGet, bus.GradeGetQuery{ID: s.ID, Owner: "frank"})
		if err != nil {
			t.Fatal(err)
		}
		if g.Status != bus.GradeStatusCompleted || g.Label != "bag" || g.Scores["coat"] != 0.2 || g.SubmittedAt.IsZero() ||
			g.CompletedAt.IsZero() || g.Model != "fashion" || g.BatchSize != 3 {
			t.Fatalf("grade %s: %+v", s.ID, g)
		}
	}
	g, err := request[bus.Grade](t, e, bus.SvcGradesGet, bus.GradeGetQuery{ID: pending.ID, Owner: "frank"})
	if err != nil || g.Status != bus.GradeStatusPending || g.Owner != "frank" {
		t.Fatalf("pending grade: %+v %v", g, err)
	}
	g, err = request[bus.Grade](t, e, bus.SvcGradesGet, bus.GradeGetQuery{ID: failedID, Owner: "frank"})
	if err != nil || g.Status != bus.GradeStatusFailed || g.Reason != "cannot decode image" {
		t.Fatalf("failed grade: %+v %v", g, err)
	}
	_, err = request[bus.Grade](t, e, bus.SvcGradesGet, bus.GradeGetQuery{ID: first.ID, Owner: "mallory"})
	wantCode(t, err, http.StatusNotFound)
	_, err = request[bus.Grade](t, e, bus.SvcGradesGet, bus.GradeGetQuery{ID: bus.NewID(), Owner: "frank"})
	wantCode(t, err, http.StatusNotFound)
	_, err = request[bus.Grade](t, e, bus.SvcGradesGet, bus.GradeGetQuery{})
	wantCode(t, err, http.StatusUnprocessableEntity)
	// No owner is no grade, never "any owner's".
	_, err = request[bus.Grade](t, e, bus.SvcGradesGet, bus.GradeGetQuery{ID: first.ID})
	wantCode(t, err, http.StatusUnprocessableEntity)
	// One document per grade, in the grade history alone.
	if c := e.count("grade_submissions", bson.D{}); c != 4 {
		t.Fatalf("%d grades in the history, want 4", c)
	}
	if c := e.count("grades", bson.D{}); c != 0 {
		t.Fatalf("%d legacy grade results written, want 0", c)
	}
}

func TestQueryService(t *testing.T) {
	e := newEnv(t)
	e.run()
	const n = 137
	byAuthor := map[string]int{}
	var last *bus.AnnotationCreated
	for i := range n {
		author := []string{"gina", "hank"}[i%2]
		img := fmt.Sprintf("img-%d", i%5)
		ev := annotation(author, img, i)
		byAuthor[author]++
		e.publish(ev)
		last = ev
	}
	for i := range 25 {
		tags := []string{"all"}
		if i%5 == 0 {
			tags = append(tags, "five")
		}
		e.publish(catalogued(fmt.Sprintf("pic-%02d", i), "gina", tags...))
	}
	e.publish(catalogued("pic-hank", "hank", "all", "five"))
	e.publish(catalogued("img-3", "gina"))
	e.waitIdle(bus.ConsumerAnnotator)
	e.waitIdle(bus.ConsumerAnnotatorCatalog)

	// Walk gina's own annotations by cursor: no overlap, no gap, newest first.
	seen := map[string]bool{}
	var prev time.Time
	cursor := ""
	mine := byAuthor["gina"]
	for p := 1; ; p++ {
		page, err := request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "gina", Cursor: cursor, PerPage: 10})
		if err != nil {
			t.Fatal(err)
		}
		if page.Total != nil || page.PerPage != 10 {
			t.Fatalf("page %d header: total=%v per_page=%d", p, page.Total, page.PerPage)
		}
		for _, a := range page.Data {
			if seen[a.ID] || a.Author != "gina" {
				t.Fatalf("annotation %s (by %s) on two pages or not gina's", a.ID, a.Author)
			}
			if !prev.IsZero() && a.CreatedAt.After(prev) {
				t.Fatal("not sorted newest first")
			}
			seen[a.ID], prev = true, a.CreatedAt
		}
		if cursor = page.Next; cursor == "" {
			if p != (mine+9)/10 {
				t.Fatalf("ran out at page %d", p)
			}
			break
		}
	}
	if len(seen) != mine {
		t.Fatalf("walk saw %d annotations, want %d", len(seen), mine)
	}
	_, err := request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "gina", Cursor: "not-a-cursor"})
	wantCode(t, err, http.StatusUnprocessableEntity)

	// Filters and defaults; a result that fits one page carries its total.
	page, err := request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "hank", Author: "hank", PerPage: 1000})
	if err != nil || page.Total == nil || *page.Total != int64(byAuthor["hank"]) || len(page.Data) != byAuthor["hank"] || page.Next != "" {
		t.Fatalf("author filter: total=%v len=%d err=%v", page.Total, len(page.Data), err)
	}
	page, err = request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "gina", ImageID: "img-3", Author: "gina"})
	if err != nil || page.PerPage != bus.DefaultPerPage {
		t.Fatalf("defaults: %+v %v", page, err)
	}
	for _, a := range page.Data {
		if a.ImageID != "img-3" || a.Author != "gina" {
			t.Fatalf("filter leaked %+v", a)
		}
	}
	if page.Total == nil || *page.Total == 0 || *page.Total != int64(len(page.Data)) {
		t.Fatalf("image+author filter total %v len %d", page.Total, len(page.Data))
	}
	page, err = request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "gina", Page: 1 << 40, PerPage: 1000})
	if err != nil || len(page.Data) != 0 || page.Next != "" {
		t.Fatalf("far page: %+v %v", page, err)
	}

	// Visibility: hank sees none of gina's annotations on img-3 (hers, not
	// shared) nor lists another author without an image; nobody lists
	// without saying who asks.
	_, err = request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "hank", ImageID: "img-3"})
	wantCode(t, err, http.StatusNotFound)
	_, err = request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "hank", Author: "gina"})
	wantCode(t, err, http.StatusUnprocessableEntity)
	_, err = request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{})
	wantCode(t, err, http.StatusUnprocessableEntity)
	img3, err := request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "gina", ImageID: "img-3", Author: "gina", PerPage: 1})
	if err != nil || len(img3.Data) != 1 {
		t.Fatalf("img-3 as its owner: %+v %v", img3, err)
	}
	onImg3 := img3.Data[0]
	_, err = request[bus.Annotation](t, e, bus.SvcAnnotationsGet, bus.AnnotationGetQuery{Viewer: "hank", ID: onImg3.ID})
	wantCode(t, err, http.StatusNotFound)
	// Shared with hank: he sees every annotation on img-3, gina's included.
	e.publish(&bus.ImageSharesSet{Meta: bus.NewMeta(bus.TypeImageSharesSet), ImageID: "img-3", Owner: "gina", Shares: []string{"hank"}})
	e.waitIdle(bus.ConsumerAnnotatorCatalog)
	shared, err := request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, bus.AnnotationsQuery{Viewer: "hank", ImageID: "img-3", PerPage: 1000})
	if err != nil || len(shared.Data) != n/5+1 && len(shared.Data) != n/5 {
		t.Fatalf("shared image: %d annotations, %v", len(shared.Data), err)
	}
	if got, err := request[bus.Annotation](t, e, bus.SvcAnnotationsGet, bus.AnnotationGetQuery{Viewer: "hank", ID: onImg3.ID}); err != nil || got.ID != onImg3.ID {
		t.Fatalf("shared annotation: %+v %v", got, err)
	}
	if img, err := request[bus.Image](t, e, bus.SvcImagesGet, bus.ImageGetQuery{Owner: "hank", ID: "img-3"}); err != nil || img.Shares != nil {
		t.Fatalf("shared image as seen by hank: %+v %v (the share list is the owner's)", img, err)
	}
	if img, err := request[bus.Image](t, e, bus.SvcImagesGet, bus.ImageGetQuery{Owner: "gina", ID: "img-3"}); err != nil || len(img.Shares) != 1 {
		t.Fatalf("shared image as seen by gina: %+v %v", img, err)
	}

	got, err := request[bus.Annotation](t, e, bus.SvcAnnotationsGet, bus.AnnotationGetQuery{Viewer: last.Author, ID: last.ID})
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if err := json.Unmarshal(got.Annotation, &body); err != nil || body["i"] != float64(n-1) || got.Author != last.Author {
		t.Fatalf("get: %+v (%s) %v", got, got.Annotation, err)
	}
	_, err = request[bus.Annotation](t, e, bus.SvcAnnotationsGet, bus.AnnotationGetQuery{Viewer: last.Author, ID: bus.NewID()})
	wantCode(t, err, http.StatusNotFound)

	// Bad pagination and missing fields: 422.
	for _, q := range []bus.AnnotationsQuery{{Viewer: "gina", Page: -1}, {Viewer: "gina", PerPage: -5}, {Viewer: "gina", PerPage: bus.MaxPerPage + 1}} {
		_, err = request[bus.List[bus.Annotation]](t, e, bus.SvcAnnotationsList, q)
		wantCode(t, err, http.StatusUnprocessableEntity)
	}
	_, err = request[bus.Annotation](t, e, bus.SvcAnnotationsGet, bus.AnnotationGetQuery{})
	wantCode(t, err, http.StatusUnprocessableEntity)
	_, err = request[bus.List[bus.Image]](t, e, bus.SvcImagesList, bus.ImagesQuery{})
	wantCode(t, err, http.StatusUnprocessableEntity)
	_, err = request[bus.List[bus.Image]](t, e, bus.SvcImagesList, bus.ImagesQuery{Owner: "gina", PerPage: 5000})
	wantCode(t, err, http.StatusUnprocessableEntity)
	_, err = request[bus.Image](t, e, bus.SvcImagesGet, bus.ImageGetQuery{Owner: "gina"})
	wantCode(t, err, http.StatusUnprocessableEntity)

	// Malformed request bodies: 400, and the service keeps answering.
	for _, subj := range []string{bus.SvcAnnotationsList, bus.SvcAnnotationsGet, bus.SvcImagesList, bus.SvcImagesGet, bus.SvcGradesGet} {
		reply, err := e.nc.Request(subj, []byte(`{"page": "one"`), 10*time.Second)
		if err != nil || reply.Header.Get(micro.ErrorCodeHeader) != "400" {
			t.Fatalf("%s: truncated JSON: %v %v", subj, err, reply)
		}
		_, err = request[json.RawMessage](t, e, subj, json.RawMessage(`{"page":"x","per_page":[],"id":5,"owner":{}}`))
		wantCode(t, err, http.StatusBadRequest)
	}

	// Images: owner scope, tags all-match, pagination with total.
	imgs := map[string]bool{}
	for p := 1; p <= 3; p++ {
		ip, err := request[bus.List[bus.Image]](t, e, bus.SvcImagesList, bus.ImagesQuery{Owner: "gina", Tags: []string{"all"}, Page: p, PerPage: 10})
		if err != nil || (p < 3) != (ip.Next != "") {
			t.Fatalf("images page %d: next %q err %v", p, ip.Next, err)
		}
		for _, im := range ip.Data {
			if imgs[im.ID] || im.Owner != "gina" {
				t.Fatalf("images page %d: %s repeated or foreign", p, im.ID)
			}
			imgs[im.ID] = true
		}
	}
	if len(imgs) != 25 {
		t.Fatalf("image walk saw %d, want 25", len(imgs))
	}
	ip, err := request[bus.List[bus.Image]](t, e, bus.SvcImagesList, bus.ImagesQuery{Owner: "gina", Tags: []string{"five", "all"}})
	if err != nil || ip.Total == nil || *ip.Total != 5 {
		t.Fatalf("tags all-match: total %v err %v", ip.Total, err)
	}
	ip, err = request[bus.List[bus.Image]](t, e, bus.SvcImagesList, bus.ImagesQuery{Owner: "gina", Tags: []string{"five", "nope"}})
	if err != nil || ip.Total == nil || *ip.Total != 0 || ip.Data == nil {
		t.Fatalf("no match: %+v %v", ip, err)
	}
	_, err = request[bus.Image](t, e, bus.SvcImagesGet, bus.ImageGetQuery{Owner: "gina", ID: "pic-hank"})
	wantCode(t, err, http.StatusNotFound)
	im, err := request[bus.Image](t, e, bus.SvcImagesGet, bus.ImageGetQuery{Owner: "hank", ID: "pic-hank"})
	if err != nil || im.ID != "pic-hank" {
		t.Fatalf("own image: %+v %v", im, err)
	}
}

func TestRunConfigErrors(t *testing.T) {
	ctx := context.Background()
	for name, cfg := range map[string]annotator.Config{
		"no nats":  {MongoURI: "mongodb://127.0.0.1:1/"},
		"no mongo": {NATSURL: "nats://127.0.0.1:1"},
	} {
		if err := annotator.Run(ctx, cfg); err == nil {
			t.Fatalf("%s: Run succeeded", name)
		}
	}
	// Unreachable NATS fails fast instead of hanging.
	var returned atomic.Bool
	err := annotator.Run(ctx, annotator.Config{NATSURL: "nats://127.0.0.1:1", MongoURI: "mongodb://127.0.0.1:1/", Registerer: prometheus.NewRegistry()})
	returned.Store(true)
	if err == nil {
		t.Fatal("Run with unreachable NATS succeeded")
	}
}

// TestGradeSubmissionAndResultAtOnce publishes each grade's pending record
// and its result back to back, in both orders, so both writes of one
// grade land in the same batch or in batches at the same moment: every
// grade must still read as completed, with its submission's time.
func TestGradeSubmissionAndResultAtOnce(t *testing.T) {
	e := newEnv(t)
	e.run()
	const n = 150
	subs := make([]*bus.ImageSubmitted, n)
	for i := range subs {
		s := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: fmt.Sprint("img", i), Owner: "grace", Model: "digits",
			Image: bus.ImageRef{Object: "o", SHA256: strings.Repeat("e", 64), ContentType: "image/png", Size: 9}}
		subs[i] = s
		// Answered 202 and graded at the same moment: the pending
		// record and the result reach the consumer together, in either
		// order.
		pe := bus.PendingOf(s)
		res := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: s.ID, ImageID: s.ImageID, Owner: s.Owner,
			Model: "digits", ModelVersion: "1", Label: "7", Score: 0.9, Scores: map[string]float64{"7": 0.9, "1": 0.1}, BatchSize: 1,
			SubmittedAt: s.Time}
		if i%2 == 0 {
			e.publish(pe)
			e.publish(res)
		} else {
			e.publish(res)
			e.publish(pe)
		}
	}
	e.waitIdle(bus.ConsumerAnnotatorGrades)
	for _, s := range subs {
		g, err := request[bus.Grade](t, e, bus.SvcGradesGet, bus.GradeGetQuery{ID: s.ID, Owner: "grace"})
		if err != nil || g.Status != bus.GradeStatusCompleted || g.Label != "7" || g.SubmittedAt.IsZero() || g.ImageID != s.ImageID {
			t.Fatalf("grade %s: %+v %v", s.ID, g, err)
		}
	}
}

func TestMongoCheck(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.db.Collection("annotations").InsertOne(ctx, bson.D{{Key: "_id", Value: "x"}}); err != nil {
		t.Fatal(err)
	}
	// The check's client lives until checkCtx ends.
	checkCtx, stopCheck := context.WithCancel(context.Background())
	defer stopCheck()
	check := annotator.MongoCheck(checkCtx, e.mongo.URI(), dbName)
	if err := check(ctx); err != nil {
		t.Fatalf("running FerretDB: %v", err)
	}
	if err := annotator.MongoCheck(ctx, "mongodb://127.0.0.1:1/", "")(ctx); err == nil {
		t.Fatal("closed port reported ready")
	}
	if err := annotator.MongoCheck(ctx, "not a uri", "")(ctx); err == nil {
		t.Fatal("malformed URI reported ready")
	}
	// A store that accepts connections but stops answering (the jammed
	// pool of issue 9) is not ready, within the check's own deadline; it
	// is ready again once it answers.
	pid := e.mongo.PostgresPID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := sync.OnceFunc(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	t.Cleanup(cont)
	// Backends already connected are separate processes: stop them too.
	stopped := stopChildren(t, pid)
	if err := check(context.Background()); err == nil {
		t.Fatal("a store that does not answer reported ready")
	}
	for _, c := range stopped {
		_ = syscall.Kill(c, syscall.SIGCONT)
	}
	cont()
	deadline := time.Now().Add(10 * time.Second)
	for check(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("not ready again after the store answers")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Once its context ends the client is disconnected (an embedded
	// store's shutdown waits for open connections).
	stopCheck()
	for err := check(context.Background()); !errors.Is(err, mongo.ErrClientDisconnected); err = check(context.Background()) {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatalf("after its context ended, the check's client is still connected (check: %v)", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stopChildren SIGSTOPs the child processes of pid (PostgreSQL backends).
func stopChildren(t *testing.T, pid int) []int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		c, _ := strconv.Atoi(f)
		if syscall.Kill(c, syscall.SIGSTOP) == nil {
			out = append(out, c)
		}
	}
	t.Cleanup(func() {
		for _, c := range out {
			_ = syscall.Kill(c, syscall.SIGCONT)
		}
	})
	return out
}

// TestGradeReadYourWrites reads each grade right after its events were
// accepted, without waiting for the consumers: a submission carried as
// AfterSeq reads as pending (never unknown), and a published result reads
// as the result (never pending), since the query waits for what the
// streams already hold.
func TestGradeReadYourWrites(t *testing.T) {
	e := newEnv(t)
	e.run()
	// The query service is up before the timed reads.
	_, err := request[bus.Grade](t, e, bus.SvcGradesGet, bus.GradeGetQuery{ID: bus.NewID(), Owner: "heidi"})
	wantCode(t, err, http.StatusNotFound)
	ctx := context.Background()
	submit := func() *bus.ImageSubmitted {
		return &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: "img-" + bus.NewID(), Owner: "heidi", Model: "digits",
			Image: bus.ImageRef{Object: "o", SHA256: strings.Repeat("f", 64), ContentType: "image/png", Size: 9}}
	}
	// publish publishes as the edge and inference do and returns the GRADES
	// sequence the edge notes for the owner's next read.
	publish := func(t *testing.T, ev bus.Event) uint64 {
		ack, err := bus.Publish(ctx, e.js, ev)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	completed := func(s *bus.ImageSubmitted) bus.Event {
		return &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: s.ID, ImageID: s.ImageID, Owner: s.Owner,
			Model: s.Model, ModelVersion: "1", Label: "7", Score: 0.9, Scores: map[string]float64{"7": 0.9, "1": 0.1}, BatchSize: 1,
			SubmittedAt: s.Time}
	}
	for _, tc := range []struct {
		name string
		// pending: the edge answered 202 and published the grade.pending
		// record before the result.
		pending bool
		result  func(*bus.ImageSubmitted) bus.Event // nil: no result yet
		owner   string                              // "" = the submitter
		// stored: the pending record is read back before the result is
		// published, and the read of the result carries no AfterSeq
		// (another edge replica): only the result is waited for.
		stored bool
		// elsewhere: read through another edge replica, which noted no
		// sequence for the owner.
		elsewhere bool
		want      string // status, or "404"
	}{
		{name: "answered pending", pending: true, want: bus.GradeStatusPending},
		{name: "answered with its result, read elsewhere", result: completed, elsewhere: true, want: bus.GradeStatusCompleted},
		{name: "answered with its result", result: completed, want: bus.GradeStatusCompleted},
		{name: "answered failed", result: func(s *bus.ImageSubmitted) bus.Event {
			return &bus.GradeFailed{Meta: bus.NewMeta(bus.TypeGradeFailed), GradeID: s.ID, ImageID: s.ImageID, Owner: s.Owner,
				Model: s.Model, Reason: "cannot decode image", SubmittedAt: s.Time}
		}, want: bus.GradeStatusFailed},
		{name: "pending, then completed", pending: true, stored: true, result: completed, want: bus.GradeStatusCompleted},
		{name: "another owner's", pending: true, owner: "ivan", want: "404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Repeated: one lucky read proves little about a race.
			for range 20 {
				s := submit()
				var seq uint64 // what the edge that answered notes
				if tc.pending {
					seq = publish(t, bus.PendingOf(s))
				}
				if tc.stored {
					// A read with AfterSeq returns once the record is stored.
					if g, err := bus.Request[bus.Grade](ctx, e.nc, bus.SvcGradesGet, bus.GradeGetQuery{ID: s.ID, Owner: s.Owner, AfterSeq: seq}); err != nil || g.Status != bus.GradeStatusPending {
						t.Fatalf("submitted grade: %+v %v", g, err)
					}
				}
				if tc.result != nil {
					seq = publish(t, tc.result(s))
				}
				if tc.stored || tc.elsewhere {
					seq = 0
				}
				owner := cmp.Or(tc.owner, s.Owner)
				g, err := bus.Request[bus.Grade](ctx, e.nc, bus.SvcGradesGet, bus.GradeGetQuery{ID: s.ID, Owner: owner, AfterSeq: seq})
				if tc.want == "404" {
					wantCode(t, err, http.StatusNotFound)
					continue
				}
				if err != nil || g.Status != tc.want || g.ID != s.ID || g.ImageID != s.ImageID || g.Owner != s.Owner ||
					!g.SubmittedAt.Equal(s.Time.Truncate(time.Millisecond)) {
					t.Fatalf("grade read at once: %+v %v; want %s submitted at %s", g, err, tc.want, s.Time)
				}
			}
		})
	}
}
