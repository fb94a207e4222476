package annotator

import (
	"context"
	"fmt"
	"slices"

	"github.com/gradeline/gradeline/bus"
)

// handle is the shape of every annotator consumer: keep the events the
// consumer expects (anything else on its subjects is dead-lettered), write
// them in one store call bounded by writeTimeout, and settle each delivery
// by its own result. A store call that fails as a whole (MongoDB down)
// fails the batch, which bus.Consume naks with backoff.
func handle[E bus.Event](ctx context.Context, batch []*bus.Delivery, accept func(bus.Event) (E, bool),
	write func(context.Context, []E) ([]error, error), stored func([]*bus.Delivery, []error)) error {
	evs := make([]E, 0, len(batch))
	ds := make([]*bus.Delivery, 0, len(batch))
	for _, d := range batch {
		ev, ok := accept(d.Event)
		if !ok {
			d.Reject(fmt.Sprintf("unexpected event type %q on %s", d.Event.EventMeta().Type, d.Subject))
			continue
		}
		evs, ds = append(evs, ev), append(ds, d)
	}
	if len(evs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	results, err := write(ctx, evs)
	if err != nil {
		return err
	}
	// A per-document refusal is retried a few times and then dead-lettered
	// by bus.Consume with its reason; nil results are acked.
	for i, err := range results {
		if err != nil {
			ds[i].Retry(err)
		}
	}
	stored(ds, results)
	return nil
}

// storedBy reports a consumer's stored deliveries to the read-your-writes
// tracker.
func (a *app) storedBy(spec bus.ConsumerSpec) func([]*bus.Delivery, []error) {
	return func(ds []*bus.Delivery, results []error) { a.applied.stored(spec.Durable, ds, results) }
}

// is accepts events of the single type E.
func is[E bus.Event](ev bus.Event) (E, bool) {
	e, ok := ev.(E)
	return e, ok
}

// anyOf accepts events of the named types.
func anyOf(types ...string) func(bus.Event) (bus.Event, bool) {
	return func(ev bus.Event) (bus.Event, bool) {
		return ev, slices.Contains(types, ev.EventMeta().Type)
	}
}

func (a *app) handleAnnotations(ctx context.Context, batch []*bus.Delivery) error {
	return handle(ctx, batch, anyOf(bus.TypeAnnotationCreated, bus.TypeAnnotationUpdated, bus.TypeAnnotationDeleted),
		a.store.ApplyAnnotations, a.storedBy(bus.ConsumerAnnotator))
}

func (a *app) handleCatalog(ctx context.Context, batch []*bus.Delivery) error {
	return handle(ctx, batch, anyOf(bus.TypeImageCatalogued, bus.TypeImageTagsSet, bus.TypeImageDeleted, bus.TypeImageSharesSet), a.store.ApplyCatalog, a.storedBy(bus.ConsumerAnnotatorCatalog))
}

func (a *app) handleCallbacks(ctx context.Context, batch []*bus.Delivery) error {
	return handle(ctx, batch, is[*bus.GradeCallbackAttempted], a.store.InsertCallbackAttempts, a.storedBy(bus.ConsumerAnnotatorCallbacks))
}

func (a *app) handleGrades(ctx context.Context, batch []*bus.Delivery) error {
	return handle(ctx, batch, anyOf(bus.TypeGradeCompleted, bus.TypeGradeFailed, bus.TypeGradePending), a.store.ApplyGrades, a.storedBy(bus.ConsumerAnnotatorGrades))
}
