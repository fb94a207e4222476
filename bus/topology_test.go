package bus_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
)

// startEmptyAuthNATS is startAuthNATS without the operator's step: a
// server whose streams nobody created yet.
func startEmptyAuthNATS(t *testing.T) *authStack {
	t.Helper()
	st := &authStack{creds: map[string]bus.Credential{}}
	var creds []bus.Credential
	for _, u := range bus.Users() {
		pw, err := bus.NewPassword()
		if err != nil {
			t.Fatal(err)
		}
		st.creds[u] = bus.Credential{User: u, Password: pw}
		creds = append(creds, st.creds[u])
	}
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), Users: creds})
	if err != nil {
		t.Fatal(err)
	}
	st.ns = ns
	t.Cleanup(ns.Shutdown)
	return st
}

// logTap is a slog handler that hands every record's message to a channel.
type logTap struct{ msgs chan string }

func (l logTap) Enabled(context.Context, slog.Level) bool { return true }
func (l logTap) Handle(_ context.Context, r slog.Record) error {
	select {
	case l.msgs <- r.Message:
	default:
	}
	return nil
}
func (l logTap) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l logTap) WithGroup(string) slog.Handler      { return l }

func TestStreamsNeededBy(t *testing.T) {
	obj := bus.ObjectStream()
	tests := []struct {
		user string
		want []string
	}{
		{bus.UserIngest, []string{bus.StreamAnnotations, bus.StreamImages, bus.StreamCatalog, bus.StreamIris, bus.StreamCallbacks,
			bus.StreamGrades, bus.StreamDeadLetter, obj}},
		{bus.UserInference, []string{bus.StreamGrades, bus.StreamImages, bus.StreamDeadLetter, obj}},
		{bus.UserAnnotator, []string{bus.StreamAnnotations, bus.StreamDeadLetter, bus.StreamCatalog, bus.StreamGrades, bus.StreamCallbacks}},
		{bus.UserAnalytics, []string{bus.StreamIris, bus.StreamDeadLetter, bus.StreamGrades, bus.StreamAnnotations, bus.StreamRegrades}},
		{bus.UserAdmin, nil},
		{bus.UserSubscriber, nil},
		{"mallory", nil},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			got := bus.StreamsNeededBy(tt.user)
			if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(tt.want))) {
				t.Fatalf("StreamsNeededBy(%s) = %v, want %v", tt.user, got, tt.want)
			}
		})
	}
}

// TestServiceWaitsForTheOperatorsStreams: a service started before the
// deploy step finds its streams missing, says what to run, creates nothing
// and is not ready; once the operator creates them it ensures its own
// consumers, and only those.
func TestServiceWaitsForTheOperatorsStreams(t *testing.T) {
	st := startEmptyAuthNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, js := st.connect(t, bus.UserAnnotator)

	if err := bus.CheckStreams(ctx, js, bus.UserAnnotator); !errors.Is(err, bus.ErrStreamsMissing) ||
		!strings.Contains(err.Error(), "gradeline setup") || !strings.Contains(err.Error(), bus.StreamAnnotations) {
		t.Fatalf("CheckStreams before setup = %v, want ErrStreamsMissing naming the streams and `gradeline setup`", err)
	}
	_, ingest := st.connect(t, bus.UserIngest)
	if _, err := bus.ImageStore(ctx, ingest); !errors.Is(err, bus.ErrStreamsMissing) {
		t.Fatalf("ImageStore before setup = %v, want ErrStreamsMissing", err)
	}

	tap := logTap{msgs: make(chan string, 16)}
	done := make(chan error, 1)
	go func() {
		done <- bus.EnsureService(ctx, js, bus.UserAnnotator, bus.TopologyOptions{Logger: slog.New(tap), StreamsWait: time.Hour})
	}()
	select {
	case msg := <-tap.msgs:
		if !strings.HasPrefix(msg, "streams missing: run `gradeline setup`") {
			t.Fatalf("first log line %q", msg)
		}
	case err := <-done:
		t.Fatalf("EnsureService returned %v before the streams existed", err)
	}
	// It created nothing while waiting.
	_, admin := st.connect(t, bus.UserAdmin)
	if _, err := admin.Stream(ctx, bus.StreamAnnotations); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("stream %s while the service waits: %v", bus.StreamAnnotations, err)
	}

	if err := bus.EnsureStreams(ctx, admin, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("EnsureService after setup: %v", err)
	}
	if err := bus.CheckStreams(ctx, js, bus.UserAnnotator); err != nil {
		t.Fatalf("CheckStreams after setup: %v", err)
	}
	for _, c := range bus.Consumers {
		_, err := admin.Consumer(ctx, c.Stream, c.Durable)
		switch own := c.Owner() == bus.UserAnnotator; {
		case own && err != nil:
			t.Errorf("own consumer %s: %v", c.Durable, err)
		case !own && !errors.Is(err, jetstream.ErrConsumerNotFound):
			t.Errorf("annotator created %s's consumer %s (%v)", c.Owner(), c.Durable, err)
		}
	}
}

// TestServiceGivesUpWithoutStreams: past StreamsWait the service stops
// with an error that says what to run.
func TestServiceGivesUpWithoutStreams(t *testing.T) {
	st := startEmptyAuthNATS(t)
	_, js := st.connect(t, bus.UserInference)
	err := bus.EnsureService(context.Background(), js, bus.UserInference,
		bus.TopologyOptions{Logger: slog.New(slog.DiscardHandler), StreamsWait: 200 * time.Millisecond})
	if !errors.Is(err, bus.ErrStreamsMissing) || !strings.Contains(err.Error(), "gradeline setup") ||
		!strings.Contains(err.Error(), bus.StreamImages) || !strings.Contains(err.Error(), "gave up") {
		t.Fatalf("EnsureService without streams = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := bus.EnsureService(ctx, js, bus.UserInference, bus.TopologyOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("EnsureService with a cancelled context = %v", err)
	}
}

// TestRollingUpgradeKeepsOtherConsumersSettings: each service owns its
// consumers' settings. A replica of one service (version N) starting while
// another service already runs version N+1 settings leaves those alone,
// and restores only its own.
func TestRollingUpgradeKeepsOtherConsumersSettings(t *testing.T) {
	st := startAuthNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, admin := st.connect(t, bus.UserAdmin)
	for _, a := range bus.Access {
		_, js := st.connect(t, a.User)
		if err := bus.EnsureService(ctx, js, a.User, bus.TopologyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Version N+1 of analytics and of the annotator changed a consumer each.
	newer := func(spec bus.ConsumerSpec) jetstream.ConsumerConfig {
		cfg := spec.Config()
		cfg.AckWait, cfg.MaxAckPending = 3*time.Minute, spec.MaxAckPending+7
		if _, err := admin.UpdateConsumer(ctx, spec.Stream, cfg); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	analyticsN1 := newer(bus.ConsumerAnalyticsGrades)
	newer(bus.ConsumerAnnotatorGrades)

	// An annotator replica of version N (the table above) starts.
	_, js := st.connect(t, bus.UserAnnotator)
	if err := bus.EnsureService(ctx, js, bus.UserAnnotator, bus.TopologyOptions{}); err != nil {
		t.Fatal(err)
	}
	info := func(spec bus.ConsumerSpec) jetstream.ConsumerConfig {
		c, err := admin.Consumer(ctx, spec.Stream, spec.Durable)
		if err != nil {
			t.Fatal(err)
		}
		return c.CachedInfo().Config
	}
	if got := info(bus.ConsumerAnalyticsGrades); got.AckWait != analyticsN1.AckWait || got.MaxAckPending != analyticsN1.MaxAckPending {
		t.Errorf("analytics' consumer rewritten by the annotator: ack wait %s, max ack pending %d; want %s, %d",
			got.AckWait, got.MaxAckPending, analyticsN1.AckWait, analyticsN1.MaxAckPending)
	}
	if got := info(bus.ConsumerAnnotatorGrades); got.AckWait != bus.ConsumerAnnotatorGrades.AckWait || got.MaxAckPending != bus.ConsumerAnnotatorGrades.MaxAckPending {
		t.Errorf("the annotator's own consumer kept ack wait %s, max ack pending %d; want its table's %s, %d",
			got.AckWait, got.MaxAckPending, bus.ConsumerAnnotatorGrades.AckWait, bus.ConsumerAnnotatorGrades.MaxAckPending)
	}
}
