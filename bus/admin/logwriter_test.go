package admin

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lockedBuffer is a writer tests can read while the LogWriter writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	// calls counts the writes: batches, not lines.
	calls int
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls++
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLogWriterKeepsEveryLineInOrder(t *testing.T) {
	cases := []struct {
		name           string
		limit, writers int
	}{
		{"one writer, roomy buffer", 1 << 20, 1},
		{"eight writers, roomy buffer", 1 << 20, 8},
		{"eight writers, buffer of a few lines", 200, 8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out lockedBuffer
			w := NewLogWriter(&out, tc.limit, time.Hour) // only Flush and a full buffer write
			const lines = 500
			var wg sync.WaitGroup
			for g := range tc.writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range lines {
						fmt.Fprintf(w, "writer=%d line=%04d %s\n", g, i, strings.Repeat("x", 40))
					}
				}()
			}
			wg.Wait()
			w.Flush()
			if n := w.Buffered(); n != 0 {
				t.Fatalf("%d bytes still buffered after Flush", n)
			}
			next := make([]int, tc.writers)
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if len(got) != lines*tc.writers {
				t.Fatalf("%d lines written, want %d", len(got), lines*tc.writers)
			}
			for _, l := range got {
				var g, i int
				var rest string
				if _, err := fmt.Sscanf(l, "writer=%d line=%d %s", &g, &i, &rest); err != nil || rest != strings.Repeat("x", 40) {
					t.Fatalf("line torn or mixed: %q", l)
				}
				if i != next[g] {
					t.Fatalf("writer %d: line %d after line %d", g, i, next[g]-1)
				}
				next[g]++
			}
			if out.calls >= len(got) && tc.limit > 1000 {
				t.Errorf("%d write calls for %d lines: not batched", out.calls, len(got))
			}
		})
	}
}

// blockingWriter holds its first write until released, like a stderr
// pipe nobody reads.
type blockingWriter struct {
	entered, release chan struct{}
	once             sync.Once
	out              lockedBuffer
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	b.once.Do(func() { close(b.entered); <-b.release })
	return b.out.Write(p)
}

func TestLogWriterMemoryIsBoundedAndNothingIsDropped(t *testing.T) {
	const limit, lineLen, lines = 1000, 100, 100
	bw := &blockingWriter{entered: make(chan struct{}), release: make(chan struct{})}
	w := NewLogWriter(bw, limit, time.Hour)
	line := []byte(strings.Repeat("y", lineLen-1) + "\n")
	var completed atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range lines {
			_, _ = w.Write(line)
			completed.Add(1)
		}
	}()
	<-bw.entered // a batch is in flight and the writer is stuck
	for range 1000 {
		if n := w.Buffered(); n > limit {
			t.Fatalf("%d bytes buffered, limit %d", n, limit)
		}
		// The batch in flight and the buffer hold all that could be
		// accepted: the logger waits instead of growing or dropping.
		if c := completed.Load(); c > 2*limit/lineLen {
			t.Fatalf("%d lines accepted while the writer is blocked; at most %d fit", c, 2*limit/lineLen)
		}
	}
	close(bw.release)
	<-done
	w.Flush()
	if got := strings.Count(bw.out.String(), "\n"); got != lines {
		t.Fatalf("%d lines written, want %d", got, lines)
	}
}

func TestLogWriterWritesWithoutFlush(t *testing.T) {
	var out lockedBuffer
	w := NewLogWriter(&out, 1<<20, time.Millisecond)
	fmt.Fprintln(w, "first")
	deadline := time.Now().Add(10 * time.Second)
	for out.String() != "first\n" {
		if time.Now().After(deadline) {
			t.Fatalf("the line was never written without Flush: %q", out.String())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestLogWriterLineLargerThanTheLimit(t *testing.T) {
	var out lockedBuffer
	w := NewLogWriter(&out, 16, time.Hour)
	long := strings.Repeat("z", 100) + "\n"
	fmt.Fprint(w, "short\n")
	fmt.Fprint(w, long)
	w.Flush()
	if got := out.String(); got != "short\n"+long {
		t.Fatalf("got %q", got)
	}
}

// TestEnvLoggerLinesReachStderr: the loggers of every binary write through
// the buffered writer; FlushLogs (run before exit) writes what is buffered,
// and a warning is written at once.
func TestEnvLoggerLinesReachStderr(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved := os.Stderr
	os.Stderr = f
	log := NewEnv(func(string) string { return "" }).Logger(true)
	os.Stderr = saved

	read := func() string {
		data, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	log.Warn("disk nearly full")
	if got := read(); !strings.Contains(got, "level=WARN") || !strings.Contains(got, "disk nearly full") {
		t.Fatalf("a warning is not written at once: %q", got)
	}
	for i := range 100 {
		log.Info("http request", "n", i)
	}
	FlushLogs()
	if got := strings.Count(read(), "msg=\"http request\""); got != 100 {
		t.Fatalf("%d access lines after FlushLogs, want 100", got)
	}
}
