package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
)

// freshStore is newStore on an emptied database, so the test can run
// again (-count) and decide anew that the store holds no legacy images.
func freshStore(t *testing.T) *Store {
	t.Helper()
	s, _ := newStore(t)
	if err := s.db.Drop(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// taggedAll pages through TaggedImages with pages of limit and returns
// every image listed, failing on a page above limit plus a shelf.
func taggedAll(t *testing.T, s *Store, f TaggedFilter, limit int) []bus.TaggedImage {
	t.Helper()
	var all []bus.TaggedImage
	cursor := ""
	for range 1000 {
		page, next, err := s.TaggedImages(context.Background(), f, cursor, limit)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > limit+int(s.imageShelves.size) {
			t.Fatalf("a page of %d images, asked for %d", len(page), limit)
		}
		all = append(all, page...)
		if next == "" {
			return all
		}
		cursor = next
	}
	t.Fatal("the listing never ended")
	return nil
}

func taggedIDs(imgs []bus.TaggedImage) []string {
	var ids []string
	for _, im := range imgs {
		ids = append(ids, im.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestTaggedImages lists one tag's live images of every owner, across
// owners and shelves, whatever the page size, each once, with where its
// bytes are and its latest completed grade by the asked model version;
// Since narrows to recent images; a bad cursor is refused.
func TestTaggedImages(t *testing.T) {
	s := freshStore(t)
	s.imageShelves.size = 3 // many shelves from a few images
	ctx := context.Background()
	start := time.Now().UTC().Truncate(time.Millisecond)
	var cat []bus.Event
	var want, recent []string
	for i := range 40 {
		owner := fmt.Sprintf("owner%d", i%4)
		id := fmt.Sprintf("img%02d", i)
		tags := []string{"other"}
		if i%3 != 0 {
			tags = append(tags, "cats")
		}
		c := catalogued(id, owner, tags...)
		c.Time = start.Add(time.Duration(i) * time.Second)
		cat = append(cat, c)
		if i%3 != 0 && i != 8 {
			want = append(want, id)
			if i >= 20 {
				recent = append(recent, id)
			}
		}
	}
	check(t)(s.ApplyCatalog(ctx, cat))
	check(t)(s.ApplyCatalog(ctx, []bus.Event{deleted("img08", "owner0"), tagsSet("img03", "owner3", "cats")}))
	want = append(want, "img03")
	slices.Sort(want)
	slices.Sort(recent)

	// Served grades of img01: an older and a newer one of version 1, one
	// of version 2, a failed one, and one of another owner.
	grade := func(owner, version, label string, at time.Duration) *bus.GradeCompleted {
		g := completed(bus.NewID())
		g.ImageID, g.Owner, g.ModelVersion, g.Label, g.Time = "img01", owner, version, label, start.Add(at)
		return g
	}
	check(t)(s.ApplyGrades(ctx, []bus.Event{grade("owner1", "1", "older", time.Second), grade("owner1", "1", "newer", 3*time.Second),
		grade("owner1", "2", "v2", 5*time.Second), grade("mallory", "1", "not the owner's", 9*time.Second)}))
	// The newest is a result stored before the history was one document
	// (in CollGrades): the served grade is the latest of both.
	newest := grade("owner1", "1", "newest", 4*time.Second)
	if _, err := s.legacy.InsertOne(ctx, docOf(bus.GradeFrom(nil, newest))); err != nil {
		t.Fatal(err)
	}

	for _, limit := range []int{1, 2, 5, 1000} {
		got := taggedAll(t, s, TaggedFilter{Tag: "cats", Model: "fashion", Version: "1"}, limit)
		if ids := taggedIDs(got); !slices.Equal(ids, want) {
			t.Fatalf("pages of %d: %v, want %v", limit, ids, want)
		}
		for _, im := range got {
			if im.Object != "obj-"+im.ID || im.Owner == "" || im.ContentType != "image/png" {
				t.Fatalf("image %+v", im)
			}
			switch {
			case im.ID == "img01" && (im.Served == nil || im.Served.GradeID != newest.GradeID || im.Served.Label != "newest" || im.Served.ModelVersion != "1"):
				t.Fatalf("img01 served %+v, want the newest grade of version 1", im.Served)
			case im.ID != "img01" && im.Served != nil:
				t.Fatalf("%s served %+v, want none", im.ID, im.Served)
			}
		}
	}
	if got := taggedIDs(taggedAll(t, s, TaggedFilter{Tag: "cats", Since: start.Add(20 * time.Second)}, 4)); !slices.Equal(got, recent) {
		t.Fatalf("since: %v, want %v", got, recent)
	}
	if got := taggedAll(t, s, TaggedFilter{Tag: "dogs"}, 10); len(got) != 0 {
		t.Fatalf("no image is tagged dogs: %v", got)
	}
	for _, bad := range []string{"x", "!!", "AAAA", taggedPos{owner: "o"}.encode()[:3]} {
		if _, _, err := s.TaggedImages(ctx, TaggedFilter{Tag: "cats"}, bad, 10); !errors.Is(err, ErrBadCursor) {
			t.Errorf("cursor %q: %v, want ErrBadCursor", bad, err)
		}
	}
}

// TestTaggedImagesLegacy: images stored before shelves existed are listed
// too, after the shelved ones.
func TestTaggedImagesLegacy(t *testing.T) {
	s := freshStore(t)
	ctx := context.Background()
	for i := range 5 {
		d := imageDoc{ID: fmt.Sprintf("old%d", i), Owner: "olga", Object: "o", Tags: []string{"cats"}, Catalogued: true, CreatedAt: time.Now()}
		if _, err := s.images.InsertOne(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	check(t)(s.ApplyCatalog(ctx, []bus.Event{catalogued("new0", "olga", "cats"), catalogued("new1", "nils", "cats")}))
	got := taggedIDs(taggedAll(t, s, TaggedFilter{Tag: "cats"}, 2))
	if want := []string{"new0", "new1", "old0", "old1", "old2", "old3", "old4"}; !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
}
