package bus

import "errors"

// TypeGradeShadow names GradeShadow events.
const TypeGradeShadow = "grade.shadow"

func init() {
	register(TypeGradeShadow, 1, SubjectGradeShadow, &GradeShadow{})
}

// GradeShadow: a stored image graded again by another model version
// (`gradeline regrade`) beside the serving one. Of is the grade it re-ran
// and Run the regrade run; the grade itself never changes. A failed
// shadow grade has a Reason and no Label.
type GradeShadow struct {
	Meta
	Run          string             `json:"run"`
	Of           string             `json:"of"`
	ImageID      string             `json:"image_id"`
	Owner        string             `json:"owner"`
	Model        string             `json:"model"`
	ModelVersion string             `json:"model_version"`
	Label        string             `json:"label,omitempty"`
	Score        float64            `json:"score,omitempty"`
	Scores       map[string]float64 `json:"scores,omitempty"`
	Reason       string             `json:"reason,omitempty"`
}

// Validate requires the run, the grade re-ran, the owner and the model
// version, and a label or a reason.
func (e *GradeShadow) Validate() error {
	if e.Run == "" || e.Of == "" || e.Owner == "" || e.Model == "" || e.ModelVersion == "" {
		return errors.New("run, of, owner, model and model_version are required")
	}
	if (e.Label == "") == (e.Reason == "") {
		return errors.New("one of label and reason is required")
	}
	return nil
}

// RegradeAgreementQuery compares, over Owner's grades of Model, the label
// of version A with the label of version B of the same grade, each either
// served or from a regrade run (SvcStatsRegrade).
type RegradeAgreementQuery struct {
	Owner string `json:"owner"`
	Model string `json:"model"`
	A     string `json:"a"`
	B     string `json:"b"`
}

// RegradeAgreement is the comparison of two model versions on the same
// grades: how many both labelled, how many the same, and per label of A
// how many kept it and how many changed, with the confusion counts.
type RegradeAgreement struct {
	A         string        `json:"a"`
	B         string        `json:"b"`
	Compared  uint64        `json:"compared"`
	Agree     uint64        `json:"agree"`
	Rate      float64       `json:"rate"`
	PerLabel  []LabelChange `json:"per_label"`
	Confusion []LabelPair   `json:"confusion"`
}

// LabelPair counts the grades version A labelled A and version B labelled B.
type LabelPair struct {
	A     string `json:"a"`
	B     string `json:"b"`
	Count uint64 `json:"count"`
}

// LabelChange counts, for the grades version A gave Label, how many
// version B kept and how many it changed.
type LabelChange struct {
	Label   string `json:"label"`
	Agree   uint64 `json:"agree"`
	Changed uint64 `json:"changed"`
}
