package inference

import (
	"encoding/binary"
	"fmt"
	"image"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/inference/internal/testenv"
	"github.com/gradeline/gradeline/inference/onnxpb"
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

// A row larger than a NATS message (3x300x300 FP32, 1.08 MB) is graded
// from the image bucket by a model that takes it: the scores are those its
// rule gives (10 * (G-R, R-G) of the mean colour), computed here.
func TestGradeTensorObjectOverAMessage(t *testing.T) {
	const side = 300
	dir := t.TempDir()
	g := onnxpb.Graph{
		Name: "redness-large",
		Nodes: []onnxpb.Node{
			{OpType: "ReduceMean", Inputs: []string{"image"}, Outputs: []string{"rgb"}, Attrs: []onnxpb.Attr{onnxpb.Ints("axes", 2, 3), onnxpb.Int("keepdims", 0)}},
			{OpType: "MatMul", Inputs: []string{"rgb", "w"}, Outputs: []string{"logits"}},
		},
		Initializers: []onnxpb.Tensor{{Name: "w", Dims: []int64{3, 2}, Float: []float32{-10, 10, 10, -10, 0, 0}}},
		Inputs: []onnxpb.ValueInfo{{Name: "image", ElemType: onnxpb.Float,
			Shape: []onnxpb.Dim{{Param: "batch"}, {Value: 3}, {Value: side}, {Value: side}}}},
		Outputs: []onnxpb.ValueInfo{{Name: "logits", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Param: "batch"}, {Value: 2}}}},
	}
	m := onnxpb.Model{ProducerName: "inference-test", Graph: g}
	writeModelDir(t, filepath.Join(dir, "health-large"), m.Marshal(), fmt.Sprintf(`name: health-large
input: {name: image, layout: NCHW, width: %d, height: %d, channels: 3, scale: 0.00392156862745098, mean: [0, 0, 0], std: [1, 1, 1]}
output: {name: logits, kind: logits}
labels: [healthy, unhealthy]
max_batch: 2
`, side, side))
	s, err := startStack(testenv.ORTLib(t), 20*time.Millisecond, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	for _, tc := range []struct {
		r, g, b float32
		label   string
	}{{0.8, 0.2, 0.1, "unhealthy"}, {0.1, 0.6, 0.3, "healthy"}} {
		x := make([]float32, 3*side*side)
		for i := range side * side {
			x[i], x[side*side+i], x[2*side*side+i] = tc.r, tc.g, tc.b
		}
		row := le32(x)
		if len(row) <= 1<<20 {
			t.Fatalf("a row of %d bytes fits a message", len(row))
		}
		id := s.submitTensor(t, &bus.TensorSubmitted{Model: "health-large", Input: "image", Datatype: bus.DatatypeFP32,
			Shape: []int64{3, side, side}, Object: s.put(t, row)})
		got := s.completed(t, id)
		z := float64(10 * (tc.r - tc.g))
		want := 1 / (1 + math.Exp(-2*z)) // softmax of (-z, z), unhealthy
		if got.Label != tc.label || math.Abs(got.Scores["unhealthy"]-want) > 1e-5 {
			t.Fatalf("colour %v %v %v: %s %v, want %s with unhealthy %v", tc.r, tc.g, tc.b, got.Label, got.Scores, tc.label, want)
		}
	}
}
