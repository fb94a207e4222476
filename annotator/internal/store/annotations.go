package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/gradeline/gradeline/bus"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// annotationDoc is one annotation; _id is the AnnotationCreated event id.
// The annotation is a document when MongoDB can hold it faithfully and
// its JSON text otherwise (see jsonToDoc).
//
// Changes arrive as later events on the same stream: Event is the id of
// the event that set the body last and UpdatedAt its time (an update
// applies only when newer, so a redelivered old update never wins), and
// Deleted is a tombstone that nothing clears, so a replayed creation does
// not bring the record back.
type annotationDoc struct {
	ID             string    `bson:"_id"`
	ImageID        string    `bson:"image_id"`
	Author         string    `bson:"author"`
	Annotation     bson.Raw  `bson:"annotation,omitempty"`
	AnnotationJSON string    `bson:"annotation_json,omitempty"`
	CreatedAt      time.Time `bson:"created_at"`
	UpdatedAt      time.Time `bson:"updated_at,omitempty"`
	Event          string    `bson:"event,omitempty"`
	Deleted        bool      `bson:"deleted,omitempty"`
	// Shelf is the author's shelf the annotation is listed from (see
	// shelves.go); empty on annotations stored before shelves existed.
	Shelf string `bson:"shelf,omitempty"`
}

// ErrNotStoredYet is the result for a change to an annotation the store
// does not hold yet (its creation was redelivered after the change): the
// change is retried, and dead-lettered if the creation never comes.
var ErrNotStoredYet = errors.New("annotation not stored yet")

// live excludes deleted annotations (documents from before tombstones
// have no deleted field).
var live = bson.E{Key: "deleted", Value: bson.D{{Key: "$ne", Value: true}}}

// bodyUpdate stores the annotation as a document when MongoDB can hold it
// faithfully and as JSON text otherwise (see jsonToDoc), removing the
// other form, with the fields in also set.
func bodyUpdate(js json.RawMessage, also ...bson.E) bson.D {
	if doc, ok := jsonToDoc(js); ok {
		return bson.D{{Key: "$set", Value: append(bson.D{{Key: "annotation", Value: doc}}, also...)},
			{Key: "$unset", Value: bson.D{{Key: "annotation_json", Value: ""}}}}
	}
	return bson.D{{Key: "$set", Value: append(bson.D{{Key: "annotation_json", Value: string(js)}}, also...)},
		{Key: "$unset", Value: bson.D{{Key: "annotation", Value: ""}}}}
}

func (d annotationDoc) key() Cursor { return Cursor{At: d.CreatedAt, ID: d.ID} }

func (d annotationDoc) toBus() (bus.Annotation, error) {
	a := bus.Annotation{ID: d.ID, ImageID: d.ImageID, Author: d.Author, CreatedAt: d.CreatedAt.UTC()}
	if !d.UpdatedAt.IsZero() {
		a.UpdatedAt = d.UpdatedAt.UTC()
	}
	switch {
	case d.AnnotationJSON != "":
		a.Annotation = json.RawMessage(d.AnnotationJSON)
	case d.Annotation != nil:
		js, err := docToJSON(d.Annotation)
		if err != nil {
			return a, fmt.Errorf("store: annotation %s: %w", d.ID, err)
		}
		a.Annotation = js
	default:
		a.Annotation = json.RawMessage("{}")
	}
	// A record stored before the contract bounded annotations (a 10,000-deep
	// one broke every listing that held it) is not served: readers could
	// not decode it.
	if err := bus.ValidateAnnotation(a.Annotation); err != nil {
		return a, fmt.Errorf("store: annotation %s breaks the contract: %w", d.ID, err)
	}
	return a, nil
}

// InsertAnnotations stores the events, one document each. Result i is nil
// when event i is stored (now or before) and an *ItemError when the server
// refused that document; err reports a failure of the whole batch.
func (s *Store) InsertAnnotations(ctx context.Context, evs []*bus.AnnotationCreated) ([]error, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	if err := s.EnsureIndexes(ctx); err != nil {
		return nil, err
	}
	docs := make([]any, len(evs))
	ids := make([]string, len(evs))
	for i, ev := range evs {
		d := annotationDoc{ID: ev.ID, ImageID: ev.ImageID, Author: ev.Author, CreatedAt: ev.Time.UTC(), Event: ev.ID}
		if ev.Author != "" {
			shelf, err := s.shelves.place(ctx, ev.Author)
			if err != nil {
				return nil, err
			}
			d.Shelf = shelf
		}
		if doc, ok := jsonToDoc(ev.Annotation); ok {
			d.Annotation = doc
		} else {
			d.AnnotationJSON = string(ev.Annotation)
		}
		docs[i], ids[i] = d, ev.ID
	}
	_, item, err := s.insertMany(ctx, s.annotations, ids, docs)
	return item, err
}

// ApplyAnnotations stores creations (one batch insert) and then applies
// updates and deletions in event order. Results are as for
// InsertAnnotations.
func (s *Store) ApplyAnnotations(ctx context.Context, evs []bus.Event) ([]error, error) {
	out := make([]error, len(evs))
	var (
		created []*bus.AnnotationCreated
		idx     []int
	)
	for i, ev := range evs {
		if c, ok := ev.(*bus.AnnotationCreated); ok {
			created, idx = append(created, c), append(idx, i)
		}
	}
	res, err := s.InsertAnnotations(ctx, created)
	if err != nil {
		return nil, err
	}
	for k, i := range idx {
		out[i] = res[k]
	}
	for i, ev := range evs {
		var err error
		switch e := ev.(type) {
		case *bus.AnnotationCreated:
			continue
		case *bus.AnnotationUpdated:
			// Newer by event time (stored to the millisecond), then by id:
			// ids derived from an Idempotency-Key are not time-ordered.
			at := e.Time.UTC().Truncate(time.Millisecond)
			err = s.changeAnnotation(ctx, e.AnnotationID, e.Author,
				bson.D{{Key: "$or", Value: bson.A{
					bson.D{{Key: "updated_at", Value: bson.D{{Key: "$exists", Value: false}}}},
					bson.D{{Key: "updated_at", Value: bson.D{{Key: "$lt", Value: at}}}},
					bson.D{{Key: "updated_at", Value: at}, {Key: "event", Value: bson.D{{Key: "$lt", Value: e.ID}}}},
				}}, live},
				bodyUpdate(e.Annotation, bson.E{Key: "event", Value: e.ID}, bson.E{Key: "updated_at", Value: at}))
		case *bus.AnnotationDeleted:
			err = s.changeAnnotation(ctx, e.AnnotationID, e.Author, nil, bson.D{
				{Key: "$set", Value: bson.D{{Key: "deleted", Value: true}}},
				{Key: "$max", Value: bson.D{{Key: "updated_at", Value: e.Time.UTC()}}}})
		default:
			out[i] = fmt.Errorf("store: unexpected annotation event %T", ev)
			continue
		}
		if errors.Is(err, ErrNotStoredYet) {
			out[i] = &ItemError{Collection: CollAnnotations, ID: ev.EventMeta().ID, Err: err}
			continue
		}
		if err != nil {
			item, batch := itemOrBatch(CollAnnotations, ev.EventMeta().ID, err)
			if batch != nil {
				return nil, batch
			}
			out[i] = item
		}
	}
	return out, nil
}

// changeAnnotation applies update to the author's annotation id when cond
// holds. Nothing matching while the annotation exists means the change is
// older than what is stored (or the annotation is gone): done.
func (s *Store) changeAnnotation(ctx context.Context, id, author string, cond, update bson.D) error {
	filter := append(bson.D{{Key: "_id", Value: id}, {Key: "author", Value: author}}, cond...)
	start := time.Now()
	res, err := s.annotations.UpdateOne(ctx, filter, update)
	s.m.observe(CollAnnotations, "update_one", start)
	if err != nil {
		return err
	}
	if res.MatchedCount > 0 {
		s.m.add(CollAnnotations, 1, 0)
		return nil
	}
	_, ok, err := findOne[annotationDoc](ctx, s.annotations, bson.D{{Key: "_id", Value: id}})
	if err != nil {
		return err
	}
	if !ok {
		return ErrNotStoredYet
	}
	return nil
}

// AnnotationFilter selects annotations by equality; empty fields match all.
type AnnotationFilter struct {
	ImageID, Author string
}

// ListAnnotations returns one page, newest first, with the cursor of the
// next page. A document that cannot be turned back into JSON is skipped
// (and reported through skipped) instead of failing the whole page. An
// author's annotations without an image are listed from the author's
// shelves (see shelves.go).
func (s *Store) ListAnnotations(ctx context.Context, f AnnotationFilter, p Page, skipped func(id string, err error)) (bus.List[bus.Annotation], error) {
	var (
		docs  []annotationDoc
		next  string
		total *int64
		err   error
	)
	if f.ImageID == "" && f.Author != "" {
		docs, next, total, err = listShelves[annotationDoc](ctx, s.shelves, shelfQuery{owner: f.Author, match: bson.D{live},
			legacy: bson.D{{Key: "author", Value: f.Author}, live}}, p)
	} else {
		filter := bson.D{live}
		if f.ImageID != "" {
			filter = append(filter, bson.E{Key: "image_id", Value: f.ImageID})
		}
		if f.Author != "" {
			filter = append(filter, bson.E{Key: "author", Value: f.Author})
		}
		docs, next, total, err = findPage[annotationDoc](ctx, s.annotations, filter, createdAt, p)
	}
	if err != nil {
		return bus.List[bus.Annotation]{}, err
	}
	out := bus.List[bus.Annotation]{Data: make([]bus.Annotation, 0, len(docs)), Next: next, Total: total, PerPage: int(p.Limit)}
	for _, d := range docs {
		a, err := d.toBus()
		if err != nil {
			if skipped != nil {
				skipped(d.ID, err)
			}
			continue
		}
		out.Data = append(out.Data, a)
	}
	return out, nil
}

// GetAnnotation returns the annotation with id; false when there is none.
func (s *Store) GetAnnotation(ctx context.Context, id string) (bus.Annotation, bool, error) {
	d, ok, err := findOne[annotationDoc](ctx, s.annotations, bson.D{{Key: "_id", Value: id}, live})
	if err != nil || !ok {
		return bus.Annotation{}, ok, err
	}
	a, err := d.toBus()
	return a, err == nil, err
}
