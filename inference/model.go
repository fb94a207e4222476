package inference

import (
	"errors"
	"fmt"
	"image"
	"math"
	"sync"
	"sync/atomic"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/gradeline/gradeline/bus"
)

// Model is a loaded model: its manifest and one ONNX Runtime session,
// created once and reused for every batch (ORT sessions are safe for
// concurrent Run calls).
type Model struct {
	Manifest
	// Source tells where the model was loaded from ("builtin" or a path).
	Source string
	// LoadedAt is when this version's session was created and checked.
	LoadedAt time.Time

	session *ort.DynamicAdvancedSession
	pre     *preprocessor
	// fixedBatch is the batch size the graph requires (0 = dynamic); short
	// chunks are padded to it.
	fixedBatch int
	// outLen is the number of output values per image (len(Labels)).
	outLen int

	// fingerprint identifies the files the version was loaded from, so
	// the watcher reloads it only when they change.
	fingerprint string
	// refs counts the batches holding this version (acquire, release); a
	// version swapped out (retired) is closed once none holds it, so
	// batches in flight finish on the session they started with.
	refs      atomic.Int64
	retired   atomic.Bool
	closeOnce sync.Once
}

// acquire holds the version for a batch; the registry calls it under its
// lock, so a retired version is never acquired.
func (m *Model) acquire() { m.refs.Add(1) }

// Release ends the hold of a batch (Registry.Acquire): the last release of
// a version the registry retired closes its session.
func (m *Model) Release() {
	if m.refs.Add(-1) == 0 && m.retired.Load() {
		m.closeOnce.Do(func() { _ = m.Close() })
	}
}

// retire closes the session now or after the last batch holding it.
func (m *Model) retire() {
	m.retired.Store(true)
	if m.refs.Load() == 0 {
		m.closeOnce.Do(func() { _ = m.Close() })
	}
}

// warmUp runs one inference on a zero input of the declared shape: a
// version is swapped in only when its session runs and its output has one
// score per label (Run checks the count).
func (m *Model) warmUp() error {
	if _, err := m.Run([][]float32{make([]float32, m.pre.size())}); err != nil {
		return fmt.Errorf("warm-up inference on a zero input: %w", err)
	}
	return nil
}

// Prediction is the grade of one image.
type Prediction struct {
	// Label is the label with the highest score, Index its position.
	Label string
	Index int
	// Scores holds one score per label, in the order of Labels.
	Scores []float32
	// BatchSize is the number of images of the ONNX Runtime call.
	BatchSize int
	// Inference is the duration of that call.
	Inference time.Duration
	// Output is the time the scores of that call took to compute from
	// its output tensor.
	Output time.Duration
	// Err is set when this image could not be graded (ErrUndecodable).
	Err error
}

// ScoreMap returns the scores keyed by label.
func (m *Model) ScoreMap(p Prediction) map[string]float64 {
	out := make(map[string]float64, len(p.Scores))
	for i, s := range p.Scores {
		out[m.Labels[i]] = float64(s)
	}
	return out
}

// Info describes the model for clients.
func (m *Model) Info() bus.ModelInfo {
	return bus.ModelInfo{
		Name:     m.Name,
		Version:  m.Version,
		Task:     m.Task,
		Labels:   append([]string(nil), m.Labels...),
		Input:    bus.ModelInput{Name: m.Input.Name, Layout: m.Input.Layout, Width: m.Input.Width, Height: m.Input.Height, Channels: m.Input.Channels},
		MaxBatch: m.MaxBatch,
		Accuracy: m.Accuracy,
		Output:   bus.ModelOutput{Name: m.Output.Name, Kind: m.Output.Kind},
	}
}

// InputSize is the number of float32 values of one preprocessed image.
func (m *Model) InputSize() int { return m.pre.size() }

// Preprocess decodes image bytes (JPEG, PNG, GIF, WebP, BMP; EXIF
// orientation honoured) into the model's input. Errors wrap ErrUndecodable.
func (m *Model) Preprocess(data []byte) ([]float32, error) {
	dst := make([]float32, m.pre.size())
	if err := m.pre.bytes(data, dst); err != nil {
		return nil, err
	}
	return dst, nil
}

// PreprocessImage turns an already decoded image into the model's input.
func (m *Model) PreprocessImage(img image.Image) []float32 {
	dst := make([]float32, m.pre.size())
	m.pre.image(img, 1, dst)
	return dst
}

// Run makes one ONNX Runtime call on preprocessed inputs (at most MaxBatch,
// each InputSize values) and turns the output into scores per label.
func (m *Model) Run(inputs [][]float32) ([]Prediction, error) {
	n := len(inputs)
	if n == 0 {
		return nil, nil
	}
	if n > m.MaxBatch {
		return nil, fmt.Errorf("inference: %s: batch of %d exceeds max_batch %d", m.Name, n, m.MaxBatch)
	}
	size := m.pre.size()
	rows := n
	if m.fixedBatch > 0 {
		rows = m.fixedBatch
	}
	data := make([]float32, rows*size)
	for i, in := range inputs {
		if len(in) != size {
			return nil, fmt.Errorf("inference: %s: input %d has %d values, want %d", m.Name, i, len(in), size)
		}
		copy(data[i*size:], in)
	}
	in := m.Input
	shape := ort.NewShape(int64(rows), int64(in.Channels), int64(in.Height), int64(in.Width))
	if in.Layout == "NHWC" {
		shape = ort.NewShape(int64(rows), int64(in.Height), int64(in.Width), int64(in.Channels))
	}
	t, err := ort.NewTensor(shape, data)
	if err != nil {
		return nil, fmt.Errorf("inference: %s: input tensor: %w", m.Name, err)
	}
	defer t.Destroy()
	outputs := []ort.Value{nil}
	start := time.Now()
	err = m.session.Run([]ort.Value{t}, outputs)
	took := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("inference: %s: run: %w", m.Name, err)
	}
	defer outputs[0].Destroy()
	ot, ok := outputs[0].(*ort.Tensor[float32])
	if !ok {
		return nil, fmt.Errorf("inference: %s: output %s is %T, want a float tensor", m.Name, m.Output.Name, outputs[0])
	}
	out := ot.GetData()
	outStart := time.Now()
	if len(out) != rows*m.outLen {
		return nil, fmt.Errorf("inference: %s: output %s has %d values for %d images, want %d per image", m.Name, m.Output.Name, len(out), rows, m.outLen)
	}
	preds := make([]Prediction, n)
	for i := range n {
		scores := make([]float32, m.outLen)
		copy(scores, out[i*m.outLen:])
		m.scores(scores)
		best := 0
		for j, s := range scores {
			if s > scores[best] {
				best = j
			}
		}
		preds[i] = Prediction{Label: m.Labels[best], Index: best, Scores: scores, BatchSize: n, Inference: took}
	}
	outTook := time.Since(outStart)
	for i := range preds {
		preds[i].Output = outTook
	}
	return preds, nil
}

// scores turns raw outputs into scores per the manifest's output kind.
func (m *Model) scores(v []float32) {
	switch m.Output.Kind {
	case OutputLogits:
		mx := v[0]
		for _, x := range v {
			mx = max(mx, x)
		}
		var sum float64
		for i, x := range v {
			e := math.Exp(float64(x - mx))
			v[i] = float32(e)
			sum += e
		}
		for i := range v {
			v[i] = float32(float64(v[i]) / sum)
		}
	case OutputSigmoid:
		for i, x := range v {
			v[i] = float32(1 / (1 + math.Exp(-float64(x))))
		}
	}
}

// newModel validates the ONNX graph against the manifest and creates the
// session.
func newModel(man *Manifest, onnx []byte, source string, threads int) (*Model, error) {
	ins, outs, err := ort.GetInputOutputInfoWithONNXData(onnx)
	if err != nil {
		return nil, fmt.Errorf("model.onnx: %w", err)
	}
	m := &Model{Manifest: *man, Source: source, pre: newPreprocessor(man.Input), outLen: len(man.Labels)}
	if err := m.checkIO(ins, outs); err != nil {
		return nil, err
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("session options: %w", err)
	}
	defer opts.Destroy()
	// ORT's worker threads spin while waiting for work by default, which
	// takes cores from decoding and NATS; and the service already runs
	// images in parallel, so by default one ORT call uses one thread.
	if err := opts.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"); err != nil {
		return nil, fmt.Errorf("session options: %w", err)
	}
	if err := opts.SetIntraOpNumThreads(max(threads, 1)); err != nil {
		return nil, fmt.Errorf("session options: %w", err)
	}
	s, err := ort.NewDynamicAdvancedSessionWithONNXData(onnx, []string{man.Input.Name}, []string{man.Output.Name}, opts)
	if err != nil {
		return nil, fmt.Errorf("model.onnx: session: %w", err)
	}
	m.session = s
	if err := m.warmUp(); err != nil {
		_ = m.Close()
		return nil, err
	}
	m.LoadedAt = time.Now()
	return m, nil
}

func (m *Model) checkIO(ins, outs []ort.InputOutputInfo) error {
	var errs []error
	var in, out *ort.InputOutputInfo
	for i := range ins {
		if ins[i].Name == m.Input.Name {
			in = &ins[i]
		} else {
			errs = append(errs, fmt.Errorf("graph input %q is not fed: the service feeds only input.name %q", ins[i].Name, m.Input.Name))
		}
	}
	for i := range outs {
		if outs[i].Name == m.Output.Name {
			out = &outs[i]
		}
	}
	if in == nil {
		errs = append(errs, fmt.Errorf("input.name %q is not an input of the graph (%s)", m.Input.Name, names(ins)))
	} else if in.OrtValueType != ort.ONNXTypeTensor || in.DataType != ort.TensorElementDataTypeFloat || len(in.Dimensions) != 4 {
		errs = append(errs, fmt.Errorf("graph input %s: want a float tensor of rank 4, got %s", in.Name, in))
	} else {
		want := []int64{int64(m.Input.Channels), int64(m.Input.Height), int64(m.Input.Width)}
		if m.Input.Layout == "NHWC" {
			want = []int64{int64(m.Input.Height), int64(m.Input.Width), int64(m.Input.Channels)}
		}
		for i, d := range in.Dimensions[1:] {
			if d > 0 && d != want[i] {
				errs = append(errs, fmt.Errorf("graph input %s has shape %v; the manifest (%s, %dx%d, %d channels) wants [N %v]",
					in.Name, in.Dimensions, m.Input.Layout, m.Input.Width, m.Input.Height, m.Input.Channels, want))
				break
			}
		}
		if b := in.Dimensions[0]; b > 0 {
			// A graph exported with a fixed batch: chunks are padded to it.
			m.fixedBatch = int(b)
			m.MaxBatch = min(m.MaxBatch, int(b))
		}
	}
	if out == nil {
		errs = append(errs, fmt.Errorf("output.name %q is not an output of the graph (%s)", m.Output.Name, names(outs)))
	} else if out.OrtValueType != ort.ONNXTypeTensor || out.DataType != ort.TensorElementDataTypeFloat || len(out.Dimensions) < 2 {
		errs = append(errs, fmt.Errorf("graph output %s: want a float tensor [N, %d], got %s", out.Name, len(m.Labels), out))
	} else if d := out.Dimensions[len(out.Dimensions)-1]; d > 0 && d != int64(len(m.Labels)) {
		errs = append(errs, fmt.Errorf("graph output %s has %d scores per image but the manifest has %d labels", out.Name, d, len(m.Labels)))
	}
	return errors.Join(errs...)
}

func names(v []ort.InputOutputInfo) string {
	s := ""
	for i, x := range v {
		if i > 0 {
			s += ", "
		}
		s += x.Name
	}
	return "graph has " + s
}

// Close releases the session.
func (m *Model) Close() error {
	if m.session == nil {
		return nil
	}
	err := m.session.Destroy()
	m.session = nil
	return err
}
