package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/gradeline/gradeline/bus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"golang.org/x/sync/errgroup"
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

// newestShelf is author's newest shelf number. When this process knows
// it (it stored the author's last annotations), the shelf is read at the
// same time as its number is checked, saving a round trip; docs count only
// when the number was right (ok).
func (s *Store) newestShelf(ctx context.Context, author string, limit int64) (top int64, docs []annotationDoc, ok bool, err error) {
	hint := s.shelves.hint(author)
	if hint == 0 {
		top, err = s.shelves.top(ctx, author)
		return top, nil, false, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		top, err = s.shelves.top(gctx, author)
		return err
	})
	g.Go(func() (err error) {
		docs, err = findSorted[annotationDoc](gctx, s.annotations, bson.D{{Key: "shelf", Value: shelfKey(author, hint)}, live}, createdAt, 0, limit)
		return err
	})
	if err := g.Wait(); err != nil {
		return 0, nil, false, err
	}
	return top, docs, top == hint, nil
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
		docs, next, total, err = s.listShelves(ctx, f.Author, p)
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

// listShelves pages through author's annotations shelf by shelf, newest
// shelf first, then through the annotations stored before shelves existed
// (shelf 0 in cursors). Each read is bounded by the shelf's size.
func (s *Store) listShelves(ctx context.Context, author string, p Page) (docs []annotationDoc, next string, total *int64, err error) {
	legacy, err := s.legacyAnnotations(ctx)
	if err != nil {
		return nil, "", nil, err
	}
	after, skip := p.After, int64(0)
	if after == nil {
		skip = p.Skip
	}
	want := skip + p.Limit + 1
	var (
		start     int64
		first     []annotationDoc // the newest shelf's documents, when read beside its number
		haveFirst bool
	)
	switch {
	case after == nil:
		if start, first, haveFirst, err = s.newestShelf(ctx, author, want); err != nil {
			return nil, "", nil, err
		}
	case after.Shelved:
		start = after.Shelf
	case legacy:
		// A cursor from before shelves existed pages the old annotations.
		start = 0
	default:
		return nil, "", nil, ErrBadCursor
	}
	var shelfOf []int64
	read := func(n int64, filter bson.D) error {
		got := first
		if n != start || !haveFirst {
			if n == start && after != nil {
				filter = append(filter, afterCond(createdAt, after))
			}
			var err error
			if got, err = findSorted[annotationDoc](ctx, s.annotations, filter, createdAt, 0, want-int64(len(docs))); err != nil {
				return err
			}
		}
		for range got {
			shelfOf = append(shelfOf, n)
		}
		docs = append(docs, got...)
		return nil
	}
	for n := start; n >= 1 && int64(len(docs)) < want; n-- {
		if err := read(n, bson.D{{Key: "shelf", Value: shelfKey(author, n)}, live}); err != nil {
			return nil, "", nil, err
		}
	}
	if legacy && int64(len(docs)) < want {
		// Documents without a shelf: $exists is checked after the indexed
		// author match, on the last pages of an old store only.
		if err := read(0, bson.D{{Key: "author", Value: author}, live, {Key: "shelf", Value: bson.D{{Key: "$exists", Value: false}}}}); err != nil {
			return nil, "", nil, err
		}
	}
	if skip >= int64(len(docs)) {
		return []annotationDoc{}, "", nil, nil
	}
	docs, shelfOf = docs[skip:], shelfOf[skip:]
	if int64(len(docs)) > p.Limit {
		docs = docs[:p.Limit]
		c := docs[len(docs)-1].key()
		c.Shelved, c.Shelf = true, shelfOf[len(docs)-1]
		next = c.Encode()
	} else if p.After == nil && p.Skip == 0 {
		n := int64(len(docs))
		total = &n
	}
	return docs, next, total, nil
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
