package bus_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gradeline/gradeline/bus"
)

// streamHolder is a StreamHandler that keeps every delivery for the test
// to settle.
type streamHolder struct {
	mu       sync.Mutex
	held     []*bus.Delivery
	inFlight atomic.Int64 // handed and not yet Done
	maxSeen  atomic.Int64
}

func (s *streamHolder) handle(_ context.Context, d *bus.Delivery) {
	n := s.inFlight.Add(1)
	for {
		m := s.maxSeen.Load()
		if n <= m || s.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	s.mu.Lock()
	s.held = append(s.held, d)
	s.mu.Unlock()
}

// take waits for at least n held deliveries and removes them.
func (s *streamHolder) take(t *testing.T, n int) []*bus.Delivery {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d deliveries", n), func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.held) >= n })
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.held[:n:n]
	s.held = s.held[n:]
	return out
}

// takeAll waits for a held delivery and removes every one held.
func (s *streamHolder) takeAll(t *testing.T) []*bus.Delivery {
	t.Helper()
	waitFor(t, "a delivery", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.held) > 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.held
	s.held = nil
	return out
}

func (s *streamHolder) done(d *bus.Delivery, err error) {
	s.inFlight.Add(-1)
	d.Done(err)
}

func deadLettered() float64 {
	return testutil.ToFloat64(bus.ConsumerDeadLettered.WithLabelValues(bus.ConsumerAnnotator.Durable))
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func publishAnnotations(t *testing.T, js jetstream.JetStream, authors ...string) {
	t.Helper()
	for _, a := range authors {
		if _, err := bus.Publish(context.Background(), js, newAnnotation(a)); err != nil {
			t.Fatal(err)
		}
	}
}

// Each delivery is settled on its own, in any order, by its outcome; no
// more than MaxInFlight are handed out at once.
func TestConsumeStreamSettlesEachDelivery(t *testing.T) {
	_, js := startNATS(t)
	authors := []string{"reject", "retry"}
	for i := range 30 {
		authors = append(authors, fmt.Sprint("ok-", i))
	}
	publishAnnotations(t, js, authors...)
	// The server counts a consumer's pending messages a moment after they
	// are stored; NumPending is asserted below, so start once it has.
	waitFor(t, "all counted", func() bool { p, _ := pending(t, js, bus.ConsumerAnnotator); return p == uint64(len(authors)) })
	dead0 := deadLettered()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := &streamHolder{}
	const maxInFlight = 4
	done := make(chan error, 1)
	go func() {
		done <- bus.ConsumeStream(ctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{MaxInFlight: maxInFlight, MaxDeliveries: 2,
			Backoff: func(uint64) time.Duration { return time.Millisecond }, Logger: quiet()}, h.handle)
	}()
	handled := map[string]int{}
	behind := map[string]uint64{} // NumPending at each author's first delivery
	// The retried one comes twice, then is dead-lettered.
	for total := 0; total < len(authors)+1; {
		ds := h.takeAll(t)
		total += len(ds)
		// Settle the later ones first when more are waiting.
		for i := len(ds) - 1; i >= 0; i-- {
			d := ds[i]
			a := d.Event.(*bus.AnnotationCreated).Author
			if handled[a] == 0 {
				behind[a] = d.NumPending
			}
			handled[a]++
			switch a {
			case "reject":
				d.Reject("never valid")
			case "retry":
				d.Retry(errors.New("try again"))
			}
			h.done(d, nil)
		}
	}
	waitFor(t, "every message settled", func() bool { p, ack := pending(t, js, bus.ConsumerAnnotator); return p == 0 && ack == 0 })
	if handled["reject"] != 1 || handled["retry"] != 2 || handled["ok-0"] != 1 || handled["ok-29"] != 1 || len(handled) != len(authors) {
		t.Errorf("handled %v", handled)
	}
	// Each delivery says how many messages were behind it: all the others
	// for the first, none for the last.
	if behind["reject"] != uint64(len(authors)-1) || behind["ok-29"] != 0 {
		t.Errorf("NumPending: first %d, last %d; want %d, 0", behind["reject"], behind["ok-29"], len(authors)-1)
	}
	if m := h.maxSeen.Load(); m > maxInFlight {
		t.Errorf("%d deliveries in flight at once, MaxInFlight %d", m, maxInFlight)
	}
	waitFor(t, "two dead letters", func() bool { return deadLettered()-dead0 >= 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// At shutdown what is in hand is finished and acked, what the handler
// returns (ErrShutdown) and what it does not finish within DrainTimeout go
// back to the server at once: a replica taking over gets exactly those.
func TestConsumeStreamShutdownReturnsTheRest(t *testing.T) {
	_, js := startNATS(t)
	const total, maxInFlight, finished = 20, 10, 3
	authors := make([]string, total)
	for i := range authors {
		authors[i] = fmt.Sprint("u", i)
	}
	publishAnnotations(t, js, authors...)
	ctx, cancel := context.WithCancel(context.Background())
	h := &streamHolder{}
	done := make(chan error, 1)
	go func() {
		done <- bus.ConsumeStream(ctx, js, bus.ConsumerAnnotator,
			bus.ConsumeOptions{MaxInFlight: maxInFlight, DrainTimeout: 500 * time.Millisecond, Logger: quiet()}, h.handle)
	}()
	ds := h.take(t, maxInFlight) // in flight is full: nothing more is pulled
	cancel()
	for i, d := range ds {
		switch {
		case i < finished:
			h.done(d, nil)
		case i < maxInFlight-1:
			h.done(d, bus.ErrShutdown)
		}
		// The last is never done: DrainTimeout returns it.
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// (The server counts a naked message as ack-pending until it is
	// delivered again, so the takeover is what shows they are back.)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	var mu sync.Mutex
	got := map[string]int{}
	go bus.Consume(ctx2, js, bus.ConsumerAnnotator, bus.ConsumeOptions{}, func(_ context.Context, b []*bus.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range b {
			got[d.Event.(*bus.AnnotationCreated).Author]++
		}
		return nil
	})
	want := total - finished
	waitFor(t, "takeover", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= want })
	waitFor(t, "takeover settled", func() bool { p, ack := pending(t, js, bus.ConsumerAnnotator); return p == 0 && ack == 0 })
	mu.Lock()
	defer mu.Unlock()
	for _, d := range ds[:finished] {
		if a := d.Event.(*bus.AnnotationCreated).Author; got[a] != 0 {
			t.Errorf("%s was finished at shutdown and handled again", a)
		}
	}
	if len(got) != want {
		t.Errorf("takeover handled %d messages (%v), want %d", len(got), got, want)
	}
}
