package onnxpb_test

import (
	"math"
	"testing"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/gradeline/gradeline/inference/internal/testenv"
	"github.com/gradeline/gradeline/inference/onnxpb"
)

func initORT(t *testing.T) {
	t.Helper()
	if ort.IsInitialized() {
		return
	}
	ort.SetSharedLibraryPath(testenv.ORTLib(t))
	if err := ort.InitializeEnvironment(); err != nil {
		t.Fatalf("ONNX Runtime: %v", err)
	}
}

// run loads model bytes into ONNX Runtime and runs it on one float input.
func run(t *testing.T, m *onnxpb.Model, shape []int64, in []float32) ([]float32, ort.Shape) {
	t.Helper()
	data := m.Marshal()
	s, err := ort.NewDynamicAdvancedSessionWithONNXData(data, []string{m.Graph.Inputs[0].Name}, []string{m.Graph.Outputs[0].Name}, nil)
	if err != nil {
		t.Fatalf("ONNX Runtime rejects the model: %v", err)
	}
	defer s.Destroy()
	x, err := ort.NewTensor(ort.NewShape(shape...), in)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Destroy()
	out := []ort.Value{nil}
	if err := s.Run([]ort.Value{x}, out); err != nil {
		t.Fatalf("run: %v", err)
	}
	defer out[0].Destroy()
	y := out[0].(*ort.Tensor[float32])
	return append([]float32(nil), y.GetData()...), y.GetShape()
}

func TestModelsRunInONNXRuntime(t *testing.T) {
	initORT(t)
	batch := []onnxpb.Dim{{Param: "N"}}
	tests := []struct {
		name      string
		graph     onnxpb.Graph
		shape     []int64
		in        []float32
		want      []float32
		wantShape []int64
	}{{
		// Gemm with transB (an INT attribute) and float initializers.
		name: "gemm",
		graph: onnxpb.Graph{
			Nodes: []onnxpb.Node{{OpType: "Gemm", Inputs: []string{"x", "w", "b"}, Outputs: []string{"y"}, Attrs: []onnxpb.Attr{onnxpb.Int("transB", 1)}}},
			Initializers: []onnxpb.Tensor{
				{Name: "w", Dims: []int64{2, 3}, Float: []float32{1, 2, 3, -1, 0, 1}},
				{Name: "b", Dims: []int64{2}, Float: []float32{0.5, -0.5}},
			},
			Inputs:  []onnxpb.ValueInfo{{Name: "x", ElemType: onnxpb.Float, Shape: append(batch, onnxpb.Dim{Value: 3})}},
			Outputs: []onnxpb.ValueInfo{{Name: "y", ElemType: onnxpb.Float, Shape: append(batch, onnxpb.Dim{Value: 2})}},
		},
		shape: []int64{2, 3}, in: []float32{1, 1, 1, 0, 1, 2},
		want:      []float32{6.5, -0.5, 8.5, 1.5},
		wantShape: []int64{2, 2},
	}, {
		// ReduceMean with INTS axes, then LeakyRelu with a FLOAT attribute.
		name: "reduce-mean-leaky-relu",
		graph: onnxpb.Graph{
			Nodes: []onnxpb.Node{
				{OpType: "ReduceMean", Inputs: []string{"x"}, Outputs: []string{"m"}, Attrs: []onnxpb.Attr{onnxpb.Ints("axes", 1, 2), onnxpb.Int("keepdims", 0)}},
				{OpType: "LeakyRelu", Inputs: []string{"m"}, Outputs: []string{"y"}, Attrs: []onnxpb.Attr{onnxpb.FloatAttr("alpha", 0.5)}},
			},
			Inputs:  []onnxpb.ValueInfo{{Name: "x", ElemType: onnxpb.Float, Shape: append(batch, onnxpb.Dim{Value: 2}, onnxpb.Dim{Value: 2}, onnxpb.Dim{Value: 2})}},
			Outputs: []onnxpb.ValueInfo{{Name: "y", ElemType: onnxpb.Float, Shape: append(batch, onnxpb.Dim{Value: 2})}},
		},
		shape: []int64{1, 2, 2, 2}, in: []float32{1, -2, 3, -4, 5, -6, 7, -8},
		want:      []float32{4, -2.5},
		wantShape: []int64{1, 2},
	}, {
		// Reshape with an INT64 initializer, then Softmax.
		name: "reshape-softmax",
		graph: onnxpb.Graph{
			Nodes: []onnxpb.Node{
				{OpType: "Reshape", Inputs: []string{"x", "shape"}, Outputs: []string{"r"}},
				{OpType: "Softmax", Inputs: []string{"r"}, Outputs: []string{"y"}, Attrs: []onnxpb.Attr{onnxpb.Int("axis", 1)}},
			},
			Initializers: []onnxpb.Tensor{{Name: "shape", Dims: []int64{2}, Int64: []int64{-1, 2}}},
			Inputs:       []onnxpb.ValueInfo{{Name: "x", ElemType: onnxpb.Float, Shape: append(batch, onnxpb.Dim{Value: 1}, onnxpb.Dim{Value: 2})}},
			Outputs:      []onnxpb.ValueInfo{{Name: "y", ElemType: onnxpb.Float, Shape: append(batch, onnxpb.Dim{Value: 2})}},
		},
		shape: []int64{1, 1, 2}, in: []float32{0, float32(math.Log(3))},
		want:      []float32{0.25, 0.75},
		wantShape: []int64{1, 2},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &onnxpb.Model{ProducerName: "onnxpb-test", Graph: tc.graph, Metadata: map[string]string{"b": "2", "a": "1"}}
			got, shape := run(t, m, tc.shape, tc.in)
			if !shape.Equals(ort.NewShape(tc.wantShape...)) {
				t.Fatalf("output shape %v, want %v", shape, tc.wantShape)
			}
			for i := range tc.want {
				if math.Abs(float64(got[i]-tc.want[i])) > 1e-5 {
					t.Fatalf("output %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestMetadataIsReadBack(t *testing.T) {
	initORT(t)
	m := &onnxpb.Model{
		ProducerName: "onnxpb-test", ModelVersion: 7, DocString: "a test model",
		Metadata: map[string]string{"labels": "a,b"},
		Graph: onnxpb.Graph{
			Name:    "identity",
			Nodes:   []onnxpb.Node{{OpType: "Identity", Inputs: []string{"x"}, Outputs: []string{"y"}}},
			Inputs:  []onnxpb.ValueInfo{{Name: "x", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Value: 1}}}},
			Outputs: []onnxpb.ValueInfo{{Name: "y", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Value: 1}}}},
		},
	}
	md, err := ort.GetModelMetadataWithONNXData(m.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	defer md.Destroy()
	if v, _ := md.GetVersion(); v != 7 {
		t.Errorf("model version %d, want 7", v)
	}
	if p, _ := md.GetProducerName(); p != "onnxpb-test" {
		t.Errorf("producer %q", p)
	}
	if g, _ := md.GetGraphName(); g != "identity" {
		t.Errorf("graph name %q", g)
	}
	if v, ok, _ := md.LookupCustomMetadataMap("labels"); !ok || v != "a,b" {
		t.Errorf("metadata labels = %q, %v", v, ok)
	}
	if s := m.Marshal(); string(s) != string(m.Marshal()) {
		t.Error("Marshal is not deterministic")
	}
}
