// Package mlp trains a one-hidden-layer perceptron (ReLU, softmax) with
// minibatch Adam in plain Go and exports it as an ONNX graph. It is small
// on purpose: the demo models must be reproducible from the repository on
// a laptop in minutes, without Python.
package mlp

import (
	"math"
	"math/rand/v2"
	"sync"

	"github.com/gradeline/gradeline/inference/onnxpb"
)

// Net is the network: probabilities = softmax(W2·relu(W1·x + B1) + B2).
// W1 is [Hidden][In], W2 is [Out][Hidden], row-major.
type Net struct {
	In, Hidden, Out int
	W1, B1, W2, B2  []float32
}

// New initialises a network with He-normal weights from seed.
func New(in, hidden, out int, seed uint64) *Net {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	n := &Net{In: in, Hidden: hidden, Out: out,
		W1: make([]float32, hidden*in), B1: make([]float32, hidden),
		W2: make([]float32, out*hidden), B2: make([]float32, out)}
	s1, s2 := math.Sqrt(2/float64(in)), math.Sqrt(2/float64(hidden))
	for i := range n.W1 {
		n.W1[i] = float32(r.NormFloat64() * s1)
	}
	for i := range n.W2 {
		n.W2[i] = float32(r.NormFloat64() * s2)
	}
	return n
}

func (n *Net) params() [][]float32 { return [][]float32{n.W1, n.B1, n.W2, n.B2} }

// Forward writes the hidden activations into h and the probabilities into p.
func (n *Net) Forward(x, h, p []float32) {
	for j := range n.Hidden {
		w := n.W1[j*n.In : (j+1)*n.In]
		s := n.B1[j]
		for i, v := range x {
			s += w[i] * v
		}
		h[j] = max(s, 0)
	}
	mx := float32(math.Inf(-1))
	for k := range n.Out {
		w := n.W2[k*n.Hidden : (k+1)*n.Hidden]
		s := n.B2[k]
		for j, v := range h {
			s += w[j] * v
		}
		p[k] = s
		mx = max(mx, s)
	}
	var sum float32
	for k := range p {
		p[k] = float32(math.Exp(float64(p[k] - mx)))
		sum += p[k]
	}
	for k := range p {
		p[k] /= sum
	}
}

// Predict returns the most probable class of x.
func (n *Net) Predict(x []float32) int {
	h, p := make([]float32, n.Hidden), make([]float32, n.Out)
	n.Forward(x, h, p)
	best := 0
	for k := range p {
		if p[k] > p[best] {
			best = k
		}
	}
	return best
}

// Options of Train.
type Options struct {
	Epochs    int
	BatchSize int
	LR        float64 // Adam step size at the start; cosine-decayed to 0
	Seed      uint64
	// Progress is called after every epoch with the mean training loss.
	Progress func(epoch int, loss float64)
}

// shares is how many parts a minibatch is split into, each on its own
// goroutine. It is fixed, not the number of cores, so that the order of
// floating-point sums, and thus the trained network, is the same on every
// machine.
const shares = 4

// Train fits the network to xs (each In values) and labels. The batch is
// split in fixed shares whose gradients are summed in order, so a seed
// gives the same network on any machine of the same architecture.
func (n *Net) Train(xs [][]float32, labels []int, o Options) {
	r := rand.New(rand.NewPCG(o.Seed, 1))
	order := make([]int, len(xs))
	for i := range order {
		order[i] = i
	}
	workers := shares
	grads := make([]*grad, workers)
	for w := range grads {
		grads[w] = n.newGrad()
	}
	adam := newAdam(n.params())
	steps := o.Epochs * ((len(xs) + o.BatchSize - 1) / o.BatchSize)
	step := 0
	for epoch := range o.Epochs {
		r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		var loss float64
		for start := 0; start < len(order); start += o.BatchSize {
			batch := order[start:min(start+o.BatchSize, len(order))]
			var wg sync.WaitGroup
			share := (len(batch) + workers - 1) / workers
			for w := range workers {
				lo, hi := min(w*share, len(batch)), min((w+1)*share, len(batch))
				g := grads[w]
				g.zero()
				wg.Go(func() {
					for _, i := range batch[lo:hi] {
						g.loss += n.backprop(xs[i], labels[i], g)
					}
				})
			}
			wg.Wait()
			for w := 1; w < workers; w++ {
				grads[0].add(grads[w])
			}
			loss += grads[0].loss
			lr := o.LR * 0.5 * (1 + math.Cos(math.Pi*float64(step)/float64(steps)))
			adam.step(n.params(), grads[0].params(), lr, 1/float32(len(batch)))
			step++
		}
		if o.Progress != nil {
			o.Progress(epoch+1, loss/float64(len(xs)))
		}
	}
}

type grad struct {
	w1, b1, w2, b2 []float32
	h, p, dh       []float32
	loss           float64
}

func (n *Net) newGrad() *grad {
	return &grad{
		w1: make([]float32, len(n.W1)), b1: make([]float32, len(n.B1)),
		w2: make([]float32, len(n.W2)), b2: make([]float32, len(n.B2)),
		h: make([]float32, n.Hidden), p: make([]float32, n.Out), dh: make([]float32, n.Hidden),
	}
}

func (g *grad) params() [][]float32 { return [][]float32{g.w1, g.b1, g.w2, g.b2} }

func (g *grad) zero() {
	for _, p := range g.params() {
		clear(p)
	}
	g.loss = 0
}

func (g *grad) add(o *grad) {
	ps, os := g.params(), o.params()
	for i := range ps {
		for j, v := range os[i] {
			ps[i][j] += v
		}
	}
	g.loss += o.loss
}

// backprop adds the cross-entropy gradient of one sample to g and returns
// its loss.
func (n *Net) backprop(x []float32, label int, g *grad) float64 {
	n.Forward(x, g.h, g.p)
	loss := -math.Log(max(float64(g.p[label]), 1e-12))
	g.p[label] -= 1 // dL/dz of softmax + cross-entropy
	clear(g.dh)
	for k, dz := range g.p {
		g.b2[k] += dz
		gw := g.w2[k*n.Hidden : (k+1)*n.Hidden]
		w := n.W2[k*n.Hidden : (k+1)*n.Hidden]
		for j, h := range g.h {
			gw[j] += dz * h
			g.dh[j] += dz * w[j]
		}
	}
	for j, d := range g.dh {
		if g.h[j] <= 0 {
			continue // ReLU: no gradient through an inactive unit
		}
		g.b1[j] += d
		gw := g.w1[j*n.In : (j+1)*n.In]
		for i, v := range x {
			gw[i] += d * v
		}
	}
	return loss
}

type adam struct {
	m, v [][]float32
	t    int
}

func newAdam(params [][]float32) *adam {
	a := &adam{}
	for _, p := range params {
		a.m = append(a.m, make([]float32, len(p)))
		a.v = append(a.v, make([]float32, len(p)))
	}
	return a
}

func (a *adam) step(params, grads [][]float32, lr float64, scale float32) {
	const b1, b2, eps = 0.9, 0.999, 1e-8
	a.t++
	c1 := 1 - math.Pow(b1, float64(a.t))
	c2 := 1 - math.Pow(b2, float64(a.t))
	alpha := float32(lr * math.Sqrt(c2) / c1)
	for i, p := range params {
		m, v, g := a.m[i], a.v[i], grads[i]
		for j := range p {
			gj := g[j] * scale
			m[j] = b1*m[j] + (1-b1)*gj
			v[j] = b2*v[j] + (1-b2)*gj*gj
			p[j] -= alpha * m[j] / (float32(math.Sqrt(float64(v[j]))) + eps)
		}
	}
}

// Graph returns the ONNX graph of the network for an input named input of
// shape [N, channels, height, width] (channels*height*width = In) and an
// output named output of shape [N, Out] holding probabilities.
func (n *Net) Graph(input, output string, channels, height, width int) onnxpb.Graph {
	return onnxpb.Graph{
		Name: "mlp",
		Nodes: []onnxpb.Node{
			{Name: "flatten", OpType: "Flatten", Inputs: []string{input}, Outputs: []string{"x"}, Attrs: []onnxpb.Attr{onnxpb.Int("axis", 1)}},
			{Name: "hidden", OpType: "Gemm", Inputs: []string{"x", "w1", "b1"}, Outputs: []string{"z1"}, Attrs: []onnxpb.Attr{onnxpb.Int("transB", 1)}},
			{Name: "relu", OpType: "Relu", Inputs: []string{"z1"}, Outputs: []string{"h"}},
			{Name: "logits", OpType: "Gemm", Inputs: []string{"h", "w2", "b2"}, Outputs: []string{"z2"}, Attrs: []onnxpb.Attr{onnxpb.Int("transB", 1)}},
			{Name: "softmax", OpType: "Softmax", Inputs: []string{"z2"}, Outputs: []string{output}, Attrs: []onnxpb.Attr{onnxpb.Int("axis", 1)}},
		},
		Initializers: []onnxpb.Tensor{
			{Name: "w1", Dims: []int64{int64(n.Hidden), int64(n.In)}, Float: n.W1},
			{Name: "b1", Dims: []int64{int64(n.Hidden)}, Float: n.B1},
			{Name: "w2", Dims: []int64{int64(n.Out), int64(n.Hidden)}, Float: n.W2},
			{Name: "b2", Dims: []int64{int64(n.Out)}, Float: n.B2},
		},
		Inputs: []onnxpb.ValueInfo{{Name: input, ElemType: onnxpb.Float,
			Shape: []onnxpb.Dim{{Param: "N"}, {Value: int64(channels)}, {Value: int64(height)}, {Value: int64(width)}}}},
		Outputs: []onnxpb.ValueInfo{{Name: output, ElemType: onnxpb.Float,
			Shape: []onnxpb.Dim{{Param: "N"}, {Value: int64(n.Out)}}}},
	}
}
