package bus_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// startNATS runs an embedded server with the topology applied.
func startNATS(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	nc, js, err := bus.Connect(context.Background(), ns.ClientURL(), "bus-test", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := bus.EnsureTopology(context.Background(), js, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func newAnnotation(author string) *bus.AnnotationCreated {
	return &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), Author: author, Annotation: json.RawMessage(`{"label":"cat"}`)}
}

func TestDecodeRejectsPoison(t *testing.T) {
	good := newAnnotation("ada")
	goodJSON, _ := json.Marshal(good)
	tests := []struct {
		name, data, wantErr string
	}{
		{"not json", `{"id":`, "undecodable"},
		{"unknown type", `{"id":"1","type":"nope","schema_version":1}`, "unknown event type"},
		{"future version", `{"id":"1","type":"annotation.created","schema_version":2}`, "unsupported schema version"},
		{"no id", `{"type":"annotation.created","schema_version":1,"author":"a","annotation":{}}`, "without id"},
		{"wrong field type", `{"id":"1","type":"annotation.created","schema_version":1,"author":7}`, "payload"},
		{"annotation not object", `{"id":"1","type":"annotation.created","schema_version":1,"author":"a","annotation":[1]}`, "JSON object"},
		{"iris bad species", `{"id":"1","type":"iris.measured","schema_version":1,"rows":[{"species":"rose"}]}`, "unknown species"},
		{"iris no rows", `{"id":"1","type":"iris.measured","schema_version":1,"rows":[]}`, "rows must hold"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := bus.Decode([]byte(tt.data))
			if !errors.Is(err, bus.ErrPoison) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Decode(%s) = %v, want ErrPoison containing %q", tt.data, err, tt.wantErr)
			}
		})
	}
	ev, err := bus.Decode(goodJSON)
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.(*bus.AnnotationCreated); got.ID != good.ID || got.Author != "ada" {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestEnsureTopologyIsIdempotent(t *testing.T) {
	_, js := startNATS(t)
	ctx := context.Background()
	before := map[string]jetstream.StreamConfig{}
	for _, s := range bus.Streams {
		st, err := js.Stream(ctx, s.Name)
		if err != nil {
			t.Fatal(err)
		}
		before[s.Name] = st.CachedInfo().Config
	}
	// A second start, and two replicas starting at once, change nothing.
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- bus.EnsureTopology(ctx, js, bus.TopologyOptions{MaxBytesScale: 0.01})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range bus.Streams {
		st, err := js.Stream(ctx, s.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.CachedInfo().Config; got.MaxBytes != before[s.Name].MaxBytes || got.Duplicates != bus.DuplicateWindow || len(got.Subjects) != len(s.Subjects) {
			t.Fatalf("stream %s changed: %+v", s.Name, got)
		}
	}
	for _, c := range bus.Consumers {
		if _, err := js.Consumer(ctx, c.Stream, c.Durable); err != nil {
			t.Fatalf("consumer %s: %v", c.Durable, err)
		}
	}
}

// TestEnsureStreamsDeletesRetiredConsumers: a server upgraded in place
// loses the durables this version no longer reads (their backlog would
// grow forever in `gradeline streams`), and a second run is content that
// they are gone.
func TestEnsureStreamsDeletesRetiredConsumers(t *testing.T) {
	_, js := startNATS(t)
	ctx := context.Background()
	for _, c := range bus.RetiredConsumers {
		if _, err := js.CreateOrUpdateConsumer(ctx, c.Stream, jetstream.ConsumerConfig{Durable: c.Durable, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := bus.EnsureStreams(ctx, js, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range bus.RetiredConsumers {
		if _, err := js.Consumer(ctx, c.Stream, c.Durable); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Errorf("retired consumer %s/%s: %v, want it deleted", c.Stream, c.Durable, err)
		}
	}
	for _, c := range bus.Consumers {
		if _, err := js.Consumer(ctx, c.Stream, c.Durable); err != nil {
			t.Errorf("consumer %s: %v", c.Durable, err)
		}
	}
}

func TestPublishDeduplicatesByEventID(t *testing.T) {
	_, js := startNATS(t)
	ctx := context.Background()
	ev := newAnnotation("ada")
	first, err := bus.Publish(ctx, js, ev)
	if err != nil {
		t.Fatal(err)
	}
	second, err := bus.Publish(ctx, js, ev)
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || !second.Duplicate || first.Sequence != second.Sequence {
		t.Fatalf("acks %+v %+v: want the retry reported as duplicate of the first", first, second)
	}
	st, _ := js.Stream(ctx, bus.StreamAnnotations)
	info, _ := st.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1", info.State.Msgs)
	}
}

// TestPublishAll stores a batch in one go: each event once (a retried
// batch is all duplicates), with its own request id, and an event that
// cannot be published fails alone.
func TestPublishAll(t *testing.T) {
	_, js := startNATS(t)
	var (
		ctxs []context.Context
		evs  []bus.Event
	)
	for i := range 50 {
		ctxs = append(ctxs, bus.WithRequestID(context.Background(), fmt.Sprint("req-", i)))
		evs = append(evs, newAnnotation("ada"))
	}
	bad := &bus.AnnotationCreated{Meta: bus.Meta{ID: bus.NewID(), Type: "no.such.type"}}
	ctxs, evs = append(ctxs, context.Background()), append(evs, bad)
	for round := range 2 {
		errs := bus.PublishAll(ctxs, js, evs)
		for i, err := range errs {
			if (err != nil) != (evs[i] == bus.Event(bad)) {
				t.Fatalf("round %d, event %d: %v", round, i, err)
			}
		}
	}
	st, err := js.Stream(context.Background(), bus.StreamAnnotations)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 50 {
		t.Fatalf("stream holds %d messages after a batch and its retry, want 50", n)
	}
	m, err := st.GetMsg(context.Background(), 7)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(bus.HeaderRequestID); got != "req-6" {
		t.Fatalf("7th message carries request id %q, want req-6", got)
	}
}

func TestPublishHonoursDeadline(t *testing.T) {
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, js, err := bus.Connect(context.Background(), ns.ClientURL(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// No stream captures the subject: nothing can acknowledge.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := bus.Publish(ctx, js, newAnnotation("ada")); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("publish without a stream succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("publish ignored its context deadline")
	}
}

func TestPublishCarriesRequestContext(t *testing.T) {
	_, js := startNATS(t)
	ctx := bus.WithTraceparent(bus.WithRequestID(context.Background(), "req-42"), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	ev := newAnnotation("ada")
	if _, err := bus.Publish(ctx, js, ev); err != nil {
		t.Fatal(err)
	}
	got := make(chan context.Context, 1)
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go bus.Consume(cctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{Logger: logger}, func(_ context.Context, b []*bus.Delivery) error {
		got <- b[0].Ctx
		return nil
	})
	select {
	case c := <-got:
		if bus.RequestID(c) != "req-42" || !strings.HasPrefix(bus.Traceparent(c), "00-0af7") {
			t.Fatalf("request id %q traceparent %q", bus.RequestID(c), bus.Traceparent(c))
		}
		// The consuming service's log names the request that caused the event.
		if !strings.Contains(logs.String(), "request_id=req-42") || !strings.Contains(logs.String(), "traceparent=00-0af7") {
			t.Fatalf("consumer log lacks the request context:\n%s", logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// collector records what a consume loop saw.
type collector struct {
	mu      sync.Mutex
	batches []int
	ids     map[string]int
}

func (c *collector) seen() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.ids {
		out[k] = v
	}
	return out
}

// sawAll reports whether every id was consumed at least once.
func (c *collector) sawAll(ids []string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if c.ids[id] == 0 {
			return false
		}
	}
	return true
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pending(t *testing.T, js jetstream.JetStream, spec bus.ConsumerSpec) (uint64, int) {
	t.Helper()
	c, err := js.Consumer(context.Background(), spec.Stream, spec.Durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending, info.NumAckPending
}

func TestConsumeBatchesAcksAndRetries(t *testing.T) {
	_, js := startNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 200
	for i := range n {
		if _, err := bus.Publish(ctx, js, newAnnotation(fmt.Sprint("u", i))); err != nil {
			t.Fatal(err)
		}
	}
	c := &collector{ids: map[string]int{}}
	var failOnce sync.Once
	done := make(chan error, 1)
	go func() {
		done <- bus.Consume(ctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{MaxBatch: 50, MaxQueueDelay: 50 * time.Millisecond,
			Backoff: func(uint64) time.Duration { return 10 * time.Millisecond }},
			func(_ context.Context, b []*bus.Delivery) error {
				var err error
				failOnce.Do(func() { err = errors.New("dependency down") })
				if err != nil {
					return err // the whole first batch comes back
				}
				c.mu.Lock()
				defer c.mu.Unlock()
				c.batches = append(c.batches, len(b))
				for _, d := range b {
					c.ids[d.Event.EventMeta().ID]++
				}
				return nil
			})
	}()
	waitFor(t, "all messages handled", func() bool { return len(c.seen()) == n })
	waitFor(t, "all acked", func() bool { p, ack := pending(t, js, bus.ConsumerAnnotator); return p == 0 && ack == 0 })
	for id, k := range c.seen() {
		if k != 1 {
			t.Fatalf("event %s handled %d times after success", id, k)
		}
	}
	c.mu.Lock()
	maxBatch := 0
	for _, b := range c.batches {
		maxBatch = max(maxBatch, b)
		if b > 50 {
			t.Fatalf("batch of %d exceeds MaxBatch 50", b)
		}
	}
	c.mu.Unlock()
	if maxBatch < 2 {
		t.Fatalf("batches %v: a backlog must be handled in batches", c.batches)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Consume after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Consume did not return after cancel")
	}
}

func deadLetters(t *testing.T, js jetstream.JetStream) []bus.DeadLetter {
	t.Helper()
	st, err := js.Stream(context.Background(), bus.StreamDeadLetter)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []bus.DeadLetter
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		var dl bus.DeadLetter
		if err := json.Unmarshal(m.Data, &dl); err != nil {
			t.Fatal(err)
		}
		out = append(out, dl)
	}
	return out
}

func TestConsumeDeadLettersPoisonAndKeepsGoing(t *testing.T) {
	nc, js := startNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Poison published raw, as a buggy or foreign publisher would.
	_ = nc.Publish(bus.SubjectAnnotationCreated, []byte(`{not json`))
	_ = nc.Publish(bus.SubjectAnnotationCreated, []byte(`{"id":"x1","type":"annotation.created","schema_version":9}`))
	rejected, retried, good := newAnnotation("reject-me"), newAnnotation("retry-me"), newAnnotation("fine")
	for _, ev := range []bus.Event{rejected, retried, good} {
		if _, err := bus.Publish(ctx, js, ev); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	handled := map[string]int{}
	go bus.Consume(ctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{MaxDeliveries: 3, Backoff: func(uint64) time.Duration { return 5 * time.Millisecond }},
		func(_ context.Context, b []*bus.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			for _, d := range b {
				a := d.Event.(*bus.AnnotationCreated)
				handled[a.Author]++
				switch a.Author {
				case "reject-me":
					d.Reject("image does not exist")
				case "retry-me":
					d.Retry(errors.New("still failing"))
				}
			}
			return nil
		})
	waitFor(t, "four dead letters", func() bool { return len(deadLetters(t, js)) == 4 })
	waitFor(t, "consumer drained", func() bool { p, ack := pending(t, js, bus.ConsumerAnnotator); return p == 0 && ack == 0 })
	reasons := map[string]bool{}
	for _, dl := range deadLetters(t, js) {
		if dl.Consumer != bus.ConsumerAnnotator.Durable || dl.Stream != bus.StreamAnnotations || dl.Sequence == 0 || len(dl.Data) == 0 {
			t.Fatalf("incomplete dead letter %+v", dl)
		}
		switch {
		case strings.Contains(dl.Reason, "undecodable"):
			reasons["json"] = true
		case strings.Contains(dl.Reason, "schema version"):
			reasons["version"] = true
		case dl.Reason == "image does not exist":
			reasons["reject"] = true
		case strings.Contains(dl.Reason, "gave up after 3 deliveries"):
			reasons["retry"] = true
		default:
			t.Fatalf("unexpected reason %q", dl.Reason)
		}
	}
	if len(reasons) != 4 {
		t.Fatalf("reasons %v", reasons)
	}
	if n := testutil.ToFloat64(bus.ConsumerDeadLettered.WithLabelValues(bus.ConsumerAnnotator.Durable)); n < 4 {
		t.Fatalf("dead-letter metric %v, want >= 4", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if handled["fine"] != 1 || handled["retry-me"] != 3 || handled["reject-me"] != 1 {
		t.Fatalf("handled %v", handled)
	}
}

// A consumer's Wants sees each body before decoding: what it does not
// want is acked undecoded, even poison (no dead letter), and the handler
// gets the rest.
func TestConsumeAcksUnwantedUndecoded(t *testing.T) {
	nc, js := startNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_ = nc.Publish(bus.SubjectAnnotationCreated, []byte(`{not json, not wanted`))
	for _, a := range []string{"skip-1", "keep-1", "skip-2", "keep-2"} {
		if _, err := bus.Publish(ctx, js, newAnnotation(a)); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var seen []string
	go bus.Consume(ctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{
		Wants: func(data []byte) bool { return bytes.Contains(data, []byte(`"keep-`)) }},
		func(_ context.Context, b []*bus.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			for _, d := range b {
				seen = append(seen, d.Event.(*bus.AnnotationCreated).Author)
			}
			return nil
		})
	// The consumer's info may not count new messages at once: wait for the
	// handler first, then for the acks.
	waitFor(t, "two handled", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 2 })
	waitFor(t, "consumer drained", func() bool { p, ack := pending(t, js, bus.ConsumerAnnotator); return p == 0 && ack == 0 })
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, []string{"keep-1", "keep-2"}) {
		t.Fatalf("handled %v, want keep-1 and keep-2", seen)
	}
	if n := len(deadLetters(t, js)); n != 0 {
		t.Fatalf("%d dead letters; an unwanted message is acked, not decoded", n)
	}
}

// A batch still gathering (a long MaxQueueDelay, few messages) is
// handled as soon as the consumer is stopped, not at the end of the delay.
func TestConsumeShutdownEndsTheGathering(t *testing.T) {
	_, js := startNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := bus.Publish(ctx, js, newAnnotation("lone")); err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- bus.Consume(ctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{MaxBatch: 100, MaxQueueDelay: time.Hour},
			func(_ context.Context, b []*bus.Delivery) error {
				for _, d := range b {
					handled <- d.Event.(*bus.AnnotationCreated).Author
				}
				return nil
			})
	}()
	// The message is in hand once it is delivered and not yet acked.
	waitFor(t, "message in hand", func() bool { p, ack := pending(t, js, bus.ConsumerAnnotator); return p == 0 && ack == 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Consume: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Consume still gathering after being stopped")
	}
	if got := <-handled; got != "lone" {
		t.Fatalf("handled %q", got)
	}
	waitFor(t, "acked", func() bool { p, ack := pending(t, js, bus.ConsumerAnnotator); return p == 0 && ack == 0 })
}

func TestConsumeShutdownFinishesBatchInHand(t *testing.T) {
	_, js := startNATS(t)
	const total = 20
	for range total {
		if _, err := bus.Publish(context.Background(), js, newAnnotation("u")); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	entered := make(chan int, 1) // the size of the batch in hand
	release := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		done <- bus.Consume(ctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{MaxBatch: 5, MaxQueueDelay: time.Millisecond},
			func(_ context.Context, b []*bus.Delivery) error {
				once.Do(func() { entered <- len(b) })
				<-release
				return nil
			})
	}()
	// The batch holds 1 to 5 messages: what arrived within MaxQueueDelay.
	inHand := <-entered
	cancel() // shutdown while a batch is in hand
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The batch in hand was acked and nothing else is held by the stopped
	// replica, so the rest is available at once, long before AckWait (30s).
	// (The server's consumer info may lag the acks by a moment.)
	want := uint64(total - inHand)
	var p uint64
	var ack int
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if p, ack = pending(t, js, bus.ConsumerAnnotator); ack == 0 && p == want {
			break
		}
	}
	if ack != 0 || p != want {
		t.Fatalf("after shutdown with %d in hand: pending %d, ack-pending %d; want %d, 0", inHand, p, ack, want)
	}
	// A replica taking over gets exactly the messages not yet handled.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	var mu sync.Mutex
	got := 0
	go bus.Consume(ctx2, js, bus.ConsumerAnnotator, bus.ConsumeOptions{}, func(_ context.Context, b []*bus.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		got += len(b)
		return nil
	})
	waitFor(t, "takeover", func() bool { mu.Lock(); defer mu.Unlock(); return uint64(got) >= want })
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if uint64(got) != want {
		t.Fatalf("takeover handled %d messages, want %d", got, want)
	}
}

func TestRequestReply(t *testing.T) {
	nc, _ := startNATS(t)
	type echo struct {
		Word string `json:"word"`
	}
	svc, err := bus.AddService(nc, "test", "1.0.0", "echo", bus.Endpoint{
		Name: "echo", Subject: "test.echo",
		Handler: bus.Handle(nil, time.Second, func(ctx context.Context, r echo) (echo, error) {
			switch r.Word {
			case "missing":
				return echo{}, bus.Errorf(bus.CodeNotFound, "no such word")
			case "bad":
				return echo{}, &bus.Error{Code: bus.CodeUnprocessable, Message: "invalid", Details: []string{"word: bad"}}
			case "boom":
				return echo{}, errors.New("database exploded: secret detail")
			}
			return echo{Word: r.Word + bus.RequestID(ctx)}, nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	ctx := bus.WithRequestID(context.Background(), "-r1")
	got, err := bus.Request[echo](ctx, nc, "test.echo", echo{"hi"})
	if err != nil || got.Word != "hi-r1" {
		t.Fatalf("echo = %+v, %v", got, err)
	}
	for word, code := range map[string]bus.Code{"missing": 404, "bad": 422, "boom": 500} {
		_, err := bus.Request[echo](ctx, nc, "test.echo", echo{word})
		var be *bus.Error
		if !errors.As(err, &be) || be.Code != code {
			t.Fatalf("%s: err %v, want *Error %d", word, err, code)
		}
		if word == "bad" && (len(be.Details) != 1 || be.Details[0] != "word: bad") {
			t.Fatalf("details lost: %+v", be)
		}
		if strings.Contains(be.Message, "secret") {
			t.Fatalf("internal error leaked: %q", be.Message)
		}
	}
	if _, err := bus.Request[echo](ctx, nc, "test.nobody", echo{"x"}); !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("no responders: %v, want ErrUnavailable", err)
	}
	// On the wire the code is the number a client of the previous version
	// (or of any language) reads from the micro error header and the body.
	reply, err := nc.Request("test.echo", []byte(`{"word":"bad"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := reply.Header.Get(micro.ErrorCodeHeader); got != "422" {
		t.Fatalf("%s = %q, want 422", micro.ErrorCodeHeader, got)
	}
	var body struct {
		Code int `json:"code"`
	}
	if err := json.Unmarshal(reply.Data, &body); err != nil || body.Code != 422 {
		t.Fatalf("error body %s: code %d, %v; want 422", reply.Data, body.Code, err)
	}
}

func TestIrisFilterValidate(t *testing.T) {
	tests := []struct {
		name    string
		f       bus.IrisFilter
		details []string
	}{
		{"empty ok", bus.IrisFilter{}, nil},
		{"full ok", bus.IrisFilter{Species: []string{"setosa"}, Lower: map[string]float64{"sepal_length": 1}, Upper: map[string]float64{"sepal_length": 1}}, nil},
		{"unknown species", bus.IrisFilter{Species: []string{"rose"}}, []string{"species:"}},
		{"injection in species", bus.IrisFilter{Species: []string{"setosa' OR 1=1 --"}}, []string{"species:"}},
		{"unknown column", bus.IrisFilter{Lower: map[string]float64{"height; DROP TABLE iris": 1}}, []string{"lower.height; DROP TABLE iris:"}},
		{"lower above upper", bus.IrisFilter{Lower: map[string]float64{"petal_width": 2}, Upper: map[string]float64{"petal_width": 1}}, []string{"lower.petal_width:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.f.Validate()
			if tt.details == nil {
				if err != nil {
					t.Fatalf("unexpected %v", err)
				}
				return
			}
			var be *bus.Error
			if !errors.As(err, &be) || be.Code != bus.CodeUnprocessable || len(be.Details) != len(tt.details) {
				t.Fatalf("err %v", err)
			}
			for i, d := range tt.details {
				if !strings.HasPrefix(be.Details[i], d) {
					t.Fatalf("detail %q, want prefix %q", be.Details[i], d)
				}
			}
		})
	}
	if err := bus.ValidatePage(0, 1001); err == nil || len(err.(*bus.Error).Details) != 2 {
		t.Fatalf("ValidatePage(0, 1001) = %v", err)
	}
}

func TestReplayFromStartAndFromTime(t *testing.T) {
	_, js := startNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	seen := map[string]int{}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, k := range seen {
			n += k
		}
		return n
	}
	go bus.Consume(ctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{}, func(_ context.Context, b []*bus.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range b {
			seen[d.Event.(*bus.AnnotationCreated).Author]++
		}
		return nil
	})
	for _, a := range []string{"a", "b", "c"} {
		if _, err := bus.Publish(ctx, js, newAnnotation(a)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "first delivery", func() bool { return count() == 3 })
	time.Sleep(20 * time.Millisecond)
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	for _, a := range []string{"d", "e"} {
		if _, err := bus.Publish(ctx, js, newAnnotation(a)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "second delivery", func() bool { return count() == 5 })

	// From the start, into the running consumer: every event once more.
	if err := bus.Replay(ctx, js, bus.ConsumerAnnotator, time.Time{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replay from start", func() bool { return count() == 10 })
	// From a time: only what was published after it.
	if err := bus.Replay(ctx, js, bus.ConsumerAnnotator, mid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replay since", func() bool { return count() == 12 })
	mu.Lock()
	if seen["a"] != 2 || seen["d"] != 3 {
		t.Fatalf("seen %v", seen)
	}
	mu.Unlock()
	// A service restart after the replay keeps the replayed start.
	if err := bus.EnsureTopology(ctx, js, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatalf("EnsureTopology after replay: %v", err)
	}
	c, _ := js.Consumer(ctx, bus.ConsumerAnnotator.Stream, bus.ConsumerAnnotator.Durable)
	if c.CachedInfo().Config.DeliverPolicy != jetstream.DeliverByStartTimePolicy {
		t.Fatalf("deliver policy reset to %v", c.CachedInfo().Config.DeliverPolicy)
	}
}

func TestReplicasFromEnv(t *testing.T) {
	for v, want := range map[string]int{"": 1, "1": 1, "3": 3, "5": 5, "0": 0, "6": 0, "three": 0, "-1": 0} {
		t.Setenv(bus.EnvReplicas, v)
		got, err := bus.ReplicasFromEnv()
		if want == 0 {
			if err == nil || !strings.Contains(err.Error(), bus.EnvReplicas) {
				t.Errorf("%q: err %v, want an error naming %s", v, err, bus.EnvReplicas)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", v, got, err, want)
		}
	}
}
