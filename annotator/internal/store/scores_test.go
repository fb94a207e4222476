package store

import (
	"context"
	"maps"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/gradeline/gradeline/bus"
)

func TestScoreKeys(t *testing.T) {
	for _, tc := range []struct{ label, key string }{
		{"Bag", "Bag"},
		{"T-shirt/top", "T-shirt/top"},
		{"Ankle boot", "Ankle boot"},
		{"a.b", "a%2Eb"},
		{"$where", "%24where"},
		{"100%", "100%25"},
		{"%2E", "%252E"}, // a label that looks escaped stays itself
		{"nul\x00", "nul%00"},
		{"", "%"},
		{"%", "%25"},
		{"é.ü", "é%2Eü"},
	} {
		if got := scoreKey(tc.label); got != tc.key {
			t.Errorf("scoreKey(%q) = %q, want %q", tc.label, got, tc.key)
		}
		if got := labelOfKey(tc.key); got != tc.label {
			t.Errorf("labelOfKey(%q) = %q, want %q", tc.key, got, tc.label)
		}
	}
	// Keys not made by scoreKey are read as they are.
	for _, key := range []string{"50%", "%zz", "%2"} {
		if got := labelOfKey(key); got != key {
			t.Errorf("labelOfKey(%q) = %q, want it unchanged", key, got)
		}
	}
}

// A result's scores are stored as a subdocument keyed by (escaped)
// label, and grades stored in the earlier form, a list of {label, score},
// still read back whole.
func TestStoredScores(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	want := map[string]float64{"bag": 0.9, "coat": 0.1, "a.b": 0.05, "$x": 0.01, "": 0.02, "100%": 0.03}
	c := completed(bus.NewID())
	c.Scores = want
	check(t)(s.recordPending(ctx, []*bus.ImageSubmitted{submitted(c.GradeID, "img", "erin")}))
	check(t)(s.ApplyGrades(ctx, []bus.Event{c}))

	var raw bson.Raw
	if err := s.history.FindOne(ctx, bson.D{{Key: "_id", Value: c.GradeID}}).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	doc, ok := raw.Lookup("scores").DocumentOK()
	if !ok {
		t.Fatalf("scores stored as %s, want a document", raw.Lookup("scores").Type)
	}
	if v, ok := doc.Lookup("a%2Eb").DoubleOK(); !ok || v != 0.05 {
		t.Errorf(`scores["a%%2Eb"] = %v (%v), want 0.05; stored %s`, v, ok, doc)
	}
	g, ok, err := s.GetGrade(ctx, c.GradeID, "")
	if err != nil || !ok {
		t.Fatalf("GetGrade: %v, %v", ok, err)
	}
	if !maps.Equal(g.Scores, want) {
		t.Errorf("scores read back %v, want %v", g.Scores, want)
	}

	// The earlier form, written as it was (in the legacy results).
	old := bus.NewID()
	check(t)(s.recordPending(ctx, []*bus.ImageSubmitted{submitted(old, "img", "erin")}))
	if _, err := s.legacy.InsertOne(ctx, bson.D{{Key: "_id", Value: old}, {Key: "status", Value: bus.GradeStatusCompleted},
		{Key: "image_id", Value: "img"}, {Key: "owner", Value: "erin"}, {Key: "model", Value: "fashion"},
		{Key: "label", Value: "bag"}, {Key: "score", Value: 0.9},
		{Key: "scores", Value: bson.A{bson.D{{Key: "label", Value: "a.b"}, {Key: "score", Value: 0.1}}, bson.D{{Key: "label", Value: "bag"}, {Key: "score", Value: 0.9}}}},
		{Key: "completed_at", Value: time.Now().UTC()}}); err != nil {
		t.Fatal(err)
	}
	g, ok, err = s.GetGrade(ctx, old, "")
	if err != nil || !ok {
		t.Fatalf("GetGrade of the earlier form: %v, %v", ok, err)
	}
	if w := map[string]float64{"a.b": 0.1, "bag": 0.9}; !maps.Equal(g.Scores, w) {
		t.Errorf("earlier form read back %v, want %v", g.Scores, w)
	}
}
