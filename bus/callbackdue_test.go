package bus_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// TestSplitCallbackPublishes: a result due at a callback_url is stored in
// GRADES without the URL and on gradeline.callbacks.due (CALLBACKS) with
// it, both under the result's id; a result without one, or another
// event, is published as it is, once.
func TestSplitCallbackPublishes(t *testing.T) {
	_, js := startNATS(t)
	ctx := context.Background()
	const url = "https://receiver.example/hook?token=s3cret"
	completed := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: bus.NewID(), ImageID: "img",
		Owner: "ada", Model: "fashion", Label: "Bag", Score: 0.9, Scores: map[string]float64{"Bag": 0.9}, CallbackURL: url}
	failed := &bus.GradeFailed{Meta: bus.NewMeta(bus.TypeGradeFailed), GradeID: bus.NewID(), Owner: "ada", Model: "fashion",
		Reason: "undecodable", CallbackURL: url}

	for _, tc := range []struct {
		name    string
		result  bus.Event
		subject string
	}{
		{"completed", completed, bus.SubjectGradeCompleted},
		{"failed", failed, bus.SubjectGradeFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			grades, due := bus.SplitCallback(tc.result)
			if due == nil {
				t.Fatal("no due copy of a result with a callback_url")
			}
			if callbackURLOf(tc.result) != url {
				t.Fatal("SplitCallback changed the result it was given")
			}
			if callbackURLOf(grades) != "" {
				t.Fatalf("the GRADES copy keeps the URL %q", callbackURLOf(grades))
			}
			errs := bus.PublishAll([]context.Context{ctx, ctx}, js, []bus.Event{grades, due})
			if errs[0] != nil || errs[1] != nil {
				t.Fatalf("publish: %v", errs)
			}
			id := tc.result.EventMeta().ID
			inGrades := lastMsg(t, js, bus.StreamGrades, tc.subject)
			if bytes.Contains(inGrades.Data, []byte("callback_url")) || bytes.Contains(inGrades.Data, []byte("s3cret")) {
				t.Fatalf("GRADES holds the URL: %s", inGrades.Data)
			}
			inDue := lastMsg(t, js, bus.StreamCallbacks, bus.SubjectGradeCallbackDue)
			ev, err := bus.Decode(inDue.Data)
			if err != nil {
				t.Fatal(err)
			}
			if callbackURLOf(ev) != url || ev.EventMeta().ID != id || ev.EventMeta().Type != tc.result.EventMeta().Type {
				t.Fatalf("due copy %+v", ev)
			}
			for _, m := range []*jetstream.RawStreamMsg{inGrades, inDue} {
				if got := m.Header.Get(jetstream.MsgIDHeader); got != id {
					t.Fatalf("%s: Nats-Msg-Id %q, want the result's id %q", m.Subject, got, id)
				}
			}
		})
	}

	plain := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: bus.NewID(), Owner: "ada", Model: "fashion"}
	for _, ev := range []bus.Event{plain, &bus.GradeFailed{Meta: bus.NewMeta(bus.TypeGradeFailed)}, newAnnotation("ada")} {
		if grades, due := bus.SplitCallback(ev); grades != ev || due != nil {
			t.Errorf("%T without a callback_url: split into %v and %v", ev, grades, due)
		}
	}
}

func callbackURLOf(ev bus.Event) string {
	switch e := ev.(type) {
	case *bus.GradeCompleted:
		return e.CallbackURL
	case *bus.GradeFailed:
		return e.CallbackURL
	}
	return ""
}

func lastMsg(t *testing.T, js jetstream.JetStream, stream, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(context.Background(), subject)
	if err != nil {
		t.Fatalf("%s %s: %v", stream, subject, err)
	}
	return m
}

// TestDrainingConsumer: the durable an older edge read callbacks from is
// read while it exists but never created (a missing one ends Consume at
// once with ErrConsumerNotFound), kept by EnsureStreams while it holds a
// message, deleted by it once read, and Consume then ends.
func TestDrainingConsumer(t *testing.T) {
	_, js := startNATS(t)
	ctx := context.Background()
	spec := bus.ConsumerIngestCallbacksLegacy
	handler := func(context.Context, []*bus.Delivery) error { return nil }

	err := bus.Consume(ctx, js, spec, bus.ConsumeOptions{Existing: true}, handler)
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("consume of a missing draining consumer: %v, want ErrConsumerNotFound", err)
	}
	if _, err := js.Consumer(ctx, spec.Stream, spec.Durable); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("the draining consumer was created: %v", err)
	}

	// As an older version left it: created, behind by one result.
	if _, err := js.CreateOrUpdateConsumer(ctx, spec.Stream, spec.Config()); err != nil {
		t.Fatal(err)
	}
	old := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: bus.NewID(), Owner: "ada", Model: "fashion",
		Label: "Bag", Scores: map[string]float64{"Bag": 1}, CallbackURL: "https://receiver.example/hook"}
	if _, err := bus.Publish(ctx, js, old); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, js, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Consumer(ctx, spec.Stream, spec.Durable); err != nil {
		t.Fatalf("a draining consumer holding a message was deleted: %v", err)
	}

	var handled atomic.Int64
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- bus.Consume(cctx, js, spec, bus.ConsumeOptions{Existing: true, MaxQueueDelay: time.Millisecond},
			func(_ context.Context, batch []*bus.Delivery) error {
				for _, d := range batch {
					if d.Event.EventMeta().ID == old.ID {
						handled.Add(1)
					}
				}
				return nil
			})
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := js.Consumer(ctx, spec.Stream, spec.Durable)
		if err != nil {
			t.Fatal(err)
		}
		if info := c.CachedInfo(); handled.Load() == 1 && info.NumPending == 0 && info.NumAckPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the older result was not read and acked (handled %d)", handled.Load())
		}
		select {
		case err := <-done:
			t.Fatalf("consume of the draining consumer ended early: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := bus.EnsureStreams(ctx, js, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Consumer(ctx, spec.Stream, spec.Durable); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("the drained consumer: %v, want it deleted", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, jetstream.ErrConsumerDeleted) && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Fatalf("consume of the deleted draining consumer ended with %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("consume of the deleted draining consumer did not end")
	}
}
