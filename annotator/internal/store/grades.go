package store

import (
	"context"
	"fmt"
	"time"

	"github.com/gradeline/gradeline/bus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"golang.org/x/sync/errgroup"
)

// gradeDoc is one half of a grade; _id is the ImageSubmitted event id
// (the grade id). The submission (from image.submitted, in
// CollGradeSubmissions, written by annotator-submissions) and the result
// (from the GRADES stream, in CollGrades, written by annotator-grades) may
// arrive in either order, even at once. Each collection has one writer: two
// consumers writing one document raced on FerretDB and lost a result
// (TestGradeSubmissionAndResultAtOnce), and one consumer cannot read both
// streams. GetGrade is the one place the halves meet, through
// bus.GradeFrom.
// Scores are stored as a subdocument keyed by label (see scoreSet).
type gradeDoc struct {
	ID           string    `bson:"_id"`
	Status       string    `bson:"status"`
	ImageID      string    `bson:"image_id,omitempty"`
	Owner        string    `bson:"owner,omitempty"`
	Model        string    `bson:"model,omitempty"`
	ModelVersion string    `bson:"model_version,omitempty"`
	Label        string    `bson:"label,omitempty"`
	Score        float64   `bson:"score,omitempty"`
	Scores       scoreSet  `bson:"scores,omitempty"`
	InferenceMS  float64   `bson:"inference_ms,omitempty"`
	BatchSize    int       `bson:"batch_size,omitempty"`
	Reason       string    `bson:"reason,omitempty"`
	SubmittedAt  time.Time `bson:"submitted_at,omitempty"`
	CompletedAt  time.Time `bson:"completed_at,omitempty"`
}

// docOf is the stored form of a grade made by bus.GradeFrom.
func docOf(g bus.Grade) gradeDoc {
	return gradeDoc{
		ID: g.ID, Status: g.Status, ImageID: g.ImageID, Owner: g.Owner, Model: g.Model,
		ModelVersion: g.ModelVersion, Label: g.Label, Score: g.Score, Scores: g.Scores,
		InferenceMS: g.InferenceMS, BatchSize: g.BatchSize, Reason: g.Reason,
		SubmittedAt: g.SubmittedAt, CompletedAt: g.CompletedAt,
	}
}

// submission rebuilds the image.submitted event a stored submission was
// made from (the fields a grade keeps of it).
func (d gradeDoc) submission() *bus.ImageSubmitted {
	return &bus.ImageSubmitted{Meta: bus.Meta{ID: d.ID, Type: bus.TypeImageSubmitted, Time: d.SubmittedAt.UTC()},
		ImageID: d.ImageID, Owner: d.Owner, Model: d.Model}
}

// result rebuilds the grade.completed or grade.failed event a stored result
// was made from; nil for a document that holds no result.
func (d gradeDoc) result() bus.Event {
	switch d.Status {
	case bus.GradeStatusCompleted:
		return &bus.GradeCompleted{Meta: bus.Meta{Type: bus.TypeGradeCompleted, Time: d.CompletedAt.UTC()},
			GradeID: d.ID, ImageID: d.ImageID, Owner: d.Owner, Model: d.Model, ModelVersion: d.ModelVersion,
			Label: d.Label, Score: d.Score, Scores: d.Scores, InferenceMS: d.InferenceMS, BatchSize: d.BatchSize}
	case bus.GradeStatusFailed:
		return &bus.GradeFailed{Meta: bus.Meta{Type: bus.TypeGradeFailed, Time: d.CompletedAt.UTC()},
			GradeID: d.ID, ImageID: d.ImageID, Owner: d.Owner, Model: d.Model, Reason: d.Reason}
	}
	return nil
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
		docs[i] = docOf(bus.GradeFrom(e, nil))
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
		sets []bson.D // the update of a result already there, when this one may replace it
		idx  []int
	)
	for i, ev := range evs {
		switch ev.(type) {
		case *bus.GradeCompleted, *bus.GradeFailed:
		default:
			out[i] = fmt.Errorf("store: unexpected grade event %T", ev)
			continue
		}
		d := docOf(bus.GradeFrom(nil, ev))
		set := bson.D{{Key: "status", Value: d.Status}}
		set = setIf(set, "image_id", d.ImageID)
		set = setIf(set, "owner", d.Owner)
		set = setIf(set, "model", d.Model)
		var update bson.D
		if d.Status == bus.GradeStatusCompleted {
			set = setIf(set, "model_version", d.ModelVersion)
			set = append(set,
				bson.E{Key: "label", Value: d.Label}, bson.E{Key: "score", Value: d.Score},
				bson.E{Key: "scores", Value: d.Scores},
				bson.E{Key: "inference_ms", Value: d.InferenceMS}, bson.E{Key: "batch_size", Value: d.BatchSize},
				bson.E{Key: "completed_at", Value: d.CompletedAt})
			update = bson.D{{Key: "$set", Value: set}, {Key: "$unset", Value: bson.D{{Key: "reason", Value: ""}}}}
		} else {
			set = append(set, bson.E{Key: "reason", Value: d.Reason}, bson.E{Key: "completed_at", Value: d.CompletedAt})
			update = bson.D{{Key: "$set", Value: set}}
		}
		docs, ids, sets, idx = append(docs, d), append(ids, d.ID), append(sets, update), append(idx, i)
	}
	// A result is written once: a batch insert, which stays as fast at a
	// million grades as on an empty store (an upsert per document does
	// not), failures too (a burst of them, e.g. images gone from the
	// bucket, must not jam the consumer). A grade already there is a
	// redelivery or the other result of the same grade: a completed result
	// replaces anything but a completed result, and nothing replaces it.
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
			bson.D{{Key: "_id", Value: ids[k]}, {Key: "status", Value: bson.D{{Key: "$ne", Value: bus.GradeStatusCompleted}}}}, sets[k])
		s.m.observe(CollGrades, "update_one", start)
		if err != nil {
			item, batch := itemOrBatch(CollGrades, ids[k], err)
			if batch != nil {
				return nil, batch
			}
			out[i] = item
		}
	}
	return out, nil
}

// GetGrade returns the grade with id: bus.GradeFrom of its submission and
// its result, either of which may not be stored yet. false when unknown
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
	if !hasRes && !hasSub {
		return bus.Grade{}, false, nil
	}
	var submitted *bus.ImageSubmitted
	if hasSub {
		submitted = sub.submission()
	}
	var result bus.Event
	if hasRes {
		result = res.result()
	}
	g := bus.GradeFrom(submitted, result)
	if owner != "" && g.Owner != owner {
		return bus.Grade{}, false, nil
	}
	return g, true, nil
}

// submittedAt is the time field grades are listed by.
const submittedAt = "submitted_at"

func (d gradeDoc) key() Cursor { return Cursor{At: d.SubmittedAt, ID: d.ID} }

// ListGrades returns one page of owner's grades of image imageID (every
// owner's when owner is empty), newest submission first, each with its
// result when stored. A grade is listed once its submission is stored (a
// result alone is not listed).
func (s *Store) ListGrades(ctx context.Context, imageID, owner string, p Page) (bus.List[bus.Grade], error) {
	filter := bson.D{{Key: "image_id", Value: imageID}}
	if owner != "" {
		filter = append(filter, bson.E{Key: "owner", Value: owner})
	}
	subs, next, total, err := findPage[gradeDoc](ctx, s.submissions, filter, submittedAt, p)
	if err != nil {
		return bus.List[bus.Grade]{}, err
	}
	// The results, each by _id: an indexed lookup apiece, a few at once.
	results := make([]bus.Event, len(subs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, sub := range subs {
		g.Go(func() error {
			res, ok, err := findOne[gradeDoc](gctx, s.grades, bson.D{{Key: "_id", Value: sub.ID}})
			if ok {
				results[i] = res.result()
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return bus.List[bus.Grade]{}, err
	}
	out := bus.List[bus.Grade]{Data: make([]bus.Grade, len(subs)), Next: next, Total: total, PerPage: int(p.Limit)}
	for i, sub := range subs {
		out.Data[i] = bus.GradeFrom(sub.submission(), results[i])
	}
	return out, nil
}
