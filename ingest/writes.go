package ingest

import (
	"sync"
	"time"

	"github.com/gradeline/gradeline/bus"
)

// writeMarks remembers, per user and stream, the sequence of the user's
// last accepted event. The user's next reads carry it (AfterSeq), and the
// annotator answers once it has stored that far: read-your-writes without
// the edge polling. Marks expire after writeMarkTTL, long past any normal
// consumer lag; a user whose writes went through another edge replica
// reads as anyone else does.
type writeMarks struct {
	mu sync.Mutex
	m  map[writeKey]writeMark
}

type writeKey struct{ user, stream string }

type writeMark struct {
	seq uint64
	at  time.Time
}

const (
	writeMarkTTL = time.Minute
	// maxWriteMarks bounds the memory: past it, expired marks are dropped.
	maxWriteMarks = 100_000
)

func (w *writeMarks) note(user, stream string, seq uint64) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[writeKey]writeMark{}
	}
	if len(w.m) >= maxWriteMarks {
		for k, v := range w.m {
			if now.Sub(v.at) > writeMarkTTL {
				delete(w.m, k)
			}
		}
	}
	k := writeKey{user, stream}
	if seq > w.m[k].seq {
		w.m[k] = writeMark{seq, now}
	}
}

// after is the sequence the user's read should wait for; 0 for none.
func (w *writeMarks) after(user, stream string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	m, ok := w.m[writeKey{user, stream}]
	if !ok || time.Since(m.at) > writeMarkTTL {
		return 0
	}
	return m.seq
}

// writerOf names the user whose reads should see ev; "" for events that
// no read of the annotator's records depends on.
func writerOf(ev bus.Event) string {
	switch e := ev.(type) {
	case *bus.AnnotationCreated:
		return e.Author
	case *bus.AnnotationUpdated:
		return e.Author
	case *bus.AnnotationDeleted:
		return e.Author
	case *bus.ImageSharesSet:
		return e.Owner
	case *bus.ImageCatalogued:
		return e.Owner
	case *bus.ImageTagsSet:
		return e.Owner
	case *bus.ImageDeleted:
		return e.Owner
	case *bus.GradePending:
		// The grade answered 202 is read as the owner's (GradeGetQuery.AfterSeq);
		// a grade answered with its result notes the result's sequence.
		return e.Owner
	}
	return ""
}
