package store

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gradeline/gradeline/bus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"golang.org/x/sync/errgroup"
)

// imageDoc is one catalogue entry; _id is the image id. Events about an
// image may arrive in any order (redelivery after a nak reorders them), so
// every field is written so that the final state does not depend on it:
//   - Deleted is a tombstone: nothing sets it back to false, so a replayed
//     image.catalogued after image.deleted does not resurrect the image.
//   - Tags change only when the event setting them (TagsEvent, a
//     time-ordered UUIDv7) is newer than the one that set them last.
//   - Catalogued is false for a placeholder made by a tags or delete event
//     that overtook image.catalogued; such entries are not listed.
type imageDoc struct {
	ID          string    `bson:"_id"`
	Owner       string    `bson:"owner"`
	Filename    string    `bson:"filename"`
	ContentType string    `bson:"content_type"`
	SHA256      string    `bson:"sha256"`
	Object      string    `bson:"object"`
	Size        int64     `bson:"size"`
	Width       int       `bson:"width"`
	Height      int       `bson:"height"`
	Tags        []string  `bson:"tags"`
	TagsEvent   string    `bson:"tags_event"`
	Shares      []string  `bson:"shares,omitempty"`
	SharesEvent string    `bson:"shares_event,omitempty"`
	Catalogued  bool      `bson:"catalogued"`
	Deleted     bool      `bson:"deleted"`
	CreatedAt   time.Time `bson:"created_at"`
	UpdatedAt   time.Time `bson:"updated_at"`
	// Shelf is the owner's shelf the image is listed from (shelves.go);
	// empty on placeholders and on images stored before shelves existed.
	Shelf string `bson:"shelf,omitempty"`
}

func (d imageDoc) key() Cursor { return Cursor{At: d.CreatedAt, ID: d.ID} }

func (d imageDoc) toBus() bus.Image {
	tags := d.Tags
	if tags == nil {
		tags = []string{}
	}
	return bus.Image{
		ID: d.ID, Owner: d.Owner, Filename: d.Filename, ContentType: d.ContentType,
		SHA256: d.SHA256, Object: d.Object, Size: d.Size, Width: d.Width, Height: d.Height,
		Tags: tags, Shares: d.Shares, CreatedAt: d.CreatedAt.UTC(), UpdatedAt: d.UpdatedAt.UTC(),
	}
}

func nonNil(tags []string) []string {
	if tags == nil {
		return []string{}
	}
	return tags
}

// ApplyCatalog applies catalogue events. Result i is nil when event i is
// applied (now or before), an *ItemError when the server refused it; err
// reports a failure of the whole batch. The result does not depend on the
// order of the events.
func (s *Store) ApplyCatalog(ctx context.Context, evs []bus.Event) ([]error, error) {
	out := make([]error, len(evs))
	var (
		cat    []*bus.ImageCatalogued
		catIdx []int
	)
	for i, ev := range evs {
		if c, ok := ev.(*bus.ImageCatalogued); ok {
			cat, catIdx = append(cat, c), append(catIdx, i)
		}
	}
	if err := s.catalogue(ctx, cat, catIdx, out); err != nil {
		return nil, err
	}
	for i, ev := range evs {
		var err error
		switch e := ev.(type) {
		case *bus.ImageCatalogued:
			continue
		case *bus.ImageTagsSet:
			err = s.setTags(ctx, e.ID, e.ImageID, e.Owner, e.Tags, e.Time)
		case *bus.ImageDeleted:
			err = s.deleteImage(ctx, e)
		case *bus.ImageSharesSet:
			err = s.setShares(ctx, e)
		default:
			out[i] = fmt.Errorf("store: unexpected catalogue event %T", ev)
			continue
		}
		if err != nil {
			item, batch := itemOrBatch(CollImages, ev.EventMeta().ID, err)
			if batch != nil {
				return nil, batch
			}
			out[i] = item
		}
	}
	return out, nil
}

func (s *Store) catalogue(ctx context.Context, evs []*bus.ImageCatalogued, idx []int, out []error) error {
	if len(evs) == 0 {
		return nil
	}
	if err := s.EnsureIndexes(ctx); err != nil {
		return err
	}
	docs := make([]any, len(evs))
	ids := make([]string, len(evs))
	shelf := make([]string, len(evs))
	for i, e := range evs {
		var err error
		if shelf[i], err = s.imageShelves.place(ctx, e.Owner); err != nil {
			return err
		}
		docs[i] = imageDoc{Shelf: shelf[i],
			ID: e.ImageID, Owner: e.Owner, Filename: e.Filename, ContentType: e.Image.ContentType,
			SHA256: e.Image.SHA256, Object: e.Image.Object, Size: e.Image.Size, Width: e.Width, Height: e.Height,
			Tags: nonNil(e.Tags), TagsEvent: e.ID, Catalogued: true,
			CreatedAt: e.Time.UTC(), UpdatedAt: e.Time.UTC(),
		}
		ids[i] = e.ImageID
	}
	dup, item, err := s.insertMany(ctx, s.images, ids, docs)
	if err != nil {
		return err
	}
	for i, e := range evs {
		out[idx[i]] = item[i]
		if !dup[i] {
			continue
		}
		// The image exists: a replay of this event, or a placeholder made by
		// a tags or delete event that came first. Fill in the metadata
		// (never the tombstone), then the tags if this event is newer.
		start := time.Now()
		_, err := s.images.UpdateOne(ctx, bson.D{{Key: "_id", Value: e.ImageID}}, bson.D{
			{Key: "$set", Value: bson.D{
				{Key: "owner", Value: e.Owner}, {Key: "filename", Value: e.Filename},
				{Key: "content_type", Value: e.Image.ContentType}, {Key: "sha256", Value: e.Image.SHA256},
				{Key: "object", Value: e.Image.Object}, {Key: "size", Value: e.Image.Size},
				{Key: "width", Value: e.Width}, {Key: "height", Value: e.Height},
				{Key: "created_at", Value: e.Time.UTC()}, {Key: "catalogued", Value: true},
			}},
			{Key: "$max", Value: bson.D{{Key: "updated_at", Value: e.Time.UTC()}}},
		})
		s.m.observe(CollImages, "update_one", start)
		if err == nil {
			// A placeholder gets its shelf now; a replay keeps the one it has.
			_, err = s.images.UpdateOne(ctx, bson.D{{Key: "_id", Value: e.ImageID}, {Key: "shelf", Value: bson.D{{Key: "$exists", Value: false}}}},
				bson.D{{Key: "$set", Value: bson.D{{Key: "shelf", Value: shelf[i]}}}})
		}
		if err == nil {
			err = s.setTags(ctx, e.ID, e.ImageID, e.Owner, e.Tags, e.Time)
		}
		if err != nil {
			item, batch := itemOrBatch(CollImages, e.ImageID, err)
			if batch != nil {
				return batch
			}
			out[idx[i]] = item
		}
	}
	return nil
}

// setTags replaces the tags when eventID is newer than the event that set
// them last, creating a placeholder when the image is not catalogued yet.
func (s *Store) setTags(ctx context.Context, eventID, imageID, owner string, tags []string, at time.Time) error {
	tags = nonNil(tags)
	_, err := s.updateNewer(ctx, s.images, imageID,
		bson.D{{Key: "tags_event", Value: bson.D{{Key: "$lt", Value: eventID}}}},
		bson.D{
			{Key: "$set", Value: bson.D{{Key: "tags", Value: tags}, {Key: "tags_event", Value: eventID}}},
			{Key: "$max", Value: bson.D{{Key: "updated_at", Value: at.UTC()}}},
		},
		bson.D{
			{Key: "_id", Value: imageID}, {Key: "owner", Value: owner}, {Key: "tags", Value: tags},
			{Key: "tags_event", Value: eventID}, {Key: "catalogued", Value: false}, {Key: "deleted", Value: false},
			{Key: "updated_at", Value: at.UTC()},
		})
	return err
}

// setShares replaces the shares when the event is newer than the one that
// set them last, creating a placeholder when the image is not catalogued
// yet (as setTags does).
func (s *Store) setShares(ctx context.Context, e *bus.ImageSharesSet) error {
	shares := nonNil(e.Shares)
	_, err := s.updateNewer(ctx, s.images, e.ImageID,
		bson.D{{Key: "$or", Value: bson.A{
			bson.D{{Key: "shares_event", Value: bson.D{{Key: "$exists", Value: false}}}},
			bson.D{{Key: "shares_event", Value: bson.D{{Key: "$lt", Value: e.ID}}}},
		}}},
		bson.D{
			{Key: "$set", Value: bson.D{{Key: "shares", Value: shares}, {Key: "shares_event", Value: e.ID}}},
			{Key: "$max", Value: bson.D{{Key: "updated_at", Value: e.Time.UTC()}}},
		},
		bson.D{
			{Key: "_id", Value: e.ImageID}, {Key: "owner", Value: e.Owner}, {Key: "tags", Value: []string{}},
			{Key: "tags_event", Value: ""}, {Key: "shares", Value: shares}, {Key: "shares_event", Value: e.ID},
			{Key: "catalogued", Value: false}, {Key: "deleted", Value: false}, {Key: "updated_at", Value: e.Time.UTC()},
		})
	return err
}

func (s *Store) deleteImage(ctx context.Context, e *bus.ImageDeleted) error {
	start := time.Now()
	res, err := s.images.UpdateOne(ctx, bson.D{{Key: "_id", Value: e.ImageID}}, bson.D{
		{Key: "$set", Value: bson.D{{Key: "deleted", Value: true}}},
		{Key: "$max", Value: bson.D{{Key: "updated_at", Value: e.Time.UTC()}}},
		{Key: "$setOnInsert", Value: bson.D{
			{Key: "owner", Value: e.Owner}, {Key: "tags", Value: []string{}},
			{Key: "tags_event", Value: ""}, {Key: "catalogued", Value: false},
		}},
	}, options.UpdateOne().SetUpsert(true))
	s.m.observe(CollImages, "upsert_one", start)
	if err != nil {
		return err
	}
	s.m.add(CollImages, int(res.ModifiedCount+res.UpsertedCount), 0)
	return nil
}

// ImageFilter selects an owner's live catalogued images carrying every tag.
type ImageFilter struct {
	Owner string
	Tags  []string
}

// ListImages returns one page of the owner's images, newest first, from
// the owner's shelves (see shelves.go): each shelf read matches the tags
// among at most a shelf's images, so a page costs the same however many
// images the owner has (a rare tag walks more shelves). Further tags
// narrow the first down.
func (s *Store) ListImages(ctx context.Context, f ImageFilter, p Page) (bus.List[bus.Image], error) {
	match := bson.D{{Key: "catalogued", Value: true}, {Key: "deleted", Value: false}}
	if len(f.Tags) > 0 {
		match = append(match, bson.E{Key: "tags", Value: f.Tags[0]})
	}
	if len(f.Tags) > 1 {
		match = append(match, bson.E{Key: "$and", Value: bson.A{bson.D{{Key: "tags", Value: bson.D{{Key: "$all", Value: f.Tags}}}}}})
	}
	docs, next, total, err := listShelves[imageDoc](ctx, s.imageShelves,
		shelfQuery{owner: f.Owner, match: match, legacy: append(bson.D{{Key: "owner", Value: f.Owner}}, match...)}, p)
	if err != nil {
		return bus.List[bus.Image]{}, err
	}
	out := bus.List[bus.Image]{Data: make([]bus.Image, len(docs)), Next: next, Total: total, PerPage: int(p.Limit)}
	for i, d := range docs {
		out.Data[i] = d.toBus()
	}
	return out, nil
}

// GetImage returns the live image id when viewer owns it or it is shared
// with viewer; false for an unknown or deleted image, or one the viewer
// may not see. Only the owner is told whom the image is shared with.
func (s *Store) GetImage(ctx context.Context, viewer, id string) (bus.Image, bool, error) {
	d, ok, err := findOne[imageDoc](ctx, s.images, bson.D{
		{Key: "_id", Value: id}, {Key: "catalogued", Value: true}, {Key: "deleted", Value: false}})
	if err != nil || !ok {
		return bus.Image{}, false, err
	}
	if d.Owner != viewer && !slices.Contains(d.Shares, viewer) {
		return bus.Image{}, false, nil
	}
	img := d.toBus()
	if d.Owner != viewer {
		img.Shares = nil
	}
	return img, true, nil
}

// Listing by tag across owners (TaggedImages) walks every owner's shelves,
// newest first, owner by owner in name order. Each shelf read is the
// indexed equality {shelf, catalogued, deleted, tags} over at most a
// shelf's images, so a page costs about the same at 100,000 images as at
// 100 and nothing holds more than a page: a plain {tags} filter would make
// FerretDB fetch and sort every tagged image in Go for every page (it
// pushes down equality only, never the sort, the limit or a cursor's $gt).
// Owners come from the shelf counters, one small document each, read
// whole and sorted per page (no index can page them on FerretDB): the cost
// grows with the number of owners, not of images. Images stored before
// shelves existed are listed last, from their own phase.

// Bounds of one page of TaggedImages: owners named per page, and shelves
// read per page, so a rare tag's page ends in time (shorter, with a next).
const (
	taggedOwnersPerPage  = 256
	taggedShelvesPerPage = 256
)

// TaggedFilter selects the live catalogued images carrying Tag, of every
// owner; with Since only those catalogued at or after it; with Model and
// Version, each image's latest completed grade by that version is read too.
type TaggedFilter struct {
	Tag            string
	Since          time.Time
	Model, Version string
}

// taggedPos is where a TaggedImages page resumes: in the shelves phase at
// owner's shelf (0: with the owner after owner), or in the phase of images
// without a shelf after the image id.
type taggedPos struct {
	legacy bool
	owner  string
	shelf  int64
	after  string // legacy phase: the last image id listed
}

func (p taggedPos) encode() string {
	s := "s" + strconv.FormatInt(p.shelf, 36) + "." + p.owner
	if p.legacy {
		s = "l." + p.after
	}
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

func parseTaggedPos(s string) (taggedPos, error) {
	if s == "" {
		return taggedPos{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) > 300 {
		return taggedPos{}, ErrBadCursor
	}
	head, rest, ok := strings.Cut(string(b), ".")
	switch {
	case ok && head == "l":
		return taggedPos{legacy: true, after: rest}, nil
	case ok && strings.HasPrefix(head, "s") && rest != "":
		n, err := strconv.ParseInt(head[1:], 36, 64)
		if err != nil || n < 0 {
			return taggedPos{}, ErrBadCursor
		}
		return taggedPos{owner: rest, shelf: n}, nil
	}
	return taggedPos{}, ErrBadCursor
}

// TaggedImages returns one page of the images f selects, of every owner,
// and the cursor of the next page ("" after the last). A page stops at a
// shelf's end once it holds limit images (so it may hold up to a shelf
// more), or after a bounded number of shelf reads (so it may hold fewer,
// even none, with a next cursor).
func (s *Store) TaggedImages(ctx context.Context, f TaggedFilter, cursor string, limit int) ([]bus.TaggedImage, string, error) {
	pos, err := parseTaggedPos(cursor)
	if err != nil {
		return nil, "", err
	}
	match := bson.D{{Key: "catalogued", Value: true}, {Key: "deleted", Value: false}, {Key: "tags", Value: f.Tag}}
	var docs []imageDoc
	keep := func(got []imageDoc) int {
		n := len(docs)
		for _, d := range got {
			if f.Since.IsZero() || !d.CreatedAt.Before(f.Since) {
				docs = append(docs, d)
			}
		}
		return len(docs) - n
	}
	next := ""
	if !pos.legacy {
		next, err = s.taggedShelves(ctx, match, pos, limit, keep)
		if err != nil {
			return nil, "", err
		}
		if next == "" {
			legacy, err := s.imageShelves.hasLegacy(ctx)
			if err != nil {
				return nil, "", err
			}
			if legacy {
				// Images without a shelf: next page.
				next = taggedPos{legacy: true}.encode()
			}
		}
	} else {
		// Only stores from before shelves existed get here: {tags} is
		// pushed down, the rest is checked in FerretDB, page by _id.
		filter := append(slices.Clone(match), bson.E{Key: "shelf", Value: bson.D{{Key: "$exists", Value: false}}},
			bson.E{Key: "_id", Value: bson.D{{Key: "$gt", Value: pos.after}}})
		cur, err := s.images.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetLimit(int64(limit)))
		if err != nil {
			return nil, "", fmt.Errorf("store: find %s: %w", CollImages, err)
		}
		var got []imageDoc
		if err := cur.All(ctx, &got); err != nil {
			return nil, "", fmt.Errorf("store: read %s: %w", CollImages, err)
		}
		keep(got)
		if len(got) == limit {
			next = taggedPos{legacy: true, after: got[len(got)-1].ID}.encode()
		}
	}
	out, err := s.withServed(ctx, f, docs)
	return out, next, err
}

// taggedShelves reads shelves from pos on into keep until the page is
// full or its bounds are reached, and returns the next page's cursor (""
// when every owner's shelves are read).
func (s *Store) taggedShelves(ctx context.Context, match bson.D, pos taggedPos, limit int, keep func([]imageDoc) int) (string, error) {
	owners, err := s.imageOwners(ctx, pos.owner, pos.shelf > 0)
	if err != nil {
		return "", err
	}
	n, reads := 0, 0
	for _, o := range owners {
		top := o.N
		if o.ID == pos.owner && pos.shelf > 0 {
			top = min(top, pos.shelf)
		}
		for k := top; k >= 1; k-- {
			if n >= limit || reads >= taggedShelvesPerPage {
				return taggedPos{owner: o.ID, shelf: k}.encode(), nil
			}
			got, err := findSorted[imageDoc](ctx, s.images, append(bson.D{{Key: "shelf", Value: shelfKey(o.ID, k)}}, match...), createdAt, 0, 0)
			if err != nil {
				return "", err
			}
			reads++
			n += keep(got)
		}
	}
	if len(owners) == taggedOwnersPerPage {
		return taggedPos{owner: owners[len(owners)-1].ID}.encode(), nil
	}
	return "", nil
}

// shelfCounter is one owner's counter of shelves.
type shelfCounter struct {
	ID string `bson:"_id"`
	N  int64  `bson:"n"`
}

// imageOwners returns up to taggedOwnersPerPage owners after owner (from
// owner on with from), in name order, with their newest shelf.
func (s *Store) imageOwners(ctx context.Context, owner string, from bool) ([]shelfCounter, error) {
	op := "$gt"
	if from {
		op = "$gte"
	}
	cur, err := s.imageShelves.coll.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: op, Value: owner}}}},
		options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetLimit(taggedOwnersPerPage+1).
			SetProjection(bson.D{{Key: "n", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("store: find %s: %w", CollImageShelves, err)
	}
	var all []shelfCounter
	if err := cur.All(ctx, &all); err != nil {
		return nil, fmt.Errorf("store: read %s: %w", CollImageShelves, err)
	}
	out := all[:0]
	for _, c := range all {
		if !strings.HasPrefix(c.ID, "#") && c.N > 0 && len(out) < taggedOwnersPerPage {
			out = append(out, c)
		}
	}
	return out, nil
}

// withServed turns docs into the reply, each with its latest completed
// grade by f's model version (by the image's owner), read a few at once.
func (s *Store) withServed(ctx context.Context, f TaggedFilter, docs []imageDoc) ([]bus.TaggedImage, error) {
	out := make([]bus.TaggedImage, len(docs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, d := range docs {
		out[i] = bus.TaggedImage{ID: d.ID, Owner: d.Owner, Object: d.Object, ContentType: d.ContentType, SHA256: d.SHA256, CreatedAt: d.CreatedAt.UTC()}
		if f.Model == "" || f.Version == "" {
			continue
		}
		g.Go(func() error {
			filter := bson.D{{Key: "image_id", Value: d.ID}, {Key: "owner", Value: d.Owner},
				{Key: "status", Value: bus.GradeStatusCompleted}, {Key: "model", Value: f.Model}, {Key: "model_version", Value: f.Version}}
			// The latest of the history's and the legacy results'.
			var latest *gradeDoc
			for _, coll := range []*mongo.Collection{s.history, s.legacy} {
				got, err := findSorted[gradeDoc](gctx, coll, filter, completedAt, 0, 1)
				if err != nil {
					return err
				}
				if len(got) > 0 && (latest == nil || got[0].CompletedAt.After(latest.CompletedAt)) {
					latest = &got[0]
				}
			}
			if latest != nil {
				out[i].Served = &bus.ServedGrade{GradeID: latest.ID, ModelVersion: latest.ModelVersion, Label: latest.Label, CompletedAt: latest.CompletedAt.UTC()}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// completedAt orders a grade's results, latest first.
const completedAt = "completed_at"
