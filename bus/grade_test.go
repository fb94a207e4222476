package bus_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
)

// GradeFrom is the one conversion of grade events into a Grade: either half
// may be missing, and a result keeps the submission's fields it leaves empty.
func TestGradeFrom(t *testing.T) {
	at := time.Date(2026, 12, 2, 11, 0, 0, 0, time.UTC)
	sub := &bus.ImageSubmitted{Meta: bus.Meta{ID: "g1", Type: bus.TypeImageSubmitted, Time: at},
		ImageID: "img", Owner: "ada", Model: "fashion"}
	done := &bus.GradeCompleted{Meta: bus.Meta{ID: "r1", Type: bus.TypeGradeCompleted, Time: at.Add(time.Second)},
		GradeID: "g1", ImageID: "img", Owner: "ada", Model: "fashion", ModelVersion: "3", Label: "bag", Score: 0.75,
		Scores: map[string]float64{"bag": 0.75, "coat": 0.25}, InferenceMS: 1.5, BatchSize: 4}
	failed := &bus.GradeFailed{Meta: bus.Meta{ID: "r2", Type: bus.TypeGradeFailed, Time: at.Add(2 * time.Second)},
		GradeID: "g1", Reason: "cannot decode image"}
	completed := bus.Grade{ID: "g1", Status: bus.GradeStatusCompleted, ImageID: "img", Owner: "ada", Model: "fashion",
		ModelVersion: "3", Label: "bag", Score: 0.75, Scores: map[string]float64{"bag": 0.75, "coat": 0.25},
		InferenceMS: 1.5, BatchSize: 4, SubmittedAt: at, CompletedAt: at.Add(time.Second)}
	resultOnly := completed
	resultOnly.SubmittedAt = time.Time{}
	for _, tc := range []struct {
		name   string
		sub    *bus.ImageSubmitted
		result bus.Event
		want   bus.Grade
	}{
		{"submission alone is pending", sub, nil,
			bus.Grade{ID: "g1", Status: bus.GradeStatusPending, ImageID: "img", Owner: "ada", Model: "fashion", SubmittedAt: at}},
		{"completed", sub, done, completed},
		{"result before its submission", nil, done, resultOnly},
		{"a failure keeps what it does not carry", sub, failed,
			bus.Grade{ID: "g1", Status: bus.GradeStatusFailed, ImageID: "img", Owner: "ada", Model: "fashion",
				Reason: "cannot decode image", SubmittedAt: at, CompletedAt: at.Add(2 * time.Second)}},
		{"nothing", nil, nil, bus.Grade{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := bus.GradeFrom(tc.sub, tc.result); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
