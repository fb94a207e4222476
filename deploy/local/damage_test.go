package local

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/internal/natscreds"
)

// TestDamagedStreamFileLosesNoNewAnnotation is issue 11's reproduction on
// the whole stack: 4 KB of garbage in the middle of the ANNOTATIONS block
// file cut the stream at restart and left the durable consumers beyond its
// end, so new annotations were accepted (202) and never stored, silently.
// Now the cut is logged as an error and every annotation accepted after the
// damage reaches MongoDB and ClickHouse.
func TestDamagedStreamFileLosesNoNewAnnotation(t *testing.T) {
	dir := t.TempDir()
	logs := &lockedBuffer{}
	withLog := func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stack log:\n%s", logs.String())
		}
	})
	s := startStack(t, dir, withLog)
	c := s.user("damage@example.com")
	const before, after = 1500, 200
	for i := range before {
		if code, msg := c.post("/api/v1/annotations", map[string]any{"annotation": map[string]any{"n": i, "phase": "before"}}); code != http.StatusAccepted {
			t.Fatalf("annotation %d: %d %s", i, code, msg)
		}
	}
	// listed counts the user's stored annotations of a phase.
	listed := func(phase string) int {
		n := 0
		for cursor := ""; ; {
			var p struct {
				Data []struct {
					Annotation struct{ Phase string }
				}
				Next string
			}
			code, _ := c.do("GET", "/api/v1/annotations?author=damage@example.com&per_page=1000&cursor="+url.QueryEscape(cursor), nil, &p)
			if code != http.StatusOK {
				return -1
			}
			for _, a := range p.Data {
				if a.Annotation.Phase == phase {
					n++
				}
			}
			if cursor = p.Next; cursor == "" {
				return n
			}
		}
	}
	counted := func() int {
		from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		to := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		var r struct{ Data []bus.AnnotationStatsRow }
		if code, _ := c.do("GET", "/api/v1/stats/annotations?from="+from+"&to="+to+"&bucket=1h", nil, &r); code != http.StatusOK {
			return -1
		}
		n := 0
		for _, row := range r.Data {
			if row.Author == "damage@example.com" {
				n += int(row.Count)
			}
		}
		return n
	}
	eventually(t, "annotations stored before the damage", func() bool { return listed("before") == before && counted() == before })
	s.stop()

	blk := filepath.Join(natscreds.Dir(dir), "jetstream", "$G", "streams", bus.StreamAnnotations, "msgs", "1.blk")
	fi, err := os.Stat(blk)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(blk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, 4096)
	_, _ = rand.Read(garbage)
	if _, err := f.WriteAt(garbage, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()

	s = startStack(t, dir, withLog)
	c.base = s.ep.HTTP
	for i := range after {
		if code, msg := c.post("/api/v1/annotations", map[string]any{"annotation": map[string]any{"n": i, "phase": "after"}}); code != http.StatusAccepted {
			t.Fatalf("annotation %d after the damage: %d %s", i, code, msg)
		}
	}
	eventually(t, fmt.Sprintf("all %d annotations accepted after the damage in MongoDB and ClickHouse", after), func() bool {
		return listed("after") == after && counted() == before+after
	})
	if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "beyond the end of its stream") ||
		!strings.Contains(l, "stream="+bus.StreamAnnotations) {
		t.Fatalf("the cut stream was not logged as an error:\n%s", l)
	}
}
