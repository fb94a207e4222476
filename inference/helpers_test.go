package inference

import (
	"bytes"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/image/bmp"

	"github.com/gradeline/gradeline/inference/internal/datasets"
	"github.com/gradeline/gradeline/inference/internal/testenv"
	"github.com/gradeline/gradeline/inference/onnxpb"
)

var quiet = slog.New(slog.DiscardHandler)

// testRegistry loads the built-in models plus dirs.
func testRegistry(t testing.TB, dirs ...string) *Registry {
	t.Helper()
	r, err := LoadRegistry(RegistryOptions{Dirs: dirs, ORTLib: testenv.ORTLib(t), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func mustModel(t testing.TB, r *Registry, name string) *Model {
	t.Helper()
	m, ok := r.Model(name)
	if !ok {
		t.Fatalf("model %s not loaded (loaded %v, broken %v)", name, r.Names(), r.Broken())
	}
	return m
}

var (
	digitsOnce             sync.Once
	digitsTrain, digitsSet *datasets.Set
	digitsErr              error
)

// heldOutDigits returns the held-out scikit-learn digits.
func heldOutDigits(t testing.TB) *datasets.Set {
	t.Helper()
	dir := testenv.DatasetsDir(t)
	digitsOnce.Do(func() { digitsTrain, digitsSet, digitsErr = datasets.Digits(dir) })
	if digitsErr != nil {
		t.Fatal(digitsErr)
	}
	return digitsSet
}

// Encoders of the formats Go can write.
func encodePNG(t testing.TB, img image.Image) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t testing.TB, img image.Image, q int) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: q}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeGIF(t testing.TB, img *image.Gray) []byte {
	// A 256-level grey palette keeps grey images exact.
	pal := make(color.Palette, 256)
	for i := range pal {
		pal[i] = color.Gray{Y: uint8(i)}
	}
	p := image.NewPaletted(img.Rect, pal)
	copy(p.Pix, img.Pix)
	var b bytes.Buffer
	if err := gif.Encode(&b, p, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeBMP(t testing.TB, img image.Image) []byte {
	var b bytes.Buffer
	if err := bmp.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeHealthModel writes a user model into dir/name: RGB 224x224 NHWC,
// labels [healthy, unhealthy], logits output. It calls an image unhealthy
// when it is redder than it is green: logits = 10*(G-R, R-G) of the mean
// colour (a real, checkable rule, which a random model would not be).
func writeHealthModel(t testing.TB, dir, name string) {
	t.Helper()
	yaml := `name: ` + name + `
version: "3"
task: image-classification
input: {name: image, layout: NHWC, width: 224, height: 224, channels: 3, scale: 0.00392156862745098, mean: [0, 0, 0], std: [1, 1, 1]}
output: {name: logits, kind: logits}
labels: [healthy, unhealthy]
max_batch: 8
owner: the tests   # an extra key, allowed
`
	writeModelDir(t, filepath.Join(dir, name), healthONNX(false), yaml)
}

// healthONNX is the graph of the health model; flipped, it calls an image
// unhealthy when it is greener than it is red.
func healthONNX(flipped bool) []byte {
	w := []float32{-10, 10, 10, -10, 0, 0}
	if flipped {
		w = []float32{10, -10, -10, 10, 0, 0}
	}
	g := onnxpb.Graph{
		Name: "redness",
		Nodes: []onnxpb.Node{
			{OpType: "ReduceMean", Inputs: []string{"image"}, Outputs: []string{"rgb"}, Attrs: []onnxpb.Attr{onnxpb.Ints("axes", 1, 2), onnxpb.Int("keepdims", 0)}},
			{OpType: "MatMul", Inputs: []string{"rgb", "w"}, Outputs: []string{"z"}},
			{OpType: "Add", Inputs: []string{"z", "b"}, Outputs: []string{"logits"}},
		},
		Initializers: []onnxpb.Tensor{
			{Name: "w", Dims: []int64{3, 2}, Float: w},
			{Name: "b", Dims: []int64{2}, Float: []float32{0, 0}},
		},
		Inputs: []onnxpb.ValueInfo{{Name: "image", ElemType: onnxpb.Float,
			Shape: []onnxpb.Dim{{Param: "batch"}, {Value: 224}, {Value: 224}, {Value: 3}}}},
		Outputs: []onnxpb.ValueInfo{{Name: "logits", ElemType: onnxpb.Float,
			Shape: []onnxpb.Dim{{Param: "batch"}, {Value: 2}}}},
	}
	m := onnxpb.Model{ProducerName: "inference-test", Graph: g}
	return m.Marshal()
}

func writeModelDir(t testing.TB, dir string, onnx []byte, yaml string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if onnx != nil {
		if err := os.WriteFile(filepath.Join(dir, "model.onnx"), onnx, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if yaml != "" {
		if err := os.WriteFile(filepath.Join(dir, "model.yaml"), []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// meanRedGreen returns the mean red and green of an image (0..255): what
// the health model's rule looks at, computed independently of it.
func meanRedGreen(img image.Image) (r, g float64) {
	b := img.Bounds()
	var sr, sg float64
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			sr += float64(c.R)
			sg += float64(c.G)
		}
	}
	n := float64(b.Dx() * b.Dy())
	return sr / n, sg / n
}
