package inference

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"image"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/inference/internal/testenv"
)

// replica is one inference service on a shared NATS server, with its own
// metrics (the models it serves, read from its gauge).
type replica struct {
	metrics *prometheus.Registry
	cancel  context.CancelFunc
	done    chan error
}

func startReplica(t *testing.T, url string) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{metrics: prometheus.NewRegistry(), cancel: cancel, done: make(chan error, 1)}
	ready := make(chan struct{})
	go func() {
		r.done <- Run(ctx, Config{NATSURL: url, ORTLib: testenv.ORTLib(t), ModelsPoll: -1, Logger: quiet,
			Registerer: r.metrics, OnReady: func() { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-r.done:
		cancel()
		t.Fatalf("inference.Run: %v", err)
	}
	t.Cleanup(r.stop)
	return r
}

// stop ends the replica and waits for Run to return (idempotent).
func (r *replica) stop() {
	r.cancel()
	if r.done != nil {
		<-r.done
		r.done = nil
	}
}

// served is the replica's gauge of served models.
func (r *replica) served(t *testing.T) int {
	t.Helper()
	mfs, err := r.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "gradeline_inference_models_loaded" {
			return int(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	t.Fatal("no models gauge")
	return 0
}

// waitServed waits until every replica serves n models.
func waitServed(t *testing.T, n int, rs ...*replica) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for i, r := range rs {
		for r.served(t) != n {
			if time.Now().After(deadline) {
				t.Fatalf("replica %d serves %d models, want %d", i, r.served(t), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestUnloadRemembered: an unload through the repository API is kept in
// the model state bucket, so a restarted replica starts with the model
// unloaded and every replica agrees; a load, through the API or written to
// the bucket by another replica, serves it again everywhere.
func TestUnloadRemembered(t *testing.T) {
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), MaxStore: 1 << 40, Setup: &bus.TopologyOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	ctx := t.Context()
	nc, js, err := bus.Connect(ctx, ns.ClientURL(), "t", quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	store, err := bus.ImageStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	png := encodePNG(t, image.NewGray(image.Rect(0, 0, 8, 8)))
	h := sha256.Sum256(png)
	sum := hex.EncodeToString(h[:])
	if _, err := store.PutBytes(ctx, "blank", png); err != nil {
		t.Fatal(err)
	}
	// grade submits the image to digits and waits for its outcome.
	grade := func() bus.Event {
		t.Helper()
		ev := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: bus.NewID(), Owner: "tester", Model: "digits",
			Image: bus.ImageRef{Object: "blank", SHA256: sum, ContentType: "image/png", Size: int64(len(png))}}
		if _, err := bus.Publish(ctx, js, ev); err != nil {
			t.Fatal(err)
		}
		return waitOutcome(t, js, ev.ID)
	}
	repo := func(action string) bus.ModelInfo {
		t.Helper()
		// A replica just started may not have its subscription at the
		// server yet.
		info, err := bus.Request[bus.ModelInfo](ctx, nc, bus.SvcModelsRepository, bus.ModelRepositoryQuery{Model: "digits", Action: action})
		for deadline := time.Now().Add(time.Minute); errors.Is(err, bus.ErrUnavailable) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
			info, err = bus.Request[bus.ModelInfo](ctx, nc, bus.SvcModelsRepository, bus.ModelRepositoryQuery{Model: "digits", Action: action})
		}
		if err != nil {
			t.Fatalf("%s: %v", action, err)
		}
		return info
	}

	a := startReplica(t, ns.ClientURL())
	all := a.served(t)
	if info := repo(bus.ModelUnload); info.State != StateUnavailable {
		t.Fatalf("after unload: %+v", info)
	}
	waitServed(t, all-1, a)

	// Restarted, the replica starts with digits unloaded, and a second
	// replica started now agrees: no grade of digits is served.
	a.stop()
	a = startReplica(t, ns.ClientURL())
	b := startReplica(t, ns.ClientURL())
	if a.served(t) != all-1 || b.served(t) != all-1 {
		t.Fatalf("after a restart the replicas serve %d and %d models, want %d", a.served(t), b.served(t), all-1)
	}
	for range 4 {
		if f, ok := grade().(*bus.GradeFailed); !ok || !strings.Contains(f.Reason, "unknown model") {
			t.Fatalf("digits graded while unloaded: %+v", f)
		}
	}
	// An unload repeated is no error.
	if info := repo(bus.ModelUnload); info.State != StateUnavailable {
		t.Fatalf("second unload: %+v", info)
	}

	// Loaded, it serves again on both.
	if info := repo(bus.ModelLoad); info.State == StateUnavailable {
		t.Fatalf("after load: %+v", info)
	}
	waitServed(t, all, a, b)
	for range 4 {
		if ev := grade(); ev.EventMeta().Type != bus.TypeGradeCompleted {
			t.Fatalf("digits not graded after load: %+v", ev)
		}
	}

	// The bucket itself is the shared state: an unload written there by
	// one replica reaches the others (here: written by the test), and so
	// does the load.
	kv, err := js.KeyValue(ctx, bus.ModelStateBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutString(ctx, "digits", bus.ModelStateUnloaded); err != nil {
		t.Fatal(err)
	}
	waitServed(t, all-1, a, b)
	if err := kv.Delete(ctx, "digits"); err != nil {
		t.Fatal(err)
	}
	waitServed(t, all, a, b)

	// A restart after the load serves the model.
	b.stop()
	b = startReplica(t, ns.ClientURL())
	if b.served(t) != all {
		t.Fatalf("after load and restart: %d models, want %d", b.served(t), all)
	}
	// An unknown model is 404 and remembers nothing.
	_, err = bus.Request[bus.ModelInfo](ctx, nc, bus.SvcModelsRepository, bus.ModelRepositoryQuery{Model: "nosuch", Action: bus.ModelUnload})
	if !bus.IsCode(err, bus.CodeNotFound) {
		t.Fatalf("unload of an unknown model: %v", err)
	}
	if _, err := kv.Get(ctx, "nosuch"); err == nil {
		t.Fatal("an unknown model's unload was remembered")
	}
}

// waitOutcome reads the GRADES stream until the outcome of grade id.
func waitOutcome(t *testing.T, js jetstream.JetStream, id string) bus.Event {
	t.Helper()
	c, err := js.OrderedConsumer(t.Context(), bus.StreamGrades, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		ev, err := bus.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		switch e := ev.(type) {
		case *bus.GradeCompleted:
			if e.GradeID == id {
				return e
			}
		case *bus.GradeFailed:
			if e.GradeID == id {
				return e
			}
		}
	}
	t.Fatalf("no outcome for grade %s", id)
	return nil
}
