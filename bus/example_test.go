package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// exampleBus starts an embedded server with the topology applied, as the
// local stack does; a downstream program connects to its NATS_URL instead.
func exampleBus() (nc *nats.Conn, js jetstream.JetStream, stop func()) {
	dir, err := os.MkdirTemp("", "bus-example-")
	if err != nil {
		panic(err)
	}
	ns, err := natsserver.Start(natsserver.Config{Dir: dir})
	if err != nil {
		panic(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	nc, js, err = bus.Connect(context.Background(), ns.ClientURL(), "example", quiet)
	if err != nil {
		panic(err)
	}
	err = bus.EnsureTopology(context.Background(), js, bus.TopologyOptions{MaxBytesScale: 0.01, Logger: quiet})
	if err != nil {
		panic(err)
	}
	return nc, js, func() { nc.Close(); ns.Shutdown(); os.RemoveAll(dir) }
}

// Publish returns once the stream has stored the event. The event id is
// the message id, so publishing the same event again (a retry after a lost
// acknowledgement) stores it once.
func ExamplePublish() {
	_, js, stop := exampleBus()
	defer stop()
	ctx := context.Background()

	ev := &bus.AnnotationCreated{
		Meta:       bus.NewMeta(bus.TypeAnnotationCreated),
		Author:     "ada@example.com",
		Annotation: json.RawMessage(`{"label":"cat","box":[10,10,50,50]}`),
	}
	ack, err := bus.Publish(ctx, js, ev)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("stored in", ack.Stream, "at", ack.Sequence)

	again, _ := bus.Publish(ctx, js, ev)
	fmt.Println("retry is a duplicate:", again.Duplicate)
	// Output:
	// stored in ANNOTATIONS at 1
	// retry is a duplicate: true
}

// Consume hands batches of decoded, validated events to the handler and
// acks them once it returns nil. A message the handler rejects goes to the
// dead-letter stream with its reason. It runs until ctx ends.
func ExampleConsume() {
	_, js, stop := exampleBus()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, label := range []string{"cat", "dog"} {
		ev := &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), Author: "ada@example.com",
			Annotation: json.RawMessage(`{"label":"` + label + `"}`)}
		if _, err := bus.Publish(ctx, js, ev); err != nil {
			fmt.Println(err)
			return
		}
	}

	seen := 0
	err := bus.Consume(ctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{Logger: slog.New(slog.DiscardHandler)},
		func(ctx context.Context, batch []*bus.Delivery) error {
			for _, d := range batch {
				a := d.Event.(*bus.AnnotationCreated)
				fmt.Printf("%s annotated %s\n", a.Author, a.Annotation)
				if seen++; seen == 2 {
					cancel() // a service runs until it is told to stop
				}
			}
			return nil // ack the batch: its effect is durable
		})
	fmt.Println("stopped:", err == nil || errors.Is(err, context.Canceled))
	// Output:
	// ada@example.com annotated {"label":"cat"}
	// ada@example.com annotated {"label":"dog"}
	// stopped: true
}

// AddService answers a query subject in a queue group, so every replica of
// a service shares the requests; Handle decodes the request, runs the typed
// function and encodes its reply or its *bus.Error.
func ExampleAddService() {
	nc, _, stop := exampleBus()
	defer stop()

	models := func(ctx context.Context, _ bus.ModelsQuery) ([]bus.ModelInfo, error) {
		return []bus.ModelInfo{{Name: "digits", Version: "1", Task: "classification", Labels: []string{"0", "1"}}}, nil
	}
	svc, err := bus.AddService(nc, "inference", "1.0.0", "grades images",
		bus.Endpoint{Name: "models", Subject: bus.SvcModelsList, Handler: bus.Handle(nil, 5*time.Second, models)})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer svc.Stop()

	list, err := bus.Request[[]bus.ModelInfo](context.Background(), nc, bus.SvcModelsList, bus.ModelsQuery{})
	fmt.Println(list[0].Name, list[0].Labels, err)
	// Output:
	// digits [0 1] <nil>
}

// Request sends a typed query and decodes the typed reply. A refusal comes
// back as a *bus.Error whose Code is transport-neutral (the edge turns it
// into the HTTP status of the same number); no answering service is
// bus.ErrUnavailable.
func ExampleRequest() {
	nc, _, stop := exampleBus()
	defer stop()
	ctx := context.Background()

	get := func(ctx context.Context, q bus.GradeGetQuery) (bus.Grade, error) {
		return bus.Grade{}, bus.Errorf(bus.CodeNotFound, "grade %s not found", q.ID)
	}
	svc, err := bus.AddService(nc, "annotator", "1.0.0", "grade history",
		bus.Endpoint{Name: "grades-get", Subject: bus.SvcGradesGet, Handler: bus.Handle(nil, 5*time.Second, get)})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer svc.Stop()

	_, err = bus.Request[bus.Grade](ctx, nc, bus.SvcGradesGet, bus.GradeGetQuery{ID: "g-1", Owner: "ada@example.com"})
	var be *bus.Error
	if errors.As(err, &be) {
		fmt.Println(be.Code == bus.CodeNotFound, be.Message)
	}

	_, err = bus.Request[[]bus.IrisStat](ctx, nc, bus.SvcIrisStats, bus.IrisStatsQuery{Func: "mean"})
	fmt.Println(errors.Is(err, bus.ErrUnavailable))
	// Output:
	// true grade g-1 not found
	// true
}
