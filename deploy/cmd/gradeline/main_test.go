package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/deploy/internal/natscreds"
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

// TestSetupCreatesTheStreams: `gradeline setup` on an empty server creates
// every stream of the table, the image bucket and the model state bucket,
// and no consumer (each
// service ensures its own); a second run changes nothing.
func TestSetupCreatesTheStreams(t *testing.T) {
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	t.Setenv("NATS_URL", ns.ClientURL())
	ctx := context.Background()
	for range 2 {
		var out bytes.Buffer
		if err := run(ctx, []string{"setup", "--max-bytes-scale", "0.01"}, &out, time.Now()); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "stream IMAGES (1 replicas)\n") || !strings.Contains(out.String(), "object store "+bus.ImageBucket) ||
			!strings.Contains(out.String(), "key-value bucket "+bus.ModelStateBucket) {
			t.Fatalf("setup output %q", out.String())
		}
	}
	nc, js, err := bus.Connect(ctx, ns.ClientURL(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, s := range bus.Streams {
		st, err := js.Stream(ctx, s.Name)
		if err != nil {
			t.Fatalf("stream %s: %v", s.Name, err)
		}
		if n := st.CachedInfo().State.Consumers; n != 0 {
			t.Errorf("stream %s has %d consumers after setup, want none", s.Name, n)
		}
	}
	if _, err := js.ObjectStore(ctx, bus.ImageBucket); err != nil {
		t.Errorf("image bucket: %v", err)
	}
	if _, err := bus.ModelStateStore(ctx, js); err != nil {
		t.Errorf("model state bucket: %v", err)
	}
	for _, user := range []string{bus.UserIngest, bus.UserInference, bus.UserAnnotator, bus.UserAnalytics} {
		if err := bus.CheckStreams(ctx, js, user); err != nil {
			t.Errorf("%s after setup: %v", user, err)
		}
	}
	for _, bad := range [][]string{{"setup", "--replicas", "x"}, {"setup", "extra"}, {"topology"}} {
		if err := run(ctx, bad, io.Discard, time.Now()); err == nil {
			t.Errorf("run(%q) accepted", bad)
		}
	}
}

func TestReplayAgainstRunningServer(t *testing.T) {
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir()})
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

// TestOperatorURLFromLocalDataDir: without NATS_URL the CLI connects as the
// operator with the URL local mode wrote, to a server that refuses anyone else.
func TestOperatorURLFromLocalDataDir(t *testing.T) {
	dataDir := t.TempDir()
	creds, err := natscreds.LoadOrCreate(natscreds.Dir(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), Users: natscreds.List(creds)})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	if err := natscreds.WriteURLs(natscreds.Dir(dataDir), ns.ClientURL(), creds); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NATS_URL", "")
	t.Setenv("GRADELINE_DATA_DIR", dataDir)
	adminURL, err := natscreds.AdminURL(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	nc, js, err := bus.Connect(context.Background(), adminURL, "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := bus.EnsureTopology(context.Background(), js, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"replay", "annotations", "--consumer", "annotator"}, &out, time.Now()); err != nil {
		t.Fatalf("replay as the operator: %v", err)
	}
	out.Reset()
	if err := run(context.Background(), []string{"streams"}, &out, time.Now()); err != nil || !strings.Contains(out.String(), "annotator ") {
		t.Fatalf("streams: %v %q", err, out.String())
	}
}

// TestNATSConfigCommand: the generated configuration is the bus table's,
// and the copy the manifests ship is the current one.
func TestNATSConfigCommand(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"nats-config"}, &out, time.Now()); err != nil {
		t.Fatal(err)
	}
	if out.String() != bus.NATSServerAuthConfig(nil) {
		t.Fatal("nats-config differs from bus.NATSServerAuthConfig")
	}
	shipped, err := os.ReadFile("../../k8s/base/nats-auth.conf")
	if err != nil {
		t.Fatal(err)
	}
	if string(shipped) != out.String() {
		t.Fatal("deploy/k8s/base/nats-auth.conf is stale: go run ./deploy/cmd/gradeline nats-config > deploy/k8s/base/nats-auth.conf")
	}
	for _, u := range bus.Users() {
		t.Setenv(bus.PasswordEnv(u), "pw-"+u)
	}
	out.Reset()
	if err := run(context.Background(), []string{"nats-config", "--bcrypt"}, &out, time.Now()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "pw-") || strings.Count(out.String(), `password: "$2a$`) != len(bus.Users()) {
		t.Fatalf("--bcrypt output carries no hashes or the plain passwords:\n%s", out.String())
	}
}
