package admin

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Defaults of the log writer of every binary (Env.Logger).
const (
	// LogBufferBytes bounds the memory of the lines not yet written.
	LogBufferBytes = 1 << 20
	// LogFlushInterval bounds how long a line waits in the buffer.
	LogFlushInterval = 50 * time.Millisecond
)

// LogWriter buffers the lines of a logger and writes them to its writer in
// batches, off the caller's path: one write system call for many lines
// instead of one per line (the edge logs one access line per request).
// Memory is bounded: a Write that would grow the buffer past its limit
// waits until the buffer has been written, so no line is ever dropped.
// A line waits at most the flush interval; Flush writes everything
// buffered so far before it returns. Each Write (one slog record) stays in
// one piece, in order.
type LogWriter struct {
	w        io.Writer
	limit    int
	interval time.Duration

	mu sync.Mutex
	// written is signalled whenever a batch has been written.
	written *sync.Cond
	buf     []byte
	spare   []byte
	// accepted and done count the bytes taken by Write and those written
	// to w, so Flush knows when its lines are out.
	accepted, done uint64
	// flushing: a goroutine is writing batches; scheduled: a timer will
	// start one.
	flushing, scheduled bool
}

// NewLogWriter returns a LogWriter on w holding at most limit bytes and
// writing lines at most interval after they were logged.
func NewLogWriter(w io.Writer, limit int, interval time.Duration) *LogWriter {
	l := &LogWriter{w: w, limit: limit, interval: interval}
	l.written = sync.NewCond(&l.mu)
	return l
}

// Write buffers p (one log line), waiting while the buffer is full.
func (l *LogWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.buf) > 0 && len(l.buf)+len(p) > l.limit {
		l.startLocked()
		l.written.Wait()
	}
	if l.buf == nil {
		l.buf = make([]byte, 0, min(l.limit, 64<<10))
	}
	l.buf = append(l.buf, p...)
	l.accepted += uint64(len(p))
	switch {
	case l.flushing || l.scheduled:
	case len(l.buf) >= l.limit/2:
		l.startLocked()
	default:
		l.scheduled = true
		time.AfterFunc(l.interval, l.timer)
	}
	return len(p), nil
}

// Flush returns once every line written before the call is written to the
// underlying writer.
func (l *LogWriter) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	target := l.accepted
	for l.done < target {
		l.startLocked()
		l.written.Wait()
	}
}

// Buffered returns the number of bytes waiting to be written.
func (l *LogWriter) Buffered() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buf)
}

func (l *LogWriter) timer() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.scheduled = false
	if len(l.buf) > 0 {
		l.startLocked()
	}
}

// startLocked starts the writing goroutine unless it runs.
func (l *LogWriter) startLocked() {
	if !l.flushing {
		l.flushing = true
		go l.run()
	}
}

// run writes batches until the buffer is empty. Only one run goroutine
// exists at a time, so batches go out in order.
func (l *LogWriter) run() {
	l.mu.Lock()
	for len(l.buf) > 0 {
		out := l.buf
		// Writes go on into the other buffer meanwhile; two buffers are
		// kept, so a steady stream of lines allocates nothing.
		l.buf, l.spare = l.spare, nil
		if l.buf == nil {
			l.buf = make([]byte, 0, min(l.limit, 64<<10))
		}
		l.mu.Unlock()
		// A failed write to stderr has nowhere to be reported; the
		// lines are counted as done so that Flush and Write never hang.
		_, _ = l.w.Write(out)
		l.mu.Lock()
		l.done += uint64(len(out))
		if cap(out) <= 2*l.limit { // not grown by a single huge line
			l.spare = out[:0]
		}
		l.written.Broadcast()
	}
	l.flushing = false
	l.written.Broadcast()
	l.mu.Unlock()
}

// stderrWriters are the process's log writers, one per stderr file (a test
// may point os.Stderr elsewhere), so FlushLogs finds them all.
var stderrWriters struct {
	sync.Mutex
	m map[*os.File]*LogWriter
}

// StderrLogWriter returns the process's buffered writer for os.Stderr,
// the destination of every logger Env.Logger makes.
func StderrLogWriter() *LogWriter {
	stderrWriters.Lock()
	defer stderrWriters.Unlock()
	f := os.Stderr
	if stderrWriters.m == nil {
		stderrWriters.m = map[*os.File]*LogWriter{}
	}
	w, ok := stderrWriters.m[f]
	if !ok {
		w = NewLogWriter(f, LogBufferBytes, LogFlushInterval)
		stderrWriters.m[f] = w
	}
	return w
}

// FlushLogs writes every buffered log line of the process. Every binary
// calls it before it exits (Main, Refuse, local.Run), so a clean stop loses
// no line.
func FlushLogs() {
	stderrWriters.Lock()
	ws := make([]*LogWriter, 0, len(stderrWriters.m))
	for _, w := range stderrWriters.m {
		ws = append(ws, w)
	}
	stderrWriters.Unlock()
	for _, w := range ws {
		w.Flush()
	}
}

// flushingHandler writes the buffer out after every record of level
// warning or above, so problems are seen at once and in order with what
// came before them.
type flushingHandler struct {
	slog.Handler
	w *LogWriter
}

func (h flushingHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		h.w.Flush()
	}
	return err
}

func (h flushingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return flushingHandler{h.Handler.WithAttrs(as), h.w}
}

func (h flushingHandler) WithGroup(name string) slog.Handler {
	return flushingHandler{h.Handler.WithGroup(name), h.w}
}
