package mlp

import (
	"math"
	"math/rand/v2"
	"testing"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/gradeline/gradeline/inference/internal/testenv"
	"github.com/gradeline/gradeline/inference/onnxpb"
)

// blobs is a toy problem: three classes around three centres in 6-D.
func blobs(n int, seed uint64) ([][]float32, []int) {
	r := rand.New(rand.NewPCG(seed, 2))
	xs, ys := make([][]float32, n), make([]int, n)
	for i := range n {
		c := i % 3
		x := make([]float32, 6)
		for j := range x {
			x[j] = float32(r.NormFloat64() * 0.5)
		}
		x[2*c] += 2
		xs[i], ys[i] = x, c
	}
	return xs, ys
}

func TestTrainLearnsAndIsDeterministic(t *testing.T) {
	xs, ys := blobs(600, 1)
	train := func() (*Net, []float64) {
		n := New(6, 8, 3, 7)
		var losses []float64
		n.Train(xs, ys, Options{Epochs: 20, BatchSize: 16, LR: 1e-2, Seed: 3, Progress: func(_ int, l float64) { losses = append(losses, l) }})
		return n, losses
	}
	a, losses := train()
	if len(losses) != 20 || losses[19] >= losses[0]/2 {
		t.Errorf("loss did not fall: %v", losses)
	}
	tx, ty := blobs(300, 9)
	correct := 0
	for i := range tx {
		if a.Predict(tx[i]) == ty[i] {
			correct++
		}
	}
	if acc := float64(correct) / 300; acc < 0.95 {
		t.Errorf("accuracy %.3f on held-out blobs", acc)
	}
	b, _ := train()
	for i := range a.W1 {
		if a.W1[i] != b.W1[i] {
			t.Fatal("two trainings with one seed differ")
		}
	}
}

// The exported ONNX graph computes what Forward computes.
func TestGraphMatchesForward(t *testing.T) {
	ort.SetSharedLibraryPath(testenv.ORTLib(t))
	if err := ort.InitializeEnvironment(); err != nil {
		t.Fatal(err)
	}
	defer ort.DestroyEnvironment()
	n := New(6, 8, 3, 5)
	xs, ys := blobs(90, 4)
	n.Train(xs, ys, Options{Epochs: 3, BatchSize: 10, LR: 1e-2, Seed: 1})
	m := onnxpb.Model{Graph: n.Graph("pixels", "probabilities", 1, 2, 3)}
	s, err := ort.NewDynamicAdvancedSessionWithONNXData(m.Marshal(), []string{"pixels"}, []string{"probabilities"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	flat := make([]float32, 0, 6*len(xs))
	for _, x := range xs {
		flat = append(flat, x...)
	}
	in, err := ort.NewTensor(ort.NewShape(int64(len(xs)), 1, 2, 3), flat)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Destroy()
	out := []ort.Value{nil}
	if err := s.Run([]ort.Value{in}, out); err != nil {
		t.Fatal(err)
	}
	defer out[0].Destroy()
	got := out[0].(*ort.Tensor[float32]).GetData()
	h, p := make([]float32, 8), make([]float32, 3)
	for i, x := range xs {
		n.Forward(x, h, p)
		for k := range p {
			if math.Abs(float64(got[3*i+k]-p[k])) > 1e-5 {
				t.Fatalf("sample %d: ORT %v, Forward %v", i, got[3*i:3*i+3], p)
			}
		}
	}
}
