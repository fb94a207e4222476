package admin

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkAccessLine: one access line like the edge's, written straight
// to a file (one write system call per line, as before LogWriter) and
// through LogWriter.
//
//	go test -run '^$' -bench AccessLine -benchmem ./bus/admin/
func BenchmarkAccessLine(b *testing.B) {
	for _, tc := range []struct {
		name string
		wrap func(*os.File) (io.Writer, func())
	}{
		{"formatting only", func(*os.File) (io.Writer, func()) { return io.Discard, func() {} }},
		{"direct", func(f *os.File) (io.Writer, func()) { return f, func() {} }},
		{"LogWriter", func(f *os.File) (io.Writer, func()) {
			w := NewLogWriter(f, LogBufferBytes, LogFlushInterval)
			return w, w.Flush
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			f, err := os.Create(filepath.Join(b.TempDir(), "log"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			w, flush := tc.wrap(f)
			log := slog.New(slog.NewTextHandler(w, nil))
			b.ReportAllocs()
			for b.Loop() {
				log.LogAttrs(b.Context(), slog.LevelInfo, "http request",
					slog.String("method", "POST"), slog.String("path", "/api/v1/annotations"), slog.String("route", "/api/v1/annotations"),
					slog.Int("status", 202), slog.Float64("duration_ms", 1.234), slog.Int("bytes_in", 140), slog.Int("bytes_out", 97),
					slog.String("ip", "127.0.0.1"), slog.String("user", "bench"),
					slog.String("request_id", "0123456789abcdef0123456789abcdef"), slog.String("traceparent", "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"))
			}
			flush()
		})
	}
}
