package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/internal/fixture"
)

// BenchmarkProfile is `make profile`: the stack runs in this process
// (local.Run configured by local.ConfigFromEnv, as the binary is, its log in
// .bench/profile/stack.log) while wrk posts annotations and then hey posts
// grades from outside, as in make bench. For each load it writes, under
// .bench/profile/:
//   - <load>.cpu.pprof: the CPU profile of the whole stack during the load;
//   - <load>.allocs.pprof and <load>.allocs.base.pprof: the allocation
//     profile after and before the load; their difference is the load's:
//     go tool pprof -sample_index=alloc_space -base X.allocs.base.pprof X.allocs.pprof
//
// and prints the top functions of each CPU profile.
// GRADELINE_BENCH_SECONDS (default 10) is the length of each load;
// GRADELINE_BENCH_ONLY=grades profiles the grade load alone,
// GRADELINE_BENCH_ONLY=annotations the annotation load alone.
func BenchmarkProfile(b *testing.B) {
	ctx := context.Background()
	if err := requireTools(); err != nil {
		b.Fatal(err)
	}
	_, out := benchDirs(b)
	dir := filepath.Join(out, "profile")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	dataDir, err := os.MkdirTemp(out, "data-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dataDir)
	logPath := filepath.Join(dir, "stack.log")
	_ = os.Remove(logPath)
	st, _, err := startInProcess(dataDir, logPath)
	if err != nil {
		b.Fatal(err)
	}
	stopStack = func() { _ = st.stop() }
	defer func() { stopStack = func() {}; _ = st.stop() }()
	if token, err = register(st.ep.HTTP); err != nil {
		b.Fatal(err)
	}
	d := time.Duration(envInt("GRADELINE_BENCH_SECONDS", 10)) * time.Second

	nc, js, err := bus.Connect(ctx, st.ep.NATSAdmin, "bench-profile", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	body, _ := json.Marshal(map[string]any{"annotation": benchAnnotation()})
	script, err := wrkScript(out, annotationLoad(token, body))
	if err != nil {
		b.Fatal(err)
	}
	only := os.Getenv("GRADELINE_BENCH_ONLY")
	if only != "grades" {
		profile(b, dir, "annotations", func() string {
			cpu0, kids0 := processCPU(), descendantsCPU()
			w, err := runWrk(ctx, script, st.ep.HTTP+"/api/v1/annotations", 64, d)
			if err != nil {
				b.Fatal(err)
			}
			waitDrained(b, js, bus.StreamAnnotations)
			// The CPU time of this process (the stack's Go code, FerretDB
			// included; not PostgreSQL, ClickHouse or wrk) per accepted
			// annotation, until it is stored: less sensitive than rates to
			// what else the machine runs.
			n := time.Duration(max(w.accepted(), 1))
			perReq, kids := (processCPU()-cpu0)/n, (descendantsCPU()-kids0)/n
			return fmt.Sprintf("wrk -t2 -c64: %s accepted, %d errors; %d µs of the stack's CPU per annotation, until stored (and %d µs in its PostgreSQL and ClickHouse processes)",
				rate(w.rate()), w.Status+w.Connect+w.Read+w.Write+w.Timeout, perReq.Microseconds(), kids.Microseconds())
		})
	}

	form, ctype := gradeForm(fixture.DigitPNGSize(3, 28))
	if only == "annotations" {
		return
	}
	profile(b, dir, "grades", func() string {
		cpu0, kids0 := processCPU(), descendantsCPU()
		w, err := runWrk32(ctx, out, st.ep.HTTP+"/api/v1/grades", wrkLoad{name: "grade", token: token, ctype: ctype, body: form}, d)
		if err != nil {
			b.Fatal(err)
		}
		waitDrained(b, js, bus.StreamImages)
		waitDrained(b, js, bus.StreamGrades)
		// As for annotations: the stack's CPU per grade until its
		// submission and result are stored, steadier than the rate on a
		// shared machine.
		n := time.Duration(max(w.OK200, 1))
		perGrade, kids := (processCPU()-cpu0)/n, (descendantsCPU()-kids0)/n
		return fmt.Sprintf("wrk -t2 -c32: %s graded, p50 %.2f ms; %d µs of the stack's CPU per grade, until stored (and %d µs in its PostgreSQL and ClickHouse processes)",
			rate(w.rate200()), float64(w.P50US)/1000, perGrade.Microseconds(), kids.Microseconds())
	})
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// descendantsCPU is the CPU time the running descendants of this process
// (the stack's PostgreSQL and ClickHouse engine; wrk and hey have exited
// when it is read) have used, from /proc.
func descendantsCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	parent := map[int]int{}
	ticks := map[int]int64{}
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
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		parent[pid], _ = strconv.Atoi(f[1])
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		ticks[pid] = u + k
	}
	self := os.Getpid()
	var total int64
	for pid, t := range ticks {
		for p, hops := parent[pid], 0; p > 1 && hops < 64; p, hops = parent[p], hops+1 {
			if p == self {
				total += t
				break
			}
		}
	}
	return time.Duration(total) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// profile writes the CPU and allocation profiles of load.
func profile(b *testing.B, dir, name string, load func() string) {
	b.Helper()
	write := func(file string, f func(*os.File) error) {
		fh, err := os.Create(filepath.Join(dir, file))
		if err != nil {
			b.Fatal(err)
		}
		if err := f(fh); err != nil {
			b.Fatal(err)
		}
		if err := fh.Close(); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	write(name+".allocs.base.pprof", func(f *os.File) error { return pprof.Lookup("allocs").WriteTo(f, 0) })
	cpu, err := os.Create(filepath.Join(dir, name+".cpu.pprof"))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		b.Fatal(err)
	}
	summary := load()
	pprof.StopCPUProfile()
	if err := cpu.Close(); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	write(name+".allocs.pprof", func(f *os.File) error { return pprof.Lookup("allocs").WriteTo(f, 0) })
	fmt.Printf("%s: %s\n  profiles: %s/%s.{cpu,allocs,allocs.base}.pprof\n", name, summary, dir, name)
	top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", cpu.Name()).CombinedOutput()
	if err == nil {
		fmt.Printf("%s\n", top)
	}
}
