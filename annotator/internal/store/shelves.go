package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"golang.org/x/sync/errgroup"
)

// An author's annotations are listed from shelves: numbered groups of at
// most ShelfSize annotations, filled in the order the annotator stores
// them (MongoDB's "bucket pattern"). A listing reads the newest shelf and
// walks down, so a page touches a few hundred documents at most however
// many the author has: the embedded store (FerretDB) filters by equality
// in PostgreSQL but sorts every match in Go, which cost ~100 ms per page at
// 1,000 annotations per author. On MongoDB the compound index
// {shelf, created_at, _id} serves each shelf read.
//
// The order of such a listing is (shelf, created_at, _id), newest first: a
// total order, so pages never overlap or skip. It equals creation order
// except where annotations created within the same moment were stored in
// the other order across a shelf boundary.
//
// Shelf numbers come from a counter per author in CollShelves, claimed
// with one atomic $inc when the annotator's open shelf for that author is
// full or unknown (after a restart, or on another replica): one extra
// write per ShelfSize annotations. A shelf claimed and never filled is
// simply short.

// CollShelves holds one counter per author: the last shelf number claimed;
// CollImageShelves the same per catalogue owner (an owner's images are
// listed from shelves too).
const (
	CollShelves      = "annotation_shelves"
	CollImageShelves = "image_shelves"
)

// DefaultShelfSize bounds the documents one shelf read touches.
const DefaultShelfSize = 100

// maxOpenShelves bounds the annotator's memory of open shelves; past it
// the memory starts over and each author claims a fresh shelf.
const maxOpenShelves = 100_000

// legacyShelfID marks, in a counters collection, whether the store held
// documents from before shelves existed: those are listed after shelf 1.
const legacyShelfID = "#legacy" // no username starts with #

// shelves hands out shelf places to the documents of one collection being
// stored, and lists them back.
type shelves struct {
	coll *mongo.Collection // the counters
	docs *mongo.Collection // the documents, with a shelf field
	size int64

	mu   sync.Mutex
	open map[string]*openShelf
	// legacy: documents from before shelves exist (nil: not known yet).
	legacy *bool
}

func newShelves(counters, docs *mongo.Collection) *shelves {
	return &shelves{coll: counters, docs: docs, size: DefaultShelfSize, open: map[string]*openShelf{}}
}

type openShelf struct {
	n, used int64
}

// shelfKey is the stored key of an author's shelf n: the number first, so
// no author name can make two keys equal.
func shelfKey(author string, n int64) string {
	return strconv.FormatInt(n, 10) + ":" + author
}

// place returns the shelf key for one more annotation of author, claiming
// a new shelf when needed.
func (sh *shelves) place(ctx context.Context, author string) (string, error) {
	sh.mu.Lock()
	o := sh.open[author]
	if o != nil && o.used < sh.size {
		o.used++
		n := o.n
		sh.mu.Unlock()
		return shelfKey(author, n), nil
	}
	sh.mu.Unlock()
	if o == nil {
		// Not seen since this process started: go on filling the newest
		// shelf while it has room, so restarts do not leave a trail of
		// short shelves for listings to walk. Two replicas doing so at once
		// overfill it by a batch at most.
		n, used, err := sh.newest(ctx, author)
		if err != nil {
			return "", err
		}
		if n > 0 && used < sh.size {
			sh.mu.Lock()
			if cur := sh.open[author]; cur == nil || cur.n < n {
				sh.open[author] = &openShelf{n: n, used: used}
			}
			sh.mu.Unlock()
			return sh.place(ctx, author)
		}
	}
	n, err := sh.claim(ctx, author)
	if err != nil {
		return "", err
	}
	sh.mu.Lock()
	if len(sh.open) >= maxOpenShelves {
		clear(sh.open)
	}
	// Another batch of the same author may have claimed meanwhile; the
	// newer claim wins and the other shelf stays short.
	if o := sh.open[author]; o == nil || o.n < n {
		sh.open[author] = &openShelf{n: n, used: 1}
	} else {
		o.used++
		n = o.n
	}
	sh.mu.Unlock()
	return shelfKey(author, n), nil
}

// hint is the shelf this process last filled for author (0: none): the
// newest one unless another replica has claimed since.
func (sh *shelves) hint(author string) int64 {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if o := sh.open[author]; o != nil {
		return o.n
	}
	return 0
}

// claim takes the next shelf number of author.
func (sh *shelves) claim(ctx context.Context, author string) (int64, error) {
	var c struct {
		N int64 `bson:"n"`
	}
	err := sh.coll.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: author}},
		bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int64(1)}}}},
		options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.After)).Decode(&c)
	if err != nil {
		return 0, fmt.Errorf("store: claim a shelf for %s: %w", author, err)
	}
	return c.N, nil
}

// newest is author's newest shelf and how many documents it holds.
func (sh *shelves) newest(ctx context.Context, author string) (n, used int64, err error) {
	if n, err = sh.top(ctx, author); err != nil || n == 0 {
		return n, 0, err
	}
	used, err = sh.docs.CountDocuments(ctx, bson.D{{Key: "shelf", Value: shelfKey(author, n)}})
	if err != nil {
		return 0, 0, fmt.Errorf("store: shelf %d of %s: %w", n, author, err)
	}
	return n, used, nil
}

// top is the newest shelf number of author; 0 when none was claimed.
func (sh *shelves) top(ctx context.Context, author string) (int64, error) {
	var c struct {
		N int64 `bson:"n"`
	}
	err := sh.coll.FindOne(ctx, bson.D{{Key: "_id", Value: author}}).Decode(&c)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: shelves of %s: %w", author, err)
	}
	return c.N, nil
}

// hasLegacy reports whether documents stored before shelves existed are
// present, deciding it once: any document while no marker is there, which
// is recorded.
func (sh *shelves) hasLegacy(ctx context.Context) (bool, error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.legacy != nil {
		return *sh.legacy, nil
	}
	var m struct {
		Legacy bool `bson:"legacy"`
	}
	err := sh.coll.FindOne(ctx, bson.D{{Key: "_id", Value: legacyShelfID}}).Decode(&m)
	if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
		return false, fmt.Errorf("store: legacy marker: %w", err)
	}
	if errors.Is(err, mongo.ErrNoDocuments) {
		err = sh.docs.FindOne(ctx, bson.D{}).Err()
		switch {
		case errors.Is(err, mongo.ErrNoDocuments):
			m.Legacy = false
		case err != nil:
			return false, fmt.Errorf("store: legacy check: %w", err)
		default:
			m.Legacy = true
		}
		if _, err := sh.coll.InsertOne(ctx, bson.D{{Key: "_id", Value: legacyShelfID}, {Key: "legacy", Value: m.Legacy}}); err != nil && !mongo.IsDuplicateKeyError(err) {
			return false, fmt.Errorf("store: legacy marker: %w", err)
		}
	}
	sh.legacy = &m.Legacy
	return m.Legacy, nil
}

// shelfQuery is a listing from one owner's shelves: what each document
// must match beside its shelf, and the filter of the documents stored
// before shelves existed (listed after shelf 1 when there are any).
type shelfQuery struct {
	owner  string
	match  bson.D
	legacy bson.D
}

// listShelves pages through q.owner's documents shelf by shelf, newest
// shelf first, then through those from before shelves (shelf 0 in
// cursors). Each read is bounded by the shelf's size.
func listShelves[T keyed](ctx context.Context, sh *shelves, q shelfQuery, p Page) (docs []T, next string, total *int64, err error) {
	legacy, err := sh.hasLegacy(ctx)
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
		first     []T // the newest shelf's documents, when read beside its number
		haveFirst bool
	)
	switch {
	case after == nil:
		if start, first, haveFirst, err = newestShelf[T](ctx, sh, q, want); err != nil {
			return nil, "", nil, err
		}
	case after.Shelved:
		start = after.Shelf
	case legacy:
		// A cursor from before shelves existed pages the old documents.
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
			if got, err = findSorted[T](ctx, sh.docs, filter, createdAt, 0, want-int64(len(docs))); err != nil {
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
		if err := read(n, q.onShelf(n)); err != nil {
			return nil, "", nil, err
		}
	}
	if legacy && int64(len(docs)) < want {
		// Documents without a shelf: $exists is checked after the indexed
		// match, on the last pages of an old store only.
		if err := read(0, append(slices.Clone(q.legacy), bson.E{Key: "shelf", Value: bson.D{{Key: "$exists", Value: false}}})); err != nil {
			return nil, "", nil, err
		}
	}
	if skip >= int64(len(docs)) {
		if p.After == nil && p.Skip == 0 {
			total = new(int64) // nothing matched: the whole result is this empty page
		}
		return []T{}, "", total, nil
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

// onShelf is the filter of q's documents on shelf n.
func (q shelfQuery) onShelf(n int64) bson.D {
	return append(bson.D{{Key: "shelf", Value: shelfKey(q.owner, n)}}, q.match...)
}

// newestShelf is q.owner's newest shelf number. When this process knows
// it (it stored the owner's last documents), the shelf is read at the
// same time as its number is checked, saving a round trip; docs count only
// when the number was right (ok).
func newestShelf[T any](ctx context.Context, sh *shelves, q shelfQuery, limit int64) (top int64, docs []T, ok bool, err error) {
	hint := sh.hint(q.owner)
	if hint == 0 {
		top, err = sh.top(ctx, q.owner)
		return top, nil, false, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		top, err = sh.top(gctx, q.owner)
		return err
	})
	g.Go(func() (err error) {
		docs, err = findSorted[T](gctx, sh.docs, q.onShelf(hint), createdAt, 0, limit)
		return err
	})
	if err := g.Wait(); err != nil {
		return 0, nil, false, err
	}
	return top, docs, top == hint, nil
}
