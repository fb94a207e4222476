package annotator

import (
	"context"
	"fmt"

	"github.com/gradeline/gradeline/bus"
)

// settle marks each delivery after a store call: a per-document refusal is
// retried a few times and then dead-lettered by bus.Consume with its
// reason; nil results are acked.
func settle(ds []*bus.Delivery, results []error) {
	for i, err := range results {
		if err != nil {
			ds[i].Retry(err)
		}
	}
}

func unexpected(d *bus.Delivery) {
	d.Reject(fmt.Sprintf("unexpected event type %q on %s", d.Event.EventMeta().Type, d.Subject))
}

func (a *app) handleAnnotations(ctx context.Context, batch []*bus.Delivery) error {
	evs := make([]*bus.AnnotationCreated, 0, len(batch))
	ds := make([]*bus.Delivery, 0, len(batch))
	for _, d := range batch {
		ev, ok := d.Event.(*bus.AnnotationCreated)
		if !ok {
			unexpected(d)
			continue
		}
		evs, ds = append(evs, ev), append(ds, d)
	}
	if len(evs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	res, err := a.store.InsertAnnotations(ctx, evs)
	if err != nil {
		return err
	}
	settle(ds, res)
	return nil
}

func (a *app) handleCatalog(ctx context.Context, batch []*bus.Delivery) error {
	evs := make([]bus.Event, 0, len(batch))
	ds := make([]*bus.Delivery, 0, len(batch))
	for _, d := range batch {
		switch d.Event.(type) {
		case *bus.ImageCatalogued, *bus.ImageTagsSet, *bus.ImageDeleted:
			evs, ds = append(evs, d.Event), append(ds, d)
		default:
			unexpected(d)
		}
	}
	if len(evs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	res, err := a.store.ApplyCatalog(ctx, evs)
	if err != nil {
		return err
	}
	settle(ds, res)
	return nil
}

func (a *app) handleSubmissions(ctx context.Context, batch []*bus.Delivery) error {
	evs := make([]*bus.ImageSubmitted, 0, len(batch))
	ds := make([]*bus.Delivery, 0, len(batch))
	for _, d := range batch {
		ev, ok := d.Event.(*bus.ImageSubmitted)
		if !ok {
			unexpected(d)
			continue
		}
		evs, ds = append(evs, ev), append(ds, d)
	}
	if len(evs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	res, err := a.store.InsertPending(ctx, evs)
	if err != nil {
		return err
	}
	settle(ds, res)
	return nil
}

func (a *app) handleGrades(ctx context.Context, batch []*bus.Delivery) error {
	evs := make([]bus.Event, 0, len(batch))
	ds := make([]*bus.Delivery, 0, len(batch))
	for _, d := range batch {
		switch d.Event.(type) {
		case *bus.GradeCompleted, *bus.GradeFailed:
			evs, ds = append(evs, d.Event), append(ds, d)
		default:
			unexpected(d)
		}
	}
	if len(evs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	res, err := a.store.ApplyResults(ctx, evs)
	if err != nil {
		return err
	}
	settle(ds, res)
	return nil
}
