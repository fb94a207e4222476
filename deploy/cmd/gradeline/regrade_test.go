package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/deploy/internal/fixture"
	"github.com/gradeline/gradeline/inference"
)

// regradeBus starts a NATS server with the streams, points the CLI at it
// (NATS_URL) and connects; it skips without ONNX Runtime.
func regradeBus(t *testing.T) jetstream.JetStream {
	t.Helper()
	if os.Getenv("ONNXRUNTIME_LIB") == "" {
		t.Skip("ONNXRUNTIME_LIB not set: run `make install` (make test sets it)")
	}
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), Setup: &bus.TopologyOptions{MaxBytesScale: 0.01}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	t.Setenv("NATS_URL", ns.ClientURL())
	t.Setenv("GRADELINE_MODELS_DIR", "")
	nc, js, err := bus.Connect(context.Background(), ns.ClientURL(), "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return js
}

// TestRegrade runs `gradeline regrade` over submissions stored in the
// streams: each image of the model, graded again in-process by the same
// production path, becomes one grade.shadow event with the label the
// registry gives, compared with the served label; a rerun with the same
// run id publishes nothing twice; an image deleted since is counted gone.
func TestRegrade(t *testing.T) {
	lib := os.Getenv("ONNXRUNTIME_LIB")
	ctx := context.Background()
	js := regradeBus(t)
	images, err := js.ObjectStore(ctx, bus.ImageBucket)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := inference.LoadRegistry(inference.RegistryOptions{ORTLib: lib})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()

	var pngs [][]byte
	var subs []*bus.ImageSubmitted
	for i := range 3 {
		png := fixture.DigitPNG(i)
		obj := fmt.Sprintf("img-%d", i)
		if _, err := images.PutBytes(ctx, obj, png); err != nil {
			t.Fatal(err)
		}
		sub := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: obj, Owner: "u", Model: "fashion",
			Image: bus.ImageRef{Object: obj, SHA256: strings.Repeat("a", 64), ContentType: "image/png", Size: int64(len(png))}}
		pngs, subs = append(pngs, png), append(subs, sub)
		mustPublish(t, js, sub)
		mustPublish(t, js, &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: sub.ID, ImageID: obj, Owner: "u",
			Model: "fashion", ModelVersion: "1", Label: "bag", Score: 0.5, Scores: map[string]float64{"bag": 0.5}})
	}
	// Another model's submission is not regraded; a deleted image is gone.
	mustPublish(t, js, &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: "x", Owner: "u", Model: "digits",
		Image: bus.ImageRef{Object: "img-0", SHA256: strings.Repeat("a", 64)}})
	if err := images.Delete(ctx, "img-2"); err != nil {
		t.Fatal(err)
	}
	want, err := reg.Grade(ctx, "fashion", pngs[:2])
	if err != nil {
		t.Fatal(err)
	}

	for range 2 {
		var out bytes.Buffer
		if err := run(ctx, []string{"regrade", "--model", "fashion@1", "--since", "1h", "--run", "r1"}, &out, time.Now()); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "3 submissions, 2 graded, 0 failed, 1 images gone") || !strings.Contains(out.String(), "agreement with what was served") {
			t.Fatalf("output %q", out.String())
		}
	}
	st, err := js.Stream(ctx, bus.StreamRegrades)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx)
	if info.State.Msgs != 2 {
		t.Fatalf("%d shadow grades on the stream, want 2 (the rerun publishes nothing twice)", info.State.Msgs)
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for m := range msgs.Messages() {
		ev, err := bus.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		sh := ev.(*bus.GradeShadow)
		if sh.Of != subs[i].ID || sh.Label != want[i].Label || sh.ModelVersion != "1" || sh.Run != "r1" || sh.Owner != "u" {
			t.Fatalf("shadow %d %+v, want of %s label %s", i, sh, subs[i].ID, want[i].Label)
		}
		i++
	}
	for _, bad := range [][]string{{"regrade"}, {"regrade", "--model", "fashion"}, {"regrade", "--model", "nosuch@1"}, {"regrade", "--model", "fashion@9"}} {
		if err := run(ctx, bad, &bytes.Buffer{}, time.Now()); err == nil {
			t.Errorf("run(%q) accepted", bad)
		}
	}
}

func mustPublish(t *testing.T, js jetstream.JetStream, ev bus.Event) {
	t.Helper()
	if _, err := bus.Publish(context.Background(), js, ev); err != nil {
		t.Fatal(err)
	}
}
