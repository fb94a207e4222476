package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
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

// CollShelves holds one counter per author: the last shelf number claimed.
const CollShelves = "annotation_shelves"

// DefaultShelfSize bounds the documents one shelf read touches.
const DefaultShelfSize = 100

// maxOpenShelves bounds the annotator's memory of open shelves; past it
// the memory starts over and each author claims a fresh shelf.
const maxOpenShelves = 100_000

// legacyShelfID marks, in CollShelves, whether the store held annotations
// from before shelves existed: those are listed after shelf 1.
const legacyShelfID = "#legacy" // no username starts with #

// shelves hands out shelf places to annotations being stored.
type shelves struct {
	coll        *mongo.Collection
	annotations *mongo.Collection
	size        int64

	mu   sync.Mutex
	open map[string]*openShelf
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

// newest is author's newest shelf and how many annotations it holds.
func (sh *shelves) newest(ctx context.Context, author string) (n, used int64, err error) {
	if n, err = sh.top(ctx, author); err != nil || n == 0 {
		return n, 0, err
	}
	used, err = sh.annotations.CountDocuments(ctx, bson.D{{Key: "shelf", Value: shelfKey(author, n)}})
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

// markLegacy records, once, whether annotations stored before shelves
// existed are present (any annotation while no marker is there), and
// reports it.
func (sh *shelves) markLegacy(ctx context.Context, annotations *mongo.Collection) (bool, error) {
	var m struct {
		Legacy bool `bson:"legacy"`
	}
	err := sh.coll.FindOne(ctx, bson.D{{Key: "_id", Value: legacyShelfID}}).Decode(&m)
	if err == nil {
		return m.Legacy, nil
	}
	if !errors.Is(err, mongo.ErrNoDocuments) {
		return false, fmt.Errorf("store: legacy marker: %w", err)
	}
	err = annotations.FindOne(ctx, bson.D{}).Err()
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
	return m.Legacy, nil
}
