package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/gradeline/gradeline/bus"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// annotationDoc is one annotation; _id is the AnnotationCreated event id.
// The annotation is a document when MongoDB can hold it faithfully and
// its JSON text otherwise (see jsonToDoc).
type annotationDoc struct {
	ID             string    `bson:"_id"`
	ImageID        string    `bson:"image_id"`
	Author         string    `bson:"author"`
	Annotation     bson.Raw  `bson:"annotation,omitempty"`
	AnnotationJSON string    `bson:"annotation_json,omitempty"`
	CreatedAt      time.Time `bson:"created_at"`
}

func (d annotationDoc) key() Cursor { return Cursor{At: d.CreatedAt, ID: d.ID} }

func (d annotationDoc) toBus() (bus.Annotation, error) {
	a := bus.Annotation{ID: d.ID, ImageID: d.ImageID, Author: d.Author, CreatedAt: d.CreatedAt.UTC()}
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
	return a, nil
}

// InsertAnnotations stores the events, one document each. Result i is nil
// when event i is stored (now or before) and an *ItemError when the server
// refused that document; err reports a failure of the whole batch.
func (s *Store) InsertAnnotations(ctx context.Context, evs []*bus.AnnotationCreated) ([]error, error) {
	docs := make([]any, len(evs))
	ids := make([]string, len(evs))
	for i, ev := range evs {
		d := annotationDoc{ID: ev.ID, ImageID: ev.ImageID, Author: ev.Author, CreatedAt: ev.Time.UTC()}
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

// AnnotationFilter selects annotations by equality; empty fields match all.
type AnnotationFilter struct {
	ImageID, Author string
}

// ListAnnotations returns one page, newest first, with the cursor of the
// next page. A document that cannot be turned back into JSON is skipped
// (and reported through skipped) instead of failing the whole page.
func (s *Store) ListAnnotations(ctx context.Context, f AnnotationFilter, p Page, skipped func(id string, err error)) (bus.List[bus.Annotation], error) {
	filter := bson.D{}
	if f.ImageID != "" {
		filter = append(filter, bson.E{Key: "image_id", Value: f.ImageID})
	}
	if f.Author != "" {
		filter = append(filter, bson.E{Key: "author", Value: f.Author})
	}
	docs, next, total, err := findPage[annotationDoc](ctx, s.annotations, filter, p)
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
	d, ok, err := findOne[annotationDoc](ctx, s.annotations, bson.D{{Key: "_id", Value: id}})
	if err != nil || !ok {
		return bus.Annotation{}, ok, err
	}
	a, err := d.toBus()
	return a, err == nil, err
}
