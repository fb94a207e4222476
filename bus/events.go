package bus

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Event type names. The subject of each is fixed in the init below.
const (
	TypeAnnotationCreated = "annotation.created"
	TypeAnnotationUpdated = "annotation.updated"
	TypeAnnotationDeleted = "annotation.deleted"
	TypeImageSharesSet    = "image.shares_set"
	TypeImageSubmitted    = "image.submitted"
	TypeGradeCompleted    = "grade.completed"
	TypeGradeFailed       = "grade.failed"
	TypeGradePending      = "grade.pending"
	TypeImageCatalogued   = "image.catalogued"
	TypeImageTagsSet      = "image.tags_set"
	TypeImageDeleted      = "image.deleted"
	TypeIrisMeasured      = "iris.measured"
	TypeDeadLetter        = "deadletter"
)

func init() {
	register(TypeAnnotationCreated, 1, SubjectAnnotationCreated, &AnnotationCreated{})
	register(TypeAnnotationUpdated, 1, SubjectAnnotationUpdated, &AnnotationUpdated{})
	register(TypeAnnotationDeleted, 1, SubjectAnnotationDeleted, &AnnotationDeleted{})
	register(TypeImageSharesSet, 1, SubjectImageSharesSet, &ImageSharesSet{})
	register(TypeImageSubmitted, 1, SubjectImageSubmitted, &ImageSubmitted{})
	register(TypeGradeCompleted, 1, SubjectGradeCompleted, &GradeCompleted{})
	register(TypeGradeFailed, 1, SubjectGradeFailed, &GradeFailed{})
	register(TypeGradePending, 1, SubjectGradePending, &GradePending{})
	register(TypeImageCatalogued, 1, SubjectImageCatalogued, &ImageCatalogued{})
	register(TypeImageTagsSet, 1, SubjectImageTagsSet, &ImageTagsSet{})
	register(TypeImageDeleted, 1, SubjectImageDeleted, &ImageDeleted{})
	register(TypeIrisMeasured, 1, SubjectIrisMeasured, &IrisMeasured{})
	register(TypeDeadLetter, 1, SubjectDeadLetterPrefix+"*", &DeadLetter{})
}

// AnnotationCreated: a user submitted an annotation. The event id is the
// annotation id.
type AnnotationCreated struct {
	Meta
	ImageID    string          `json:"image_id,omitempty"`
	Author     string          `json:"author"`
	Annotation json.RawMessage `json:"annotation"`
}

// Validate requires an author and an annotation that is a JSON object
// within the contract's bounds (ValidateAnnotation).
func (e *AnnotationCreated) Validate() error {
	if e.Author == "" {
		return errors.New("author is required")
	}
	if err := ValidateAnnotation(e.Annotation); err != nil {
		return fmt.Errorf("annotation: %w", err)
	}
	return nil
}

// AnnotationUpdated: the author replaced the body of an annotation.
type AnnotationUpdated struct {
	Meta
	AnnotationID string          `json:"annotation_id"`
	Author       string          `json:"author"`
	Annotation   json.RawMessage `json:"annotation"`
}

// Validate requires the annotation id, the author and a new body within
// the contract's bounds (ValidateAnnotation).
func (e *AnnotationUpdated) Validate() error {
	if e.AnnotationID == "" || e.Author == "" {
		return errors.New("annotation_id and author are required")
	}
	if err := ValidateAnnotation(e.Annotation); err != nil {
		return fmt.Errorf("annotation: %w", err)
	}
	return nil
}

// AnnotationDeleted: the author removed an annotation.
type AnnotationDeleted struct {
	Meta
	AnnotationID string `json:"annotation_id"`
	Author       string `json:"author"`
}

// Validate requires the annotation id and the author.
func (e *AnnotationDeleted) Validate() error {
	if e.AnnotationID == "" || e.Author == "" {
		return errors.New("annotation_id and author are required")
	}
	return nil
}

// MaxInlineImageBytes is the largest image an ImageSubmitted carries inline
// (ImageRef.Data) instead of in the object store: MNIST-sized images (a
// 28x28 PNG is a few hundred bytes) and small thumbnails. Inline bytes
// save the submission two object-store round trips (the edge's put,
// inference's get), which cost more than grading a small image. The bound
// keeps events under about 6 KiB in JSON: the IMAGES stream's size bound
// (limits retention, oldest dropped first) then still holds at least
// about 180,000 submissions, a backlog of minutes at full load, and a
// replay grades them from the stream alone.
const MaxInlineImageBytes = 4 << 10

// ImageRef locates image bytes (claim check): events carry the object name
// and digest, and the bytes themselves only when the image is small.
type ImageRef struct {
	// Object is the image's name in the object store bucket ImageBucket;
	// an image sent inline (Data) is named but not stored there.
	Object      string `json:"object"`
	SHA256      string `json:"sha256"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`
	// Data, when present, holds the image bytes themselves (base64 in
	// JSON, at most MaxInlineImageBytes): readers take them from here,
	// not from the object store. Absent in events from before it was
	// added and for larger or catalogued images, which are in the store.
	Data []byte `json:"data,omitempty"`
}

// Inline reports whether the event carries the bytes (Data).
func (r ImageRef) Inline() bool { return r.Data != nil }

func (r ImageRef) validate() error {
	if r.Object == "" || len(r.SHA256) != 64 {
		return errors.New("image object and sha256 are required")
	}
	if r.Data != nil {
		if len(r.Data) > MaxInlineImageBytes {
			return fmt.Errorf("inline image data of %d bytes exceeds %d", len(r.Data), MaxInlineImageBytes)
		}
		if int64(len(r.Data)) != r.Size {
			return fmt.Errorf("inline image data has %d bytes, size says %d", len(r.Data), r.Size)
		}
	}
	return nil
}

// ImageSubmitted: an image was submitted for grading with a model. The
// event id is the grade id the client polls.
type ImageSubmitted struct {
	Meta
	ImageID string `json:"image_id"`
	Owner   string `json:"owner"`
	Model   string `json:"model"`
	// ModelVersion is the version the client asked for ("" = the newest
	// served); the grade event names the version that served.
	ModelVersion string   `json:"model_version,omitempty"`
	Image        ImageRef `json:"image"`
	// Catalogued: ImageID is a catalogue image, so the grade is a model's
	// prediction on it (the grade event carries it on).
	Catalogued bool `json:"catalogued,omitempty"`
	// CallbackURL, when set, is where the edge POSTs the grade's result
	// once it is known (signed, retried; see ConsumerIngestCallbacks).
	// The grade event carries it on, so results without one cost the
	// deliverer nothing but an ack.
	CallbackURL string `json:"callback_url,omitempty"`
}

// Validate requires the image id, owner and model, a complete image
// reference (object name and sha256; inline data within
// MaxInlineImageBytes and of the stated size), and a callback URL, if
// any, of the allowed form (CheckCallbackURL). A catalogued image is
// never inline: it is graded from the store, where the catalogue keeps it.
func (e *ImageSubmitted) Validate() error {
	if e.ImageID == "" || e.Model == "" || e.Owner == "" {
		return errors.New("image_id, owner and model are required")
	}
	if e.CallbackURL != "" {
		if err := CheckCallbackURL(e.CallbackURL); err != nil {
			return fmt.Errorf("callback_url: %w", err)
		}
	}
	if e.Catalogued && e.Image.Inline() {
		return errors.New("image: a catalogued image is in the object store, not inline")
	}
	return e.Image.validate()
}

// GradeCompleted: the inference service graded an image. GradeID is the id
// of the ImageSubmitted event it answers.
type GradeCompleted struct {
	Meta
	GradeID      string             `json:"grade_id"`
	ImageID      string             `json:"image_id"`
	Owner        string             `json:"owner"`
	Model        string             `json:"model"`
	ModelVersion string             `json:"model_version"`
	Label        string             `json:"label"`
	Score        float64            `json:"score"`
	Scores       map[string]float64 `json:"scores"`
	InferenceMS  float64            `json:"inference_ms"`
	BatchSize    int                `json:"batch_size"`
	// Catalogued is the submission's: a prediction on a catalogue image.
	Catalogued bool `json:"catalogued,omitempty"`
	// CallbackURL is the submission's: where the result is delivered.
	CallbackURL string `json:"callback_url,omitempty"`
	// SubmittedAt is the submission's time: the result is a whole grade,
	// stored in one write. Zero in events from before it was added.
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
}

// Validate requires the grade id, model and label, and a score for the label.
func (e *GradeCompleted) Validate() error {
	if e.GradeID == "" || e.Model == "" || e.Label == "" {
		return errors.New("grade_id, model and label are required")
	}
	if _, ok := e.Scores[e.Label]; !ok {
		return errors.New("label has no score")
	}
	return nil
}

// GradeFailed: an image could not be graded (undecodable image, unknown
// model). It is final: such requests are not retried.
type GradeFailed struct {
	Meta
	GradeID string `json:"grade_id"`
	ImageID string `json:"image_id"`
	Owner   string `json:"owner"`
	Model   string `json:"model"`
	Reason  string `json:"reason"`
	// CallbackURL is the submission's: where the result is delivered.
	CallbackURL string `json:"callback_url,omitempty"`
	// SubmittedAt is as in GradeCompleted.
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
}

// Validate requires the grade id and the reason.
func (e *GradeFailed) Validate() error {
	if e.GradeID == "" || e.Reason == "" {
		return errors.New("grade_id and reason are required")
	}
	return nil
}

// GradePending: the edge answered a submission before its result was
// known (202: the client did not wait, or stopped waiting), so the grade
// history records it as pending until the result arrives. A submission
// answered with its result needs no such record: the result event carries
// the whole grade. The event id is its own; GradeID is the submission's.
type GradePending struct {
	Meta
	GradeID      string    `json:"grade_id"`
	ImageID      string    `json:"image_id"`
	Owner        string    `json:"owner"`
	Model        string    `json:"model"`
	ModelVersion string    `json:"model_version,omitempty"`
	SubmittedAt  time.Time `json:"submitted_at"`
}

// Validate requires the grade id, image id, owner, model and the time of
// the submission.
func (e *GradePending) Validate() error {
	if e.GradeID == "" || e.ImageID == "" || e.Owner == "" || e.Model == "" {
		return errors.New("grade_id, image_id, owner and model are required")
	}
	if e.SubmittedAt.IsZero() {
		return errors.New("submitted_at is required")
	}
	return nil
}

// PendingOf is the GradePending event of a submission.
func PendingOf(s *ImageSubmitted) *GradePending {
	return &GradePending{Meta: NewMeta(TypeGradePending), GradeID: s.ID, ImageID: s.ImageID, Owner: s.Owner,
		Model: s.Model, ModelVersion: s.ModelVersion, SubmittedAt: s.Time.UTC()}
}

// ImageCatalogued: a user added an image to the catalogue.
type ImageCatalogued struct {
	Meta
	ImageID  string   `json:"image_id"`
	Owner    string   `json:"owner"`
	Filename string   `json:"filename,omitempty"`
	Width    int      `json:"width"`
	Height   int      `json:"height"`
	Tags     []string `json:"tags"`
	Image    ImageRef `json:"image"`
}

// Validate requires the image id and owner and a complete image reference
// to the object store: a catalogue image is read back from there (by the
// edge, exports, grades of it), so it never travels inline.
func (e *ImageCatalogued) Validate() error {
	if e.ImageID == "" || e.Owner == "" {
		return errors.New("image_id and owner are required")
	}
	if e.Image.Inline() {
		return errors.New("image: a catalogue image is in the object store, not inline")
	}
	return e.Image.validate()
}

// ImageTagsSet: the owner replaced the tags of an image.
type ImageTagsSet struct {
	Meta
	ImageID string   `json:"image_id"`
	Owner   string   `json:"owner"`
	Tags    []string `json:"tags"`
}

// Validate requires the image id and owner.
func (e *ImageTagsSet) Validate() error {
	if e.ImageID == "" || e.Owner == "" {
		return errors.New("image_id and owner are required")
	}
	return nil
}

// ImageSharesSet: the owner replaced the list of users an image is
// shared with. They may see the image and its annotations, and annotate it.
type ImageSharesSet struct {
	Meta
	ImageID string   `json:"image_id"`
	Owner   string   `json:"owner"`
	Shares  []string `json:"shares"`
}

// Validate requires the image id and owner, and at most MaxShares users.
func (e *ImageSharesSet) Validate() error {
	if e.ImageID == "" || e.Owner == "" {
		return errors.New("image_id and owner are required")
	}
	if len(e.Shares) > MaxShares {
		return fmt.Errorf("at most %d shares", MaxShares)
	}
	return nil
}

// MaxShares bounds the users one image is shared with.
const MaxShares = 100

// ImageDeleted: the owner removed an image from the catalogue.
type ImageDeleted struct {
	Meta
	ImageID string `json:"image_id"`
	Owner   string `json:"owner"`
}

// Validate requires the image id and owner.
func (e *ImageDeleted) Validate() error {
	if e.ImageID == "" || e.Owner == "" {
		return errors.New("image_id and owner are required")
	}
	return nil
}

// IrisRow is one iris flower measurement in centimetres.
type IrisRow struct {
	SepalLength float64 `json:"sepal_length"`
	SepalWidth  float64 `json:"sepal_width"`
	PetalLength float64 `json:"petal_length"`
	PetalWidth  float64 `json:"petal_width"`
	Species     string  `json:"species"`
}

// IrisSpecies are the species the dataset knows.
var IrisSpecies = []string{"setosa", "versicolor", "virginica"}

// Validate checks that measurements are finite, non-negative and the species known.
func (r IrisRow) Validate() error {
	for _, v := range []float64{r.SepalLength, r.SepalWidth, r.PetalLength, r.PetalWidth} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > 1000 {
			return fmt.Errorf("measurement %v out of range [0, 1000]", v)
		}
	}
	for _, s := range IrisSpecies {
		if r.Species == s {
			return nil
		}
	}
	return fmt.Errorf("unknown species %q", r.Species)
}

// MaxIrisRows bounds the rows of one IrisMeasured event.
const MaxIrisRows = 10000

// IrisMeasured carries a batch of measurements. A row's identity is
// (event id, index), which makes a redelivered batch idempotent.
type IrisMeasured struct {
	Meta
	Source string    `json:"source,omitempty"`
	Rows   []IrisRow `json:"rows"`
}

// Validate requires 1..MaxIrisRows rows, each valid (IrisRow.Validate).
func (e *IrisMeasured) Validate() error {
	if len(e.Rows) == 0 || len(e.Rows) > MaxIrisRows {
		return fmt.Errorf("rows must hold 1..%d measurements", MaxIrisRows)
	}
	for i, r := range e.Rows {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("rows[%d]: %w", i, err)
		}
	}
	return nil
}

// DeadLetter records a message a consumer gave up on, with the reason.
type DeadLetter struct {
	Meta
	Stream     string            `json:"stream"`
	Consumer   string            `json:"consumer"`
	Subject    string            `json:"subject"`
	Sequence   uint64            `json:"sequence"`
	Deliveries uint64            `json:"deliveries"`
	Reason     string            `json:"reason"`
	Headers    map[string]string `json:"headers,omitempty"`
	Data       []byte            `json:"data"`
}

// Validate requires the reason.
func (e *DeadLetter) Validate() error {
	if e.Reason == "" {
		return errors.New("reason is required")
	}
	return nil
}

// TypeTensorSubmitted names TensorSubmitted events.
const TypeTensorSubmitted = "tensor.submitted"

func init() {
	register(TypeTensorSubmitted, 1, SubjectTensorSubmitted, &TensorSubmitted{})
}

// Tensor datatypes a TensorSubmitted may carry (the Open Inference
// Protocol's names).
const (
	DatatypeFP32 = "FP32"
)

// MaxTensorBytes bounds the data a TensorSubmitted carries inline: the
// event travels base64 in JSON, so it must stay below NATS's default 1 MiB
// message limit. It holds one 224x224 RGB image as FP32; a larger row
// travels in the image bucket (TensorSubmitted.Object).
const MaxTensorBytes = 640 << 10

// MaxTensorObjectBytes bounds the data of a row held in the image bucket
// (far above any edge's body limit: a bound on what a reader allocates).
const MaxTensorObjectBytes = 256 << 20

// TensorSubmitted: one preprocessed input (one row of the batch of an Open
// Inference Protocol request) was submitted for grading with a model. It is
// the tensor twin of ImageSubmitted: the event id is the grade id, and the
// result is a GradeCompleted or GradeFailed like an image's, so tensors are
// graded, stored, counted and replayed as every grade is.
type TensorSubmitted struct {
	Meta
	Owner string `json:"owner"`
	Model string `json:"model"`
	// ModelVersion is the version the client asked for ("" = the one
	// served); inference fails the grade when it serves another.
	ModelVersion string `json:"model_version,omitempty"`
	// RequestID is the id of the inference request (its "id"), if any.
	RequestID string `json:"request_id,omitempty"`
	// Input names the model input the tensor feeds.
	Input string `json:"input"`
	// Datatype of the elements: DatatypeFP32.
	Datatype string `json:"datatype"`
	// Shape of the row, without the batch dimension.
	Shape []int64 `json:"shape"`
	// Data holds the elements row-major, little-endian (base64 in JSON),
	// at most MaxTensorBytes; empty when Object holds them.
	Data []byte `json:"data,omitempty"`
	// Object locates a larger row's data (the bytes Data would hold) in
	// the image bucket: the claim check of an uploaded image, for tensors.
	Object ImageRef `json:"object,omitzero"`
}

// Validate requires owner, model and input, and an FP32 tensor whose data
// (Data within MaxTensorBytes, or an Object of at most
// MaxTensorObjectBytes with its digest) holds exactly the elements of
// its shape.
func (e *TensorSubmitted) Validate() error {
	if e.Owner == "" || e.Model == "" || e.Input == "" {
		return errors.New("owner, model and input are required")
	}
	if e.Datatype != DatatypeFP32 {
		return fmt.Errorf("datatype %q: want %s", e.Datatype, DatatypeFP32)
	}
	size, limit := int64(len(e.Data)), int64(MaxTensorBytes)
	switch {
	case e.Object.Object != "" && len(e.Data) > 0:
		return errors.New("data and object are both given: one holds the elements")
	case e.Object.Object != "" || e.Object.SHA256 != "" || e.Object.Size != 0 || len(e.Object.Data) > 0:
		if err := e.Object.validate(); err != nil {
			return fmt.Errorf("object: %w", err)
		}
		if len(e.Object.Data) > 0 {
			return errors.New("object: its bytes are in the bucket, not in the event")
		}
		size, limit = e.Object.Size, MaxTensorObjectBytes
	}
	if size > limit {
		return fmt.Errorf("data of %d bytes exceeds %d", size, limit)
	}
	if len(e.Shape) == 0 {
		return errors.New("shape is required")
	}
	n := int64(1)
	for _, d := range e.Shape {
		if d < 1 || d > limit {
			return fmt.Errorf("shape %v: every dimension must be in 1..%d", e.Shape, limit)
		}
		n *= d
		if n > limit {
			return fmt.Errorf("shape %v holds more than %d elements", e.Shape, limit)
		}
	}
	if size != 4*n {
		return fmt.Errorf("data has %d bytes; shape %v of FP32 needs %d", size, e.Shape, 4*n)
	}
	return nil
}
