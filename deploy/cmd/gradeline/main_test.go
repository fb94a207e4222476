package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

func TestRunRejectsBadArguments(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		args []string
		want string
	}{
		{nil, "usage"},
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"replay"}, "name a stream"},
		{[]string{"replay", "nosuch"}, "no consumers on stream"},
		{[]string{"replay", "annotations", "--consumer", "ghost"}, "has no consumer \"ghost\"; it has: annotator, analytics-annotations"},
		{[]string{"replay", "annotations", "--since", "yesterday"}, "want a duration"},
		{[]string{"replay", "annotations", "--since", "-2h"}, "must be positive"},
		{[]string{"replay", "annotations", "--bogus"}, "flag provided but not defined"},
	}
	for _, tt := range tests {
		err := run(context.Background(), tt.args, &bytes.Buffer{}, now)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run(%q) = %v, want error containing %q", tt.args, err, tt.want)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"2h":                   now.Add(-2 * time.Hour),
		"2026-11-24T08:00:00Z": time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC),
	} {
		got, err := parseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestReplayAgainstRunningServer(t *testing.T) {
	ns, err := bus.StartEmbedded(bus.EmbeddedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	t.Setenv("NATS_URL", ns.ClientURL())
	ctx := context.Background()
	nc, js, err := bus.Connect(ctx, ns.ClientURL(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := bus.EnsureTopology(ctx, js, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(ctx, []string{"replay", "Annotations", "--consumer", "annotator", "--since", "2h"}, &out, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "replaying ANNOTATIONS into consumer annotator from ") {
		t.Fatalf("output %q", out.String())
	}
	c, err := js.Consumer(ctx, bus.StreamAnnotations, "annotator")
	if err != nil {
		t.Fatal(err)
	}
	if cfg := c.CachedInfo().Config; cfg.DeliverPolicy != jetstream.DeliverByStartTimePolicy || time.Since(*cfg.OptStartTime) < 119*time.Minute {
		t.Fatalf("consumer config after replay: %+v", cfg)
	}
	out.Reset()
	if err := run(ctx, []string{"streams"}, &out, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "ANNOTATIONS") || !strings.Contains(out.String(), "annotator ") {
		t.Fatalf("streams output %q", out.String())
	}
}
