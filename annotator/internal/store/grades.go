package store

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/gradeline/gradeline/bus"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// gradeDoc is one grade; _id is the ImageSubmitted event id. The pending
// record (from image.submitted, in CollGradeSubmissions) and the result
// (from the GRADES stream, in CollGrades) may arrive in either order, even
// at once: they are kept apart and merged when read.
// Scores are a list, not a map, because labels are free text and MongoDB
// keys may not contain '.' or start with '$'.
type gradeDoc struct {
	ID           string       `bson:"_id"`
	Status       string       `bson:"status"`
	ImageID      string       `bson:"image_id,omitempty"`
	Owner        string       `bson:"owner,omitempty"`
	Model        string       `bson:"model,omitempty"`
	ModelVersion string       `bson:"model_version,omitempty"`
	Label        string       `bson:"label,omitempty"`
	Score        float64      `bson:"score,omitempty"`
	Scores       []labelScore `bson:"scores,omitempty"`
	InferenceMS  float64      `bson:"inference_ms,omitempty"`
	BatchSize    int          `bson:"batch_size,omitempty"`
	Reason       string       `bson:"reason,omitempty"`
	SubmittedAt  time.Time    `bson:"submitted_at,omitempty"`
	CompletedAt  time.Time    `bson:"completed_at,omitempty"`
}

type labelScore struct {
	Label string  `bson:"label"`
	Score float64 `bson:"score"`
}

func (d gradeDoc) toBus() bus.Grade {
	g := bus.Grade{
		ID: d.ID, Status: d.Status, ImageID: d.ImageID, Owner: d.Owner, Model: d.Model,
		ModelVersion: d.ModelVersion, Label: d.Label, Score: d.Score, InferenceMS: d.InferenceMS,
		BatchSize: d.BatchSize, Reason: d.Reason,
	}
	if !d.SubmittedAt.IsZero() {
		g.SubmittedAt = d.SubmittedAt.UTC()
	}
	if !d.CompletedAt.IsZero() {
		g.CompletedAt = d.CompletedAt.UTC()
	}
	if len(d.Scores) > 0 {
		g.Scores = make(map[string]float64, len(d.Scores))
		for _, ls := range d.Scores {
			g.Scores[ls.Label] = ls.Score
		}
	}
	return g
}

// setIf appends field=value to d when value is not empty: a result fills
// in only what it carries.
func setIf(d bson.D, key, value string) bson.D {
	if value != "" {
		d = append(d, bson.E{Key: key, Value: value})
	}
	return d
}

// InsertPending records submitted images as pending grades. A submission
// never changes, so one already stored is simply kept. Results are as for
// InsertAnnotations.
func (s *Store) InsertPending(ctx context.Context, evs []*bus.ImageSubmitted) ([]error, error) {
	docs := make([]any, len(evs))
	ids := make([]string, len(evs))
	for i, e := range evs {
		docs[i] = gradeDoc{
			ID: e.ID, Status: bus.GradeStatusPending, ImageID: e.ImageID, Owner: e.Owner,
			Model: e.Model, SubmittedAt: e.Time.UTC(),
		}
		ids[i] = e.ID
	}
	_, item, err := s.insertMany(ctx, s.submissions, ids, docs)
	if err != nil {
		return nil, err
	}
	return item, nil
}

// ApplyResults stores grade.completed and grade.failed events. A completed
// grade is final: a failure reported later does not replace it. Results
// are as for InsertAnnotations.
func (s *Store) ApplyResults(ctx context.Context, evs []bus.Event) ([]error, error) {
	out := make([]error, len(evs))
	var (
		docs []any
		ids  []string
		sets []bson.D
		idx  []int
	)
	for i, ev := range evs {
		switch e := ev.(type) {
		case *bus.GradeCompleted:
			d := gradeDoc{ID: e.GradeID, Status: bus.GradeStatusCompleted, ImageID: e.ImageID, Owner: e.Owner,
				Model: e.Model, ModelVersion: e.ModelVersion, Label: e.Label, Score: e.Score, Scores: scoreList(e.Scores),
				InferenceMS: e.InferenceMS, BatchSize: e.BatchSize, CompletedAt: e.Time.UTC()}
			set := bson.D{{Key: "status", Value: bus.GradeStatusCompleted}}
			set = setIf(set, "image_id", e.ImageID)
			set = setIf(set, "owner", e.Owner)
			set = setIf(set, "model", e.Model)
			set = setIf(set, "model_version", e.ModelVersion)
			set = append(set,
				bson.E{Key: "label", Value: e.Label}, bson.E{Key: "score", Value: e.Score},
				bson.E{Key: "scores", Value: d.Scores},
				bson.E{Key: "inference_ms", Value: e.InferenceMS}, bson.E{Key: "batch_size", Value: e.BatchSize},
				bson.E{Key: "completed_at", Value: e.Time.UTC()})
			docs, ids, sets, idx = append(docs, d), append(ids, e.GradeID), append(sets, set), append(idx, i)
		case *bus.GradeFailed:
			// Handled below, one by one: failures are rare.
		default:
			out[i] = fmt.Errorf("store: unexpected grade event %T", ev)
		}
	}
	// A result is written once: a batch insert, which stays as fast at a
	// million grades as on an empty store (an upsert per document does not).
	// A grade already there is a redelivery, or a failure reported first:
	// the completed result replaces anything but a completed result.
	dup, item, err := s.insertMany(ctx, s.grades, ids, docs)
	if err != nil {
		return nil, err
	}
	for k, i := range idx {
		out[i] = item[k]
		if !dup[k] {
			continue
		}
		start := time.Now()
		_, err := s.grades.UpdateOne(ctx,
			bson.D{{Key: "_id", Value: ids[k]}, {Key: "status", Value: bson.D{{Key: "$ne", Value: bus.GradeStatusCompleted}}}},
			bson.D{{Key: "$set", Value: sets[k]}, {Key: "$unset", Value: bson.D{{Key: "reason", Value: ""}}}})
		s.m.observe(CollGrades, "update_one", start)
		if err != nil {
			item, batch := itemOrBatch(CollGrades, ids[k], err)
			if batch != nil {
				return nil, batch
			}
			out[i] = item
		}
	}
	for i, ev := range evs {
		e, ok := ev.(*bus.GradeFailed)
		if !ok {
			continue
		}
		set := bson.D{{Key: "status", Value: bus.GradeStatusFailed}, {Key: "reason", Value: e.Reason}}
		set = setIf(set, "image_id", e.ImageID)
		set = setIf(set, "owner", e.Owner)
		set = setIf(set, "model", e.Model)
		set = append(set, bson.E{Key: "completed_at", Value: e.Time.UTC()})
		insert := append(bson.D{{Key: "_id", Value: e.GradeID}}, set...)
		_, err := s.updateNewer(ctx, s.grades, e.GradeID,
			bson.D{{Key: "status", Value: bson.D{{Key: "$ne", Value: bus.GradeStatusCompleted}}}},
			bson.D{{Key: "$set", Value: set}}, insert)
		if err != nil {
			item, batch := itemOrBatch(CollGrades, e.GradeID, err)
			if batch != nil {
				return nil, batch
			}
			out[i] = item
		}
	}
	return out, nil
}

func scoreList(m map[string]float64) []labelScore {
	out := make([]labelScore, 0, len(m))
	for l, v := range m {
		out = append(out, labelScore{Label: l, Score: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
	return out
}

// GetGrade returns the grade with id: its result merged with its
// submission, or the submission alone while pending. false when unknown
// or, with a non-empty owner, owned by someone else.
func (s *Store) GetGrade(ctx context.Context, id, owner string) (bus.Grade, bool, error) {
	filter := bson.D{{Key: "_id", Value: id}}
	res, hasRes, err := findOne[gradeDoc](ctx, s.grades, filter)
	if err != nil {
		return bus.Grade{}, false, err
	}
	sub, hasSub, err := findOne[gradeDoc](ctx, s.submissions, filter)
	if err != nil {
		return bus.Grade{}, false, err
	}
	d := sub
	if hasRes {
		d = res
		d.SubmittedAt = sub.SubmittedAt
		if d.ImageID == "" {
			d.ImageID = sub.ImageID
		}
		if d.Owner == "" {
			d.Owner = sub.Owner
		}
		if d.Model == "" {
			d.Model = sub.Model
		}
	}
	if (!hasRes && !hasSub) || (owner != "" && d.Owner != owner) {
		return bus.Grade{}, false, nil
	}
	return d.toBus(), true, nil
}
