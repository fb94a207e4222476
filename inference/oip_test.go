package inference

import (
	"encoding/binary"
	"image"
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

// A row too large for an event travels in the image bucket: graded as the
// same row inline, with the same scores; an object that is missing,
// corrupt or larger than the model's input fails the grade with the
// reason, as a bad image does.
func TestGradeTensorObjects(t *testing.T) {
	s := getStack(t)
	dir := t.TempDir()
	writeHealthModel(t, dir, "retina-health")
	m := mustModel(t, testRegistry(t, dir), "retina-health")
	// A reddish photograph-sized input, preprocessed by the model itself.
	img := image.NewNRGBA(image.Rect(0, 0, 300, 200))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = uint8(150+i%100), uint8(i%90), uint8(i%7), 255
	}
	x, err := m.Preprocess(encodePNG(t, img))
	if err != nil {
		t.Fatal(err)
	}
	row := le32(x)
	shape := []int64{224, 224, 3}
	byEvent := s.submitTensor(t, &bus.TensorSubmitted{Model: "retina-health", Input: "image", Datatype: bus.DatatypeFP32, Shape: shape, Data: row})
	byObject := s.submitTensor(t, &bus.TensorSubmitted{Model: "retina-health", Input: "image", Datatype: bus.DatatypeFP32, Shape: shape, Object: s.put(t, row)})
	want, got := s.completed(t, byEvent), s.completed(t, byObject)
	checkScores(t, got, m.Labels)
	if got.Label != want.Label || got.Label != "unhealthy" || got.GradeID != byObject {
		t.Fatalf("by object %+v, inline %+v", got, want)
	}
	for l, p := range want.Scores {
		if math.Abs(got.Scores[l]-p) > 1e-6 {
			t.Fatalf("label %s: by object %v, inline %v", l, got.Scores[l], p)
		}
	}

	missing := s.put(t, row)
	missing.Object += "-gone"
	corrupt := s.put(t, row)
	corrupt.SHA256 = strings.Repeat("0", 64)
	// Twice the model's input, its shape claiming as much: more than is read.
	big := append(append([]byte(nil), row...), row...)
	for _, tc := range []struct {
		name  string
		ref   bus.ImageRef
		shape []int64
		want  string
	}{
		{"missing", missing, shape, "not found"},
		{"corrupt", corrupt, shape, "sha256"},
		{"larger than the input", s.put(t, big), []int64{448, 224, 3}, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := s.failed(t, s.submitTensor(t, &bus.TensorSubmitted{Model: "retina-health", Input: "image", Datatype: bus.DatatypeFP32, Shape: tc.shape, Object: tc.ref}))
			if !strings.Contains(f.Reason, tc.want) {
				t.Fatalf("failure %q, want one naming %q", f.Reason, tc.want)
			}
		})
	}
}
