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
