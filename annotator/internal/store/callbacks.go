package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/bus"
)

// CollCallbacks holds one document per attempt to deliver a grade's result
// to its callback_url (grade.callback_attempted), keyed by the event id;
// its one writer is the annotator-callbacks consumer.
const CollCallbacks = "grade_callbacks"

// MaxCallbacksListed bounds the attempts a grade lists (the edge makes
// far fewer per result).
const MaxCallbacksListed = 100

// callbackDoc is one stored attempt.
type callbackDoc struct {
	ID            string    `bson:"_id"`
	GradeID       string    `bson:"grade_id"`
	Owner         string    `bson:"owner"`
	URL           string    `bson:"url"`
	Attempt       int       `bson:"attempt"`
	At            time.Time `bson:"at"`
	StatusCode    int       `bson:"status_code,omitempty"`
	Error         string    `bson:"error,omitempty"`
	DurationMS    float64   `bson:"duration_ms"`
	Outcome       string    `bson:"outcome"`
	NextAttemptAt time.Time `bson:"next_attempt_at,omitempty"`
	RetryAfter    string    `bson:"retry_after,omitempty"`
}

// callbacksIndexed remembers the stores whose callbacks index exists (the
// Store type is shared with other collections' code, so its own flag
// stays there).
var callbacksIndexed sync.Map // *Store -> struct{}

func (s *Store) callbacks() *mongo.Collection { return s.db.Collection(CollCallbacks) }

// ensureCallbackIndex creates the index on grade_id once per store.
func (s *Store) ensureCallbackIndex(ctx context.Context) error {
	if _, ok := callbacksIndexed.Load(s); ok {
		return nil
	}
	if _, err := s.callbacks().Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "grade_id", Value: 1}}}); err != nil {
		return fmt.Errorf("store: index %s.grade_id: %w", CollCallbacks, err)
	}
	callbacksIndexed.Store(s, struct{}{})
	return nil
}

// InsertCallbackAttempts stores grade.callback_attempted events, each once
// (a redelivered event is a duplicate _id, counted as stored). Results are
// as for InsertAnnotations.
func (s *Store) InsertCallbackAttempts(ctx context.Context, evs []*bus.GradeCallbackAttempted) ([]error, error) {
	if err := s.ensureCallbackIndex(ctx); err != nil {
		return nil, err
	}
	docs := make([]any, len(evs))
	ids := make([]string, len(evs))
	for i, e := range evs {
		docs[i] = callbackDoc{ID: e.ID, GradeID: e.GradeID, Owner: e.Owner, URL: e.URL, Attempt: e.Attempt, At: e.Time.UTC(),
			StatusCode: e.StatusCode, Error: e.Error, DurationMS: e.DurationMS, Outcome: e.Outcome, NextAttemptAt: e.NextAttemptAt.UTC(),
			RetryAfter: e.RetryAfter}
		ids[i] = e.ID
	}
	_, item, err := s.insertMany(ctx, s.callbacks(), ids, docs)
	if err != nil {
		return nil, err
	}
	return item, nil
}

// CallbackAttempts lists the attempts to deliver grade id's result, oldest
// first (at most MaxCallbacksListed); none for a grade without a callback.
func (s *Store) CallbackAttempts(ctx context.Context, id string) ([]bus.CallbackAttempt, error) {
	start := time.Now()
	cur, err := s.callbacks().Find(ctx, bson.D{{Key: "grade_id", Value: id}},
		options.Find().SetSort(bson.D{{Key: "at", Value: 1}, {Key: "attempt", Value: 1}}).SetLimit(MaxCallbacksListed))
	s.m.observe(CollCallbacks, "find", start)
	if err != nil {
		return nil, fmt.Errorf("store: find %s: %w", CollCallbacks, err)
	}
	var docs []callbackDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("store: read %s: %w", CollCallbacks, err)
	}
	out := make([]bus.CallbackAttempt, len(docs))
	for i, d := range docs {
		out[i] = bus.CallbackAttempt{Attempt: d.Attempt, At: d.At.UTC(), URL: d.URL, StatusCode: d.StatusCode, Error: d.Error,
			DurationMS: d.DurationMS, Outcome: d.Outcome, RetryAfter: d.RetryAfter}
		if !d.NextAttemptAt.IsZero() {
			out[i].NextAttemptAt = d.NextAttemptAt.UTC()
		}
	}
	return out, nil
}
