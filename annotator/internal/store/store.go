// Package store persists annotations, the image catalogue and the grade
// history in MongoDB, using only what FerretDB supports too: inserts keyed
// by event id, equality filters, $set/$max/$setOnInsert/$unset updates,
// find with sort/skip/limit, and counts.
package store

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Collection names.
const (
	CollAnnotations = "annotations"
	CollImages      = "images"
	// CollGradeHistory holds the grade history, one document per grade
	// (gradeDoc). Its name is from when it held only the submissions.
	CollGradeHistory = "grade_submissions"
	// CollGrades holds the results of grades stored before the history
	// was one document (their submissions are in CollGradeHistory). It is
	// read, never written.
	CollGrades = "grades"
)

// Store writes and reads the annotator's collections.
type Store struct {
	db          *mongo.Database
	annotations *mongo.Collection
	images      *mongo.Collection
	history     *mongo.Collection
	legacy      *mongo.Collection // CollGrades
	m           *Metrics

	// An author's annotations and an owner's images are listed from
	// shelves (shelves.go).
	shelves, imageShelves *shelves

	mu      sync.Mutex
	indexed bool
}

// New returns a Store on db. Indexes are created on first use, so the
// service can start while MongoDB is still unreachable.
func New(db *mongo.Database, m *Metrics) *Store {
	return &Store{
		db:           db,
		annotations:  db.Collection(CollAnnotations),
		images:       db.Collection(CollImages),
		legacy:       db.Collection(CollGrades),
		history:      db.Collection(CollGradeHistory),
		m:            m,
		shelves:      newShelves(db.Collection(CollShelves), db.Collection(CollAnnotations)),
		imageShelves: newShelves(db.Collection(CollImageShelves), db.Collection(CollImages)),
	}
}

// ItemError is a write the server refused for one document (not a
// duplicate): a problem of that message, not of the database.
type ItemError struct {
	Collection string
	ID         string
	Err        error
}

func (e *ItemError) Error() string {
	return fmt.Sprintf("store %s %s: %v", e.Collection, e.ID, e.Err)
}

func (e *ItemError) Unwrap() error { return e.Err }

// EnsureIndexes creates the secondary indexes once; until it succeeds
// every write calls it again.
func (s *Store) EnsureIndexes(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.indexed {
		return nil
	}
	// Each listing filters by equality on the first field and pages by
	// (created_at, _id): on MongoDB the compound index serves both; the
	// embedded store indexes the first field (localmongo's index mirror).
	specs := []struct {
		c    *mongo.Collection
		keys []string
		at   string // listed newest first by this field, with a cursor
	}{
		{s.annotations, []string{"image_id", "author", "shelf"}, createdAt},
		{s.images, []string{"owner", "tags", "shelf"}, createdAt},
		{s.legacy, []string{"image_id"}, ""},
		{s.history, []string{"image_id"}, submittedAt},
	}
	for _, sp := range specs {
		// One index per call: FerretDB 1.24 drops the connection when a
		// createIndexes command names several indexes that all exist.
		for _, k := range sp.keys {
			keys := bson.D{{Key: k, Value: 1}}
			if sp.at != "" {
				keys = append(keys, newestFirst(sp.at)...)
			}
			if _, err := sp.c.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: keys}); err != nil {
				return fmt.Errorf("store: index %s.%s: %w", sp.c.Name(), k, err)
			}
		}
	}
	// Decided before the first document with a shelf is stored.
	for _, sh := range []*shelves{s.shelves, s.imageShelves} {
		if _, err := sh.hasLegacy(ctx); err != nil {
			return err
		}
	}
	s.indexed = true
	return nil
}

// Ping checks that MongoDB answers.
func (s *Store) Ping(ctx context.Context) error {
	return s.db.Client().Ping(ctx, nil)
}

// insertMany inserts docs unordered. A duplicate _id counts as already
// stored. It returns per-document errors (aligned with docs) for other
// write errors the server reported, and an error when the batch as a whole
// failed (unreachable server, write concern): then nothing can be assumed.
func (s *Store) insertMany(ctx context.Context, coll *mongo.Collection, ids []string, docs []any) (dup []bool, item []error, err error) {
	dup = make([]bool, len(docs))
	item = make([]error, len(docs))
	if len(docs) == 0 {
		return dup, item, nil
	}
	if err := s.EnsureIndexes(ctx); err != nil {
		return nil, nil, err
	}
	start := time.Now()
	writeErrs, err := insertCommands(ctx, coll, docs)
	s.m.observe(coll.Name(), "insert_many", start)
	if err != nil {
		return nil, nil, fmt.Errorf("store: insert into %s: %w", coll.Name(), err)
	}
	for _, we := range writeErrs {
		if we.Index < 0 || we.Index >= len(docs) {
			return nil, nil, fmt.Errorf("store: insert into %s: write error for unknown index %d: %w", coll.Name(), we.Index, we)
		}
		if isDuplicate(we) {
			dup[we.Index] = true
		} else {
			item[we.Index] = &ItemError{Collection: coll.Name(), ID: ids[we.Index], Err: we}
		}
	}
	written, dups := 0, 0
	for i := range docs {
		switch {
		case dup[i]:
			dups++
		case item[i] == nil:
			written++
		}
	}
	s.m.add(coll.Name(), written, dups)
	return dup, item, nil
}

// maxInsertCommand bounds the documents of one insert command: the
// command is one BSON document, which MongoDB limits to 16 MiB.
const maxInsertCommand = 8 << 20

// insertCommands runs unordered insert commands for docs (as many as their
// size needs) and returns the servers' per-document write errors, indexed
// into docs; err is a failure of a command as a whole. It does what
// InsertMany does minus what this store never uses: InsertMany decodes
// every document's _id back through a new decoder (a 4 KiB buffer each)
// to return the ids, a cost per document near that of encoding it.
func insertCommands(ctx context.Context, coll *mongo.Collection, docs []any) ([]mongo.WriteError, error) {
	var (
		out   []mongo.WriteError
		batch bson.A
		first int // index in docs of batch[0]
		size  int
	)
	run := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := coll.Database().RunCommand(ctx, bson.D{{Key: "insert", Value: coll.Name()},
			{Key: "documents", Value: batch}, {Key: "ordered", Value: false}}).Err()
		if err != nil {
			var we mongo.WriteException
			if !errors.As(err, &we) || we.WriteConcernError != nil || len(we.WriteErrors) == 0 {
				return err
			}
			for _, e := range we.WriteErrors {
				e.Index += first
				out = append(out, e)
			}
		}
		first += len(batch)
		batch, size = batch[:0], 0
		return nil
	}
	for _, d := range docs {
		raw, err := bson.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("encode document: %w", err)
		}
		if size+len(raw) > maxInsertCommand {
			if err := run(); err != nil {
				return nil, err
			}
		}
		batch, size = append(batch, bson.Raw(raw)), size+len(raw)
	}
	return out, run()
}

func isDuplicate(we mongo.WriteError) bool {
	return mongo.IsDuplicateKeyError(mongo.WriteException{WriteErrors: mongo.WriteErrors{we}})
}

// itemOrBatch sorts a single-document write error: a write error the
// server reported belongs to that document; anything else (network,
// timeout, server selection) is a batch failure.
func itemOrBatch(coll, id string, err error) (item, batch error) {
	var we mongo.WriteException
	if errors.As(err, &we) && we.WriteConcernError == nil && len(we.WriteErrors) > 0 {
		return &ItemError{Collection: coll, ID: id, Err: err}, nil
	}
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && bwe.WriteConcernError == nil && len(bwe.WriteErrors) > 0 {
		return &ItemError{Collection: coll, ID: id, Err: err}, nil
	}
	return nil, fmt.Errorf("store: %s %s: %w", coll, id, err)
}

// updateNewer applies update to document id when cond holds, and creates
// the document from insert when it does not exist yet. Upsert cannot do
// it: with a condition that fails on an existing document, an upsert
// tries to insert a second document with the same _id. A concurrent insert
// between the steps is handled by trying the conditional update once more.
// It reports whether the update or insert was applied.
func (s *Store) updateNewer(ctx context.Context, coll *mongo.Collection, id string, cond, update bson.D, insert bson.D) (bool, error) {
	filter := append(bson.D{{Key: "_id", Value: id}}, cond...)
	for attempt := 0; ; attempt++ {
		start := time.Now()
		res, err := coll.UpdateOne(ctx, filter, update)
		s.m.observe(coll.Name(), "update_one", start)
		if err != nil {
			return false, err
		}
		if res.MatchedCount > 0 {
			s.m.add(coll.Name(), 1, 0)
			return true, nil
		}
		if attempt > 0 {
			// The document exists and the condition is false: it already
			// holds newer state.
			return false, nil
		}
		start = time.Now()
		_, err = coll.InsertOne(ctx, insert)
		s.m.observe(coll.Name(), "insert_one", start)
		if err == nil {
			s.m.add(coll.Name(), 1, 0)
			return true, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return false, err
		}
	}
}

// Page bounds a list query: Limit documents after the After cursor (keyset
// pagination, newest first), or past Skip documents when there is no
// cursor (the older page=N form).
type Page struct {
	Skip, Limit int64
	After       *Cursor
}

// Cursor is the position after the last document of a page: its
// created_at and _id, the listing's sort key, and for a listing from
// shelves (see shelves.go) the shelf it was on.
type Cursor struct {
	At      time.Time
	ID      string
	Shelved bool
	Shelf   int64
}

// Encode gives the cursor as an opaque URL-safe string.
func (c Cursor) Encode() string {
	pos := strconv.FormatInt(c.At.UnixNano(), 36)
	if c.Shelved {
		pos += "~" + strconv.FormatInt(c.Shelf, 36)
	}
	return base64.RawURLEncoding.EncodeToString([]byte(pos + "." + c.ID))
}

// ErrBadCursor is returned by ParseCursor for a string no page produced.
var ErrBadCursor = errors.New("not a cursor returned by a previous page")

// ParseCursor reverses Encode.
func ParseCursor(s string) (*Cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, ErrBadCursor
	}
	pos, id, ok := strings.Cut(string(b), ".")
	if !ok || id == "" || len(id) > 256 {
		return nil, ErrBadCursor
	}
	ts, shelf, shelved := strings.Cut(pos, "~")
	ns, err := strconv.ParseInt(ts, 36, 64)
	if err != nil {
		return nil, ErrBadCursor
	}
	c := &Cursor{At: time.Unix(0, ns).UTC(), ID: id, Shelved: shelved}
	if shelved {
		if c.Shelf, err = strconv.ParseInt(shelf, 36, 64); err != nil || c.Shelf < 0 {
			return nil, ErrBadCursor
		}
	}
	return c, nil
}

// keyed is a document that a listing can sort and page by.
type keyed interface {
	key() Cursor
}

// createdAt is the time field most listings are ordered by.
const createdAt = "created_at"

// newestFirst is the listing order by the time field at; _id breaks ties,
// so pages never overlap or skip.
func newestFirst(at string) bson.D {
	return bson.D{{Key: at, Value: -1}, {Key: "_id", Value: -1}}
}

// afterCond selects the documents after cursor c in newestFirst(at) order.
func afterCond(at string, c *Cursor) bson.E {
	return bson.E{Key: "$or", Value: bson.A{
		bson.D{{Key: at, Value: bson.D{{Key: "$lt", Value: c.At}}}},
		bson.D{{Key: at, Value: c.At}, {Key: "_id", Value: bson.D{{Key: "$lt", Value: c.ID}}}},
	}}
}

// findSorted returns up to limit documents matching filter, newest first
// by the time field at, past skip.
func findSorted[T any](ctx context.Context, coll *mongo.Collection, filter bson.D, at string, skip, limit int64) ([]T, error) {
	opts := options.Find().SetSort(newestFirst(at)).SetLimit(limit)
	if skip > 0 {
		opts.SetSkip(skip)
	}
	cur, err := coll.Find(ctx, filter, opts)
	if err != nil {
		return nil, fmt.Errorf("store: find %s: %w", coll.Name(), err)
	}
	out := []T{}
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("store: read %s: %w", coll.Name(), err)
	}
	return out, nil
}

// findPage returns one page of the documents matching filter, newest
// first by the time field at, and the cursor of the next page ("" when
// this is the last). It never counts: total is set only when the whole
// result fits this first page, where it is exact for free.
func findPage[T keyed](ctx context.Context, coll *mongo.Collection, filter bson.D, at string, p Page) (out []T, next string, total *int64, err error) {
	skip := p.Skip
	if p.After != nil {
		if p.After.Shelved {
			return nil, "", nil, ErrBadCursor
		}
		filter, skip = append(filter, afterCond(at, p.After)), 0
	}
	// One more than asked tells whether a next page exists.
	if out, err = findSorted[T](ctx, coll, filter, at, skip, p.Limit+1); err != nil {
		return nil, "", nil, err
	}
	if int64(len(out)) > p.Limit {
		out = out[:p.Limit]
		next = out[len(out)-1].key().Encode()
	} else if p.After == nil && p.Skip == 0 {
		n := int64(len(out))
		total = &n
	}
	return out, next, total, nil
}

func findOne[T any](ctx context.Context, coll *mongo.Collection, filter bson.D) (T, bool, error) {
	var out T
	err := coll.FindOne(ctx, filter).Decode(&out)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return out, false, nil
	}
	if err != nil {
		return out, false, fmt.Errorf("store: find %s: %w", coll.Name(), err)
	}
	return out, true, nil
}
