package inference

import (
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

// submitTensor publishes a TensorSubmitted event and returns its id.
func (s *stack) submitTensor(t testing.TB, ev *bus.TensorSubmitted) string {
	t.Helper()
	ev.Meta = bus.NewMeta(bus.TypeTensorSubmitted)
	if ev.Owner == "" {
		ev.Owner = "tester"
	}
	if _, err := bus.Publish(t.Context(), s.js, ev); err != nil {
		t.Fatal(err)
	}
	return ev.ID
}

func le32(v []float32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

// A tensor submitted through the bus is graded as the image it was made
// from: the same scores, in the same kind of event; a tensor that does not
// fit its model fails its grade with the reason.
func TestGradeSubmittedTensors(t *testing.T) {
	s := getStack(t)
	reg := testRegistry(t)
	digits := mustModel(t, reg, "digits")
	img := encodeJPEG(t, heldOutDigits(t).Image(0), 90)
	x, err := digits.Preprocess(img)
	if err != nil {
		t.Fatal(err)
	}
	byImage := s.submit(t, "digits", s.put(t, img))
	byTensor := s.submitTensor(t, &bus.TensorSubmitted{Model: "digits", ModelVersion: "1", RequestID: "r1", Input: "pixels",
		Datatype: bus.DatatypeFP32, Shape: []int64{1, 8, 8}, Data: le32(x)})
	want, got := s.completed(t, byImage), s.completed(t, byTensor)
	checkScores(t, got, digits.Labels)
	if got.Label != want.Label || got.Model != "digits" || got.ModelVersion != "1" || got.Owner != "tester" || got.GradeID != byTensor {
		t.Fatalf("tensor grade %+v, image grade %+v", got, want)
	}
	for l, p := range want.Scores {
		if math.Abs(got.Scores[l]-p) > 1e-6 {
			t.Fatalf("label %s: tensor %v, image %v", l, got.Scores[l], p)
		}
	}

	nan := append([]float32{float32(math.NaN())}, x[1:]...)
	for _, tc := range []struct {
		name string
		ev   bus.TensorSubmitted
		want string
	}{
		{"unknown model", bus.TensorSubmitted{Model: "no-such-model", Input: "pixels", Datatype: "FP32", Shape: []int64{1, 8, 8}, Data: le32(x)}, `unknown model "no-such-model"`},
		{"other version", bus.TensorSubmitted{Model: "digits", ModelVersion: "2", Input: "pixels", Datatype: "FP32", Shape: []int64{1, 8, 8}, Data: le32(x)}, `no version "2"`},
		{"other input", bus.TensorSubmitted{Model: "digits", Input: "image", Datatype: "FP32", Shape: []int64{1, 8, 8}, Data: le32(x)}, `no input "image"`},
		{"other shape", bus.TensorSubmitted{Model: "digits", Input: "pixels", Datatype: "FP32", Shape: []int64{8, 8, 1}, Data: le32(x)}, "shape [8 8 1]"},
		{"not finite", bus.TensorSubmitted{Model: "digits", Input: "pixels", Datatype: "FP32", Shape: []int64{1, 8, 8}, Data: le32(nan)}, "finite"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := tc.ev
			f := s.failed(t, s.submitTensor(t, &ev))
			if !strings.Contains(f.Reason, tc.want) || f.Model != tc.ev.Model || f.Owner != "tester" {
				t.Fatalf("failure %+v, want a reason with %q", f, tc.want)
			}
		})
	}
	if c := s.counter(t, "gradeline_inference_grades_failed_total", failBadTensor, 3); c < 3 {
		t.Errorf("bad tensor counter %v, want >= 3", c)
	}
}
