package store

import (
	"context"
	"fmt"
	"time"

	"github.com/gradeline/gradeline/bus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"golang.org/x/sync/errgroup"
)

// gradeDoc is one grade of the grade history (CollGradeHistory); _id is
// the ImageSubmitted event id (the grade id). A result is inserted whole
// (its event carries the submission's time); a grade the edge answered
// before its result is first inserted as pending from its grade.pending
// event, and its result then fills it in. Both writes come from one
// consumer (annotator-grades) and neither is an upsert: an insert meets an
// existing grade as a duplicate key, so a pending record and its result
// arriving at once cannot lose the result
// (TestGradeSubmissionAndResultAtOnce). Grades stored before the history
// was one document are in two halves: the submission here and the result
// in CollGrades (legacy, read only; see legacyResult).
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

// grade is the Grade a stored document holds.
func (d gradeDoc) grade() bus.Grade { return bus.GradeFrom(d.submission(), d.result()) }

// pendingDoc is the stored form of a grade.pending event.
func pendingDoc(e *bus.GradePending) gradeDoc {
	return gradeDoc{ID: e.GradeID, Status: bus.GradeStatusPending, ImageID: e.ImageID, Owner: e.Owner,
		Model: e.Model, ModelVersion: e.ModelVersion, SubmittedAt: e.SubmittedAt.UTC()}
}

// resultUpdate is the update that fills a stored grade in with the result
// d: only what the result carries, never the submission's time.
func resultUpdate(d gradeDoc) bson.D {
	set := bson.D{{Key: "status", Value: d.Status}}
	set = setIf(set, "image_id", d.ImageID)
	set = setIf(set, "owner", d.Owner)
	set = setIf(set, "model", d.Model)
	if d.Status == bus.GradeStatusCompleted {
		set = setIf(set, "model_version", d.ModelVersion)
		set = append(set,
			bson.E{Key: "label", Value: d.Label}, bson.E{Key: "score", Value: d.Score},
			bson.E{Key: "scores", Value: d.Scores},
			bson.E{Key: "inference_ms", Value: d.InferenceMS}, bson.E{Key: "batch_size", Value: d.BatchSize},
			bson.E{Key: "completed_at", Value: d.CompletedAt})
		return bson.D{{Key: "$set", Value: set}, {Key: "$unset", Value: bson.D{{Key: "reason", Value: ""}}}}
	}
	set = append(set, bson.E{Key: "reason", Value: d.Reason}, bson.E{Key: "completed_at", Value: d.CompletedAt})
	return bson.D{{Key: "$set", Value: set}}
}

// ApplyGrades stores the GRADES stream's events in the grade history:
// grade.completed and grade.failed as whole grades, grade.pending as a
// pending grade until its result. A pending record never replaces
// anything; a completed grade is final (a failure reported later does not
// replace it). Results are as for InsertAnnotations.
func (s *Store) ApplyGrades(ctx context.Context, evs []bus.Event) ([]error, error) {
	out := make([]error, len(evs))
	var (
		docs []any
		ids  []string
		idx  []int
	)
	for i, ev := range evs {
		var d gradeDoc
		switch e := ev.(type) {
		case *bus.GradePending:
			d = pendingDoc(e)
		case *bus.GradeCompleted, *bus.GradeFailed:
			d = docOf(bus.GradeFrom(nil, ev))
			if d.SubmittedAt.IsZero() {
				// A result from before results carried the submission's
				// time (a replay of old events): listed by its own.
				d.SubmittedAt = d.CompletedAt
			}
		default:
			out[i] = fmt.Errorf("store: unexpected grade event %T", ev)
			continue
		}
		docs, ids, idx = append(docs, d), append(ids, d.ID), append(idx, i)
	}
	// One batch insert, which stays as fast at a million grades as on an
	// empty store (an upsert per document does not), failures too (a
	// burst of them, e.g. images gone from the bucket, must not jam the
	// consumer). A grade already there is a redelivery, the grade's
	// pending record or its other result: a result replaces anything but
	// a completed result; a pending record changes nothing.
	dup, item, err := s.insertMany(ctx, s.history, ids, docs)
	if err != nil {
		return nil, err
	}
	for k, i := range idx {
		out[i] = item[k]
		d := docs[k].(gradeDoc)
		if !dup[k] || d.Status == bus.GradeStatusPending {
			continue
		}
		start := time.Now()
		_, err := s.history.UpdateOne(ctx,
			bson.D{{Key: "_id", Value: ids[k]}, {Key: "status", Value: bson.D{{Key: "$ne", Value: bus.GradeStatusCompleted}}}}, resultUpdate(d))
		s.m.observe(CollGradeHistory, "update_one", start)
		if err != nil {
			item, batch := itemOrBatch(CollGradeHistory, ids[k], err)
			if batch != nil {
				return nil, batch
			}
			out[i] = item
		}
	}
	return out, nil
}

// legacyResult completes a grade stored before the history was one
// document: its submission is in the history, still pending, and its
// result, if it came, in CollGrades.
func (s *Store) legacyResult(ctx context.Context, d gradeDoc) (bus.Grade, error) {
	res, ok, err := findOne[gradeDoc](ctx, s.legacy, bson.D{{Key: "_id", Value: d.ID}})
	if err != nil || !ok {
		return d.grade(), err
	}
	return bus.GradeFrom(d.submission(), res.result()), nil
}

// GetGrade returns the grade with id. false when unknown or, with a
// non-empty owner, owned by someone else.
func (s *Store) GetGrade(ctx context.Context, id, owner string) (bus.Grade, bool, error) {
	filter := bson.D{{Key: "_id", Value: id}}
	d, ok, err := findOne[gradeDoc](ctx, s.history, filter)
	if err != nil {
		return bus.Grade{}, false, err
	}
	var g bus.Grade
	switch {
	case ok && d.Status == bus.GradeStatusPending:
		if g, err = s.legacyResult(ctx, d); err != nil {
			return bus.Grade{}, false, err
		}
	case ok:
		g = d.grade()
	default:
		// A legacy result whose submission was never stored.
		res, ok, err := findOne[gradeDoc](ctx, s.legacy, filter)
		if err != nil || !ok {
			return bus.Grade{}, false, err
		}
		g = bus.GradeFrom(nil, res.result())
	}
	if owner != "" && g.Owner != owner {
		return bus.Grade{}, false, nil
	}
	return g, true, nil
}

// submittedAt is the time field grades are listed by.
const submittedAt = "submitted_at"

func (d gradeDoc) key() Cursor { return Cursor{At: d.SubmittedAt, ID: d.ID} }

// ListGrades returns one page of owner's grades of image imageID (every
// owner's when owner is empty), newest submission first.
func (s *Store) ListGrades(ctx context.Context, imageID, owner string, p Page) (bus.List[bus.Grade], error) {
	filter := bson.D{{Key: "image_id", Value: imageID}}
	if owner != "" {
		filter = append(filter, bson.E{Key: "owner", Value: owner})
	}
	docs, next, total, err := findPage[gradeDoc](ctx, s.history, filter, submittedAt, p)
	if err != nil {
		return bus.List[bus.Grade]{}, err
	}
	out := bus.List[bus.Grade]{Data: make([]bus.Grade, len(docs)), Next: next, Total: total, PerPage: int(p.Limit)}
	// A pending grade may be a legacy one whose result is in CollGrades:
	// an indexed lookup apiece, a few at once.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, d := range docs {
		if d.Status != bus.GradeStatusPending {
			out.Data[i] = d.grade()
			continue
		}
		g.Go(func() (err error) {
			out.Data[i], err = s.legacyResult(gctx, d)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return bus.List[bus.Grade]{}, err
	}
	return out, nil
}
