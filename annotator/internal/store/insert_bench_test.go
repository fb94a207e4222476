package store

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// benchBody is the annotation make bench posts (140 bytes).
const benchBody = `{"label":"cat","box":[12,40,128,96],"confidence":0.93,"notes":"left ear partly hidden","by":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`

// BenchmarkInsertAnnotations measures the embedded store's ceiling for
// annotation writes: batches of 256 annotations by one author (as wrk
// posts them) through InsertAnnotations, the annotator's write, into a
// collection whose indexes the mirror has already handled. ns/op is per
// batch. Besides annotations/s it reports the CPU time per annotation of
// PostgreSQL (its processes) and of this process (the driver, FerretDB
// and the store's own work), which a busy machine disturbs less than the
// rate.
func BenchmarkInsertAnnotations(b *testing.B) {
	ctx := context.Background()
	s, _ := newStore(b)
	batch := func() []*bus.AnnotationCreated {
		evs := make([]*bus.AnnotationCreated, 256)
		for i := range evs {
			evs[i] = annotation("bench", "", benchBody)
		}
		return evs
	}
	for range 4 {
		check(b)(s.InsertAnnotations(ctx, batch()))
	}
	syncIndexes(b, ctx)
	cpu := startCPU()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		evs := batch()
		b.StartTimer()
		check(b)(s.InsertAnnotations(ctx, evs))
	}
	b.StopTimer()
	cpu.report(b, 256*b.N, "annotation")
}

// BenchmarkInsertAnnotationBuckets measures what MongoDB's bucket pattern
// (many annotations in one document) would cost the embedded store: the
// annotations of BenchmarkInsertAnnotations, 64 to a document, inserted
// into a collection of their own with no secondary index (a real layout
// would need some, so this is a lower bound). It is the evidence for not
// storing them so: on 2026-12-03 buckets cost 39–40 µs in Go and 22–24 in
// PostgreSQL per annotation against 67–80 and 39–40 one to a document,
// which leaves the whole path near 220 µs of CPU per stored annotation,
// not the ~125 µs issue 13's targets allow on two cores; and FerretDB
// does not push a lookup of an id inside an array down to PostgreSQL, so
// every read of one annotation would scan.
func BenchmarkInsertAnnotationBuckets(b *testing.B) {
	ctx := context.Background()
	s, _ := newStore(b)
	coll := s.db.Collection("bench_buckets")
	const perBucket = 64
	batch := func() []any {
		docs := make([]any, 256/perBucket)
		for i := range docs {
			bucket := make([]annotationDoc, perBucket)
			for k := range bucket {
				ev := annotation("bench", "", benchBody)
				doc, _ := jsonToDoc(ev.Annotation)
				bucket[k] = annotationDoc{ID: ev.ID, ImageID: ev.ImageID, Author: ev.Author, CreatedAt: ev.Time.UTC(), Event: ev.ID, Annotation: doc}
			}
			docs[i] = bson.D{{Key: "_id", Value: bus.NewID()}, {Key: "author", Value: "bench"}, {Key: "annotations", Value: bucket}}
		}
		return docs
	}
	for range 4 {
		if _, err := coll.InsertMany(ctx, batch()); err != nil {
			b.Fatal(err)
		}
	}
	cpu := startCPU()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		docs := batch()
		b.StartTimer()
		if _, err := coll.InsertMany(ctx, docs); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu.report(b, 256*b.N, "annotation")
}

// syncIndexes has the index mirror handle the collections now. It gives
// up on a lock it would wait for (55P03) and runs again, as its
// background ticks do.
func syncIndexes(b *testing.B, ctx context.Context) {
	for i := 0; ; i++ {
		err := server.SyncIndexes(ctx)
		if err == nil {
			return
		}
		if i == 100 || !strings.Contains(err.Error(), "55P03") {
			b.Fatal(err)
		}
	}
}

// cpuMark is the CPU time PostgreSQL and this process had used at a start.
type cpuMark struct{ pg, self time.Duration }

func startCPU() cpuMark { return cpuMark{childrenCPU(server.PostgresPID()), selfCPU()} }

// report adds the rate of n items and the CPU per item since the mark.
func (m cpuMark) report(b *testing.B, n int, item string) {
	f := float64(n)
	b.ReportMetric(f/b.Elapsed().Seconds(), item+"s/s")
	b.ReportMetric(float64((childrenCPU(server.PostgresPID())-m.pg).Microseconds())/f, "pg-µs/"+item)
	b.ReportMetric(float64((selfCPU()-m.self).Microseconds())/f, "go-µs/"+item)
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// childrenCPU is the CPU time of process pid and its children (the
// PostgreSQL postmaster and its backends), from /proc.
func childrenCPU(pid int) time.Duration {
	var ticks int64
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(data)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		me, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		parent, _ := strconv.Atoi(f[1])
		if me != pid && parent != pid {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + k
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// fashionLabels are the ten classes of the bundled fashion model.
var fashionLabels = []string{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}

// BenchmarkStoreGrades measures the embedded store's ceiling for grade
// history: per grade, its result with ten scores (ApplyGrades, the whole
// grade in one document), in batches of 256 as the consumer writes them.
// ns/op is per batch; CPU is reported per grade as in
// BenchmarkInsertAnnotations.
func BenchmarkStoreGrades(b *testing.B) {
	ctx := context.Background()
	s, _ := newStore(b)
	batch := func() []bus.Event {
		results := make([]bus.Event, 256)
		for i := range results {
			c := completed(bus.NewID())
			c.ImageID = "img-" + strconv.Itoa(i%16)
			c.SubmittedAt = time.Now().UTC()
			c.Scores = make(map[string]float64, len(fashionLabels))
			for k, l := range fashionLabels {
				c.Scores[l] = float64(k) / 45
			}
			results[i] = c
		}
		return results
	}
	write := func() {
		results := batch()
		b.StartTimer()
		check(b)(s.ApplyGrades(ctx, results))
		b.StopTimer()
	}
	b.StopTimer()
	for range 4 {
		write()
	}
	syncIndexes(b, ctx)
	cpu := startCPU()
	b.ResetTimer()
	b.StopTimer()
	for range b.N {
		write()
	}
	cpu.report(b, 256*b.N, "grade")
}
