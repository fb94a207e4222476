package bus

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Request and reply types of the query services. The edge (ingest) sends
// them with Request; annotator, inference and analytics answer with Handle.

// Pagination bounds shared by every list query.
const (
	DefaultPerPage = 50
	MaxPerPage     = 1000
)

// Annotations (answered by annotator).

// AnnotationsQuery lists what Viewer may see: the annotations on an image
// the viewer owns or is shared (ImageID), or the viewer's own (no ImageID;
// Author, when set, must then be the viewer). Viewer is required: an empty
// one is an error, never "everyone".
type AnnotationsQuery struct {
	Viewer  string `json:"viewer"`
	ImageID string `json:"image_id,omitempty"`
	Author  string `json:"author,omitempty"`
	// Cursor is List.Next of the previous page; Page (1-based) is the
	// older, slower way to skip ahead and is ignored when Cursor is set.
	Cursor  string `json:"cursor,omitempty"`
	Page    int    `json:"page"`
	PerPage int    `json:"per_page"`
	// AfterSeq asks the service to answer only once the events of the
	// stream up to this sequence are stored (bounded by ReadYourWritesWait),
	// so a writer's next read includes its write. 0: answer at once.
	AfterSeq uint64 `json:"after_seq,omitempty"`
}

// ReadYourWritesWait bounds how long a query with AfterSeq waits for the
// writes before it answers with what is stored.
const ReadYourWritesWait = 2 * time.Second

// AnnotationGetQuery finds an annotation Viewer may see: one the viewer
// wrote, or one on an image the viewer owns or is shared.
type AnnotationGetQuery struct {
	Viewer   string `json:"viewer"`
	ID       string `json:"id"`
	AfterSeq uint64 `json:"after_seq,omitempty"` // as in AnnotationsQuery
}

// Annotation is one stored annotation as the annotator answers it.
type Annotation struct {
	ID         string          `json:"id"`
	ImageID    string          `json:"image_id,omitempty"`
	Author     string          `json:"author"`
	Annotation json.RawMessage `json:"annotation"`
	CreatedAt  time.Time       `json:"created_at"`
	UpdatedAt  time.Time       `json:"updated_at,omitzero"`
}

// Image catalogue (answered by annotator). Every query is scoped to its
// owner: another user's image is not found.

// ImagesQuery lists Owner's images, newest first, optionally only those
// carrying every tag of Tags.
type ImagesQuery struct {
	Owner    string   `json:"owner"`
	Tags     []string `json:"tags,omitempty"`   // all must match
	Cursor   string   `json:"cursor,omitempty"` // as in AnnotationsQuery
	Page     int      `json:"page"`
	PerPage  int      `json:"per_page"`
	AfterSeq uint64   `json:"after_seq,omitempty"` // as in AnnotationsQuery
}

// ImageGetQuery finds an image its owner, or a user it is shared with,
// may see (Owner is the caller).
type ImageGetQuery struct {
	Owner    string `json:"owner"`
	ID       string `json:"id"`
	AfterSeq uint64 `json:"after_seq,omitempty"` // as in AnnotationsQuery
}

// Image is one catalogued image as the annotator answers it. Object, the
// name of its bytes in the image bucket, stays inside the services.
type Image struct {
	ID          string   `json:"img_id"`
	Owner       string   `json:"owner"`
	Filename    string   `json:"filename,omitempty"`
	ContentType string   `json:"content_type"`
	SHA256      string   `json:"sha256"`
	Object      string   `json:"-"`
	Size        int64    `json:"size"`
	Width       int      `json:"width"`
	Height      int      `json:"height"`
	Tags        []string `json:"tags"`
	// Shares lists the users the image is shared with; only its owner sees it.
	Shares    []string  `json:"shares,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// TaggedImagesQuery lists the live catalogue images that carry Tag, of
// every owner: the operator's query behind `gradeline regrade --tag`
// (the edge offers no route to it). A page reads a bounded number of
// owners' shelves, so it may hold fewer than PerPage images, even none,
// and still have a Next; the listing ends when Next is empty.
type TaggedImagesQuery struct {
	Tag string `json:"tag"`
	// Since, when set, keeps only images catalogued at or after it.
	Since time.Time `json:"since,omitzero"`
	// Model and Version, when set, ask for each image's latest completed
	// grade by that model version (TaggedImage.Served).
	Model   string `json:"model,omitempty"`
	Version string `json:"version,omitempty"`
	Cursor  string `json:"cursor,omitempty"` // Next of the previous page
	PerPage int    `json:"per_page"`
}

// TaggedImage is one image of a TaggedImagesQuery page: whose it is,
// where its bytes are in the image bucket, and what was served for it.
type TaggedImage struct {
	ID          string    `json:"img_id"`
	Owner       string    `json:"owner"`
	Object      string    `json:"object"`
	ContentType string    `json:"content_type"`
	SHA256      string    `json:"sha256"`
	CreatedAt   time.Time `json:"created_at"`
	// Served is the latest completed grade of the image by the query's
	// model version; nil when there is none (or no version was asked).
	Served *ServedGrade `json:"served,omitempty"`
}

// ServedGrade is a completed grade as a regrade compares with it.
type ServedGrade struct {
	GradeID      string    `json:"grade_id"`
	ModelVersion string    `json:"model_version"`
	Label        string    `json:"label"`
	CompletedAt  time.Time `json:"completed_at"`
}

// Grades (answered by annotator from the grade history).

// GradeGetQuery finds a grade of Owner. A pending grade is answered once
// the results the GRADES stream holds at the time of the query are stored
// (bounded by ReadYourWritesWait), so a result the edge has already handed
// to the client is never read back as pending.
type GradeGetQuery struct {
	ID    string `json:"id"`
	Owner string `json:"owner"` // required: another owner's grade is not found
	// AfterSeq is the GRADES stream sequence of the owner's last grade the
	// edge answered: the result it handed out, or the grade.pending record
	// of a 202 (as in AnnotationsQuery). A grade answered a moment ago is
	// never read as unknown, nor its result as pending.
	AfterSeq uint64 `json:"after_seq,omitempty"`
}

// Grade statuses.
const (
	GradeStatusPending   = "pending"
	GradeStatusCompleted = "completed"
	GradeStatusFailed    = "failed"
)

// Grade is one grade as the annotator answers it from the grade history:
// pending until its result arrives, then completed or failed (Status).
type Grade struct {
	ID           string             `json:"id"`
	Status       string             `json:"status"`
	ImageID      string             `json:"image_id"`
	Owner        string             `json:"owner"`
	Model        string             `json:"model"`
	ModelVersion string             `json:"model_version,omitempty"`
	Label        string             `json:"label,omitempty"`
	Score        float64            `json:"score,omitempty"`
	Scores       map[string]float64 `json:"scores,omitempty"`
	InferenceMS  float64            `json:"inference_ms,omitempty"`
	BatchSize    int                `json:"batch_size,omitempty"`
	Reason       string             `json:"reason,omitempty"`
	SubmittedAt  time.Time          `json:"submitted_at,omitzero"`
	CompletedAt  time.Time          `json:"completed_at,omitzero"`
	// Catalogued: a grade of a catalogue image, a prediction on it.
	Catalogued bool `json:"catalogued,omitempty"`
	// Callbacks are the attempts to deliver the result to the
	// submission's callback_url, oldest first (none without one).
	Callbacks []CallbackAttempt `json:"callbacks,omitempty"`
}

// GradesQuery lists the grades of one image, newest submission first;
// paging as in AnnotationsQuery. A List[Grade] answers it. With Owner, the
// owner's grades of the image (any image id a grade carries); with Viewer
// instead, the predictions on a catalogue image the viewer may see: every
// user's completed grades of it (a page may then hold fewer than PerPage).
type GradesQuery struct {
	ImageID string `json:"image_id"`
	Owner   string `json:"owner,omitempty"`
	Viewer  string `json:"viewer,omitempty"`
	Cursor  string `json:"cursor,omitempty"`
	Page    int    `json:"page"`
	PerPage int    `json:"per_page"`
	// AfterSeq is as in GradeGetQuery.
	AfterSeq uint64 `json:"after_seq,omitempty"`
}

// GradeFrom is the one conversion of grade events into a Grade: the
// submission (the grade id is its event id) and its result, a
// *GradeCompleted or *GradeFailed. Either may be nil: a submission alone is
// pending; a result alone is the whole grade (its SubmittedAt is zero only
// in events from before results carried it). Fields the result leaves
// empty keep the submission's.
func GradeFrom(submitted *ImageSubmitted, result Event) Grade {
	var g Grade
	if submitted != nil {
		g = Grade{ID: submitted.ID, Status: GradeStatusPending, ImageID: submitted.ImageID,
			Owner: submitted.Owner, Model: submitted.Model, SubmittedAt: submitted.Time.UTC(), Catalogued: submitted.Catalogued}
		// The version asked for, until the result says which one served.
		g.ModelVersion = submitted.ModelVersion
	}
	// keep fills in what the result carries, leaving the submission's
	// value where the result has none.
	keep := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	switch e := result.(type) {
	case *GradeCompleted:
		keep(&g.ID, e.GradeID)
		keep(&g.ImageID, e.ImageID)
		keep(&g.Owner, e.Owner)
		keep(&g.Model, e.Model)
		g.Status = GradeStatusCompleted
		g.ModelVersion, g.Label, g.Score, g.Scores = e.ModelVersion, e.Label, e.Score, e.Scores
		g.InferenceMS, g.BatchSize = e.InferenceMS, e.BatchSize
		g.CompletedAt = e.Time.UTC()
		g.Catalogued = g.Catalogued || e.Catalogued
		if g.SubmittedAt.IsZero() && !e.SubmittedAt.IsZero() {
			g.SubmittedAt = e.SubmittedAt.UTC()
		}
	case *GradeFailed:
		keep(&g.ID, e.GradeID)
		keep(&g.ImageID, e.ImageID)
		keep(&g.Owner, e.Owner)
		keep(&g.Model, e.Model)
		g.Status = GradeStatusFailed
		g.Reason = e.Reason
		g.CompletedAt = e.Time.UTC()
		if g.SubmittedAt.IsZero() && !e.SubmittedAt.IsZero() {
			g.SubmittedAt = e.SubmittedAt.UTC()
		}
	}
	return g
}

// Models (answered by inference).

// ModelsQuery asks inference for the models it serves.
type ModelsQuery struct {
	// All lists also the models that serve no version (every version
	// failed to load, or unloaded), with State and Error.
	All bool `json:"all,omitempty"`
}

// ModelInput describes the tensor a model takes: its name, layout
// (e.g. NCHW) and size.
type ModelInput struct {
	Name     string `json:"name"`
	Layout   string `json:"layout"`
	Width    int    `json:"width"`
	Height   int    `json:"height"`
	Channels int    `json:"channels"`
}

// ModelInfo describes one model inference serves (SvcModelsList).
type ModelInfo struct {
	Name     string     `json:"name"`
	Version  string     `json:"version"`
	Task     string     `json:"task"`
	Labels   []string   `json:"labels"`
	Input    ModelInput `json:"input"`
	MaxBatch int        `json:"max_batch"`
	Accuracy float64    `json:"accuracy,omitempty"`
	// Output names the model's output tensor (one score per label per
	// image); empty from an inference replica older than the field.
	Output ModelOutput `json:"output,omitzero"`
	// Versions lists the versions in the model's folder, newest first,
	// each READY (served) or UNAVAILABLE with the reason and the load
	// error; Version is the newest served one, what a request naming no
	// version gets. Empty from an inference replica older than the field.
	Versions []ModelVersion `json:"versions,omitempty"`
	// State is UNAVAILABLE and Error says why for a model that serves no
	// version (listed only with ModelsQuery.All); empty otherwise.
	State string `json:"state,omitempty"`
	Error string `json:"error,omitempty"`
}

// ModelVersion is one version of a model (ModelInfo.Versions).
type ModelVersion struct {
	Version string `json:"version"`
	// State is READY (served) or UNAVAILABLE (Triton's names).
	State string `json:"state"`
	// Reason says why a version is not served, or that a changed copy of
	// a served one failed to load (the previous copy still serves).
	Reason string `json:"reason,omitempty"`
	// Error is the load error of the version's files, if any.
	Error    string    `json:"error,omitempty"`
	LoadedAt time.Time `json:"loaded_at,omitzero"`
}

// Served reports whether the model serves version (any version when
// version is ""). A reply of an inference replica older than Versions
// serves only Version.
func (m ModelInfo) Served(version string) bool {
	if m.State != "" && m.State != "READY" {
		return false
	}
	if version == "" || version == m.Version {
		return true
	}
	for _, v := range m.Versions {
		if v.Version == version && v.State == "READY" {
			return true
		}
	}
	return false
}

// ServedVersions lists the versions the model serves, newest first.
func (m ModelInfo) ServedVersions() []string {
	if len(m.Versions) == 0 {
		return []string{m.Version}
	}
	var out []string
	for _, v := range m.Versions {
		if v.State == "READY" {
			out = append(out, v.Version)
		}
	}
	return out
}

// SplitModelRef splits a model reference "name@version" (the version is
// optional: "name" asks for the newest served version).
func SplitModelRef(ref string) (name, version string) {
	name, version, _ = strings.Cut(ref, "@")
	return name, version
}

// Repository actions of ModelRepositoryQuery.
const (
	ModelLoad   = "load"
	ModelUnload = "unload"
)

// ModelRepositoryQuery loads or unloads a model (Triton's repository
// extension); every inference replica acts on it (SvcModelsRepository is
// not a queue group) and the first reply answers: the model as that
// replica serves it afterwards (State UNAVAILABLE once unloaded).
type ModelRepositoryQuery struct {
	Model  string `json:"model"`
	Action string `json:"action"`
}

// ModelOutput describes the tensor a model produces: its name and how its
// values became the scores (probabilities, logits or sigmoid).
type ModelOutput struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
}

// Iris (answered by analytics).

// IrisColumns are the measurement columns a filter or sort may name.
var IrisColumns = []string{"sepal_length", "sepal_width", "petal_length", "petal_width"}

// IrisFilter selects rows: species in Species (all when empty) and, for
// every named column, Lower[c] <= value <= Upper[c] (both inclusive).
type IrisFilter struct {
	Species []string           `json:"species,omitempty"`
	Lower   map[string]float64 `json:"lower,omitempty"`
	Upper   map[string]float64 `json:"upper,omitempty"`
}

// IrisRangeQuery pages through the iris rows the filter selects, sorted
// by a column (SvcIrisRange).
type IrisRangeQuery struct {
	IrisFilter
	Page    int    `json:"page"`
	PerPage int    `json:"per_page"`
	Sort    string `json:"sort,omitempty"` // a column; ties broken by row id
}

// IrisStatsFuncs are the aggregate functions of IrisStatsQuery.
var IrisStatsFuncs = []string{"mean", "min", "max", "median", "stddev", "count", "quantile"}

// IrisStatsQuery aggregates the rows the filter selects per species with
// one of IrisStatsFuncs (SvcIrisStats).
type IrisStatsQuery struct {
	IrisFilter
	Func string  `json:"func"`
	Q    float64 `json:"q,omitempty"` // for quantile, in [0, 1]
}

// IrisStat is one species' aggregate: Values maps each column to the
// function's result.
type IrisStat struct {
	Label  string             `json:"label"`
	Values map[string]float64 `json:"values"`
	Count  uint64             `json:"count"`
}

// Validate checks a filter and answers 422 naming every offending field.
func (f IrisFilter) Validate() error {
	var details []string
	for _, s := range f.Species {
		if !slices.Contains(IrisSpecies, s) {
			details = append(details, fmt.Sprintf("species: unknown species %q (known: %v)", s, IrisSpecies))
		}
	}
	for _, bound := range []struct {
		name string
		m    map[string]float64
	}{{"lower", f.Lower}, {"upper", f.Upper}} {
		keys := make([]string, 0, len(bound.m))
		for c := range bound.m {
			keys = append(keys, c)
		}
		sort.Strings(keys)
		for _, c := range keys {
			if !slices.Contains(IrisColumns, c) {
				details = append(details, fmt.Sprintf("%s.%s: unknown column (known: %v)", bound.name, c, IrisColumns))
			} else if v := bound.m[c]; math.IsNaN(v) || math.IsInf(v, 0) {
				details = append(details, fmt.Sprintf("%s.%s: must be a finite number", bound.name, c))
			}
		}
	}
	for c, lo := range f.Lower {
		if hi, ok := f.Upper[c]; ok && lo > hi {
			details = append(details, fmt.Sprintf("lower.%s: %v is greater than upper.%s %v", c, lo, c, hi))
		}
	}
	if len(details) > 0 {
		sort.Strings(details)
		return &Error{Code: CodeUnprocessable, Message: "invalid iris filter", Details: details}
	}
	return nil
}

// PageDefaults applies the defaults of a page request: page 0 is the
// first page, per_page 0 is DefaultPerPage. The edge and every query
// service apply them through this one function.
func PageDefaults(page, perPage int) (int, int) {
	if page == 0 {
		page = 1
	}
	if perPage == 0 {
		perPage = DefaultPerPage
	}
	return page, perPage
}

// ValidatePage checks page >= 1 and 1 <= perPage <= MaxPerPage, after
// PageDefaults.
func ValidatePage(page, perPage int) error {
	var details []string
	if page < 1 {
		details = append(details, "page: must be at least 1")
	}
	if perPage < 1 || perPage > MaxPerPage {
		details = append(details, fmt.Sprintf("per_page: must be between 1 and %d", MaxPerPage))
	}
	if len(details) > 0 {
		return &Error{Code: CodeUnprocessable, Message: "invalid pagination", Details: details}
	}
	return nil
}

// Statistics (answered by analytics).
//
// Every statistics query names whose activity it counts: one user's
// (GradeStatsQuery.Owner, AnnotationStatsQuery.Author) or, only when it says
// so, everyone's (All). A query naming neither is refused with 422, so a
// caller on the bus never gets every user's activity by leaving a field out.

// ReviewQuery is the review queue of Owner (SvcStatsReview): the catalogue
// images Owner graded, lowest top score of the latest prediction first,
// optionally only those nobody has annotated; Page is 1-based.
type ReviewQuery struct {
	Owner       string `json:"owner"`
	Unannotated bool   `json:"unannotated,omitempty"`
	Page        int    `json:"page"`
	PerPage     int    `json:"per_page"`
}

// ReviewItem is an image of the review queue with its latest prediction.
type ReviewItem struct {
	ImageID      string    `json:"image_id"`
	GradeID      string    `json:"grade_id"`
	Model        string    `json:"model"`
	ModelVersion string    `json:"model_version"`
	Label        string    `json:"label"`
	Score        float64   `json:"score"`
	GradedAt     time.Time `json:"graded_at"`
}

// AgreementQuery compares Owner's predictions of Model on catalogue images
// with the image labels people gave them (SvcStatsAgreement), per model
// version.
type AgreementQuery struct {
	Owner string `json:"owner"`
	Model string `json:"model"`
}

// AgreementRow is one model version: how many images have both a
// prediction and a human label, how many agree, and the confusion counts.
type AgreementRow struct {
	ModelVersion string          `json:"model_version"`
	Compared     uint64          `json:"compared"`
	Agree        uint64          `json:"agree"`
	Rate         float64         `json:"rate"`
	Confusion    []ConfusionCell `json:"confusion"`
}

// ConfusionCell counts the images predicted Predicted and labelled Human.
type ConfusionCell struct {
	Predicted string `json:"predicted"`
	Human     string `json:"human"`
	Count     uint64 `json:"count"`
}

// GradeStatsQuery counts grades per time bucket, model and label
// (SvcStatsGrades).
type GradeStatsQuery struct {
	// Owner counts the grades this user submitted.
	Owner string `json:"owner,omitempty"`
	// All counts every user's grades; it excludes Owner.
	All    bool          `json:"all,omitempty"`
	Model  string        `json:"model,omitempty"`
	From   time.Time     `json:"from"`
	To     time.Time     `json:"to"`
	Bucket time.Duration `json:"bucket"`
}

// GradeStatsRow is one bucket, model and label of the grade statistics.
type GradeStatsRow struct {
	Bucket         time.Time `json:"bucket"`
	Model          string    `json:"model"`
	Label          string    `json:"label"`
	Count          uint64    `json:"count"`
	MeanScore      float64   `json:"mean_score"`
	P50InferenceMS float64   `json:"p50_inference_ms"`
	P99InferenceMS float64   `json:"p99_inference_ms"`
}

// AnnotationStatsQuery counts annotations per time bucket and author
// (SvcStatsAnnotations).
type AnnotationStatsQuery struct {
	// Author counts the annotations this user made.
	Author string `json:"author,omitempty"`
	// All counts every user's annotations; it excludes Author.
	All    bool          `json:"all,omitempty"`
	From   time.Time     `json:"from"`
	To     time.Time     `json:"to"`
	Bucket time.Duration `json:"bucket"`
}

// AnnotationStatsRow is one bucket and author of the annotation statistics.
type AnnotationStatsRow struct {
	Bucket time.Time `json:"bucket"`
	Author string    `json:"author"`
	Count  uint64    `json:"count"`
}

// Statistics windows (From, To, Bucket of GradeStatsQuery and
// AnnotationStatsQuery): zero values take defaults, the rest is validated
// by NormalizeStatsWindow.
const (
	DefaultStatsWindow = 24 * time.Hour
	DefaultStatsBucket = time.Hour
	MinStatsBucket     = time.Millisecond
	MaxStatsBuckets    = 100000
)

// The times a statistics window may name (what ClickHouse's DateTime64(3)
// holds on every version the analytics service supports).
var (
	minStatsTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	maxStatsTime = time.Date(2261, 12, 31, 0, 0, 0, 0, time.UTC)
)

// NormalizeStatsWindow applies the defaults of a statistics window (to =
// now, from = to - DefaultStatsWindow, bucket = DefaultStatsBucket) and
// validates it: from <= to, both within 1970..2261, bucket at least
// MinStatsBucket and at most MaxStatsBuckets buckets. The error is a
// *Error 422 naming every offending field. The edge and analytics apply
// this one rule.
func NormalizeStatsWindow(from, to *time.Time, bucket *time.Duration, now time.Time) error {
	if to.IsZero() {
		*to = now
	}
	if from.IsZero() {
		*from = to.Add(-DefaultStatsWindow)
	}
	if *bucket == 0 {
		*bucket = DefaultStatsBucket
	}
	*from, *to = from.UTC(), to.UTC()
	var d []string
	for _, f := range []struct {
		name string
		t    time.Time
	}{{"from", *from}, {"to", *to}} {
		if f.t.Before(minStatsTime) || f.t.After(maxStatsTime) {
			d = append(d, fmt.Sprintf("%s: %s is outside %d..%d", f.name, f.t.Format(time.RFC3339), minStatsTime.Year(), maxStatsTime.Year()))
		}
	}
	if from.After(*to) {
		d = append(d, fmt.Sprintf("from: %s is after to %s", from.Format(time.RFC3339Nano), to.Format(time.RFC3339Nano)))
	}
	switch {
	case *bucket < 0:
		d = append(d, fmt.Sprintf("bucket: %v must be positive", *bucket))
	case *bucket < MinStatsBucket:
		d = append(d, fmt.Sprintf("bucket: %v is shorter than %v", *bucket, MinStatsBucket))
	case to.Sub(*from)/(*bucket) > MaxStatsBuckets:
		d = append(d, fmt.Sprintf("bucket: %v makes more than %d buckets between from and to", *bucket, MaxStatsBuckets))
	}
	if len(d) > 0 {
		slices.Sort(d)
		return &Error{Code: CodeUnprocessable, Message: "invalid statistics window", Details: d}
	}
	return nil
}
