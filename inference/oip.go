package inference

// Tensors submitted through the edge's Open Inference Protocol routes
// (bus.TensorSubmitted): already preprocessed inputs, graded by the same
// batcher as images, without decoding.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// failBadTensor labels a tensor that does not fit its model (shape, input
// name): final, like an undecodable image.
const failBadTensor = "bad_tensor"

// InputShape is the shape of one preprocessed image as the model takes it,
// without the batch dimension: [C, H, W] for NCHW, [H, W, C] for NHWC.
func (in Input) InputShape() []int64 {
	if in.Layout == "NHWC" {
		return []int64{int64(in.Height), int64(in.Width), int64(in.Channels)}
	}
	return []int64{int64(in.Channels), int64(in.Height), int64(in.Width)}
}

// tensorObjectTimeout bounds the read of a row held in the image bucket.
const tensorObjectTimeout = 30 * time.Second

// tensorJob makes the job of a submitted tensor: its input is the tensor
// itself, so the batcher skips loading and decoding. A tensor that does
// not fit the model fails the grade (GradeFailed with the reason). The
// job carries an ImageSubmitted built from the tensor's fields (no image),
// which is all the outcome events take from a submission. A row in the
// image bucket (ev.Object) is read here, at most the model's input size;
// a store that does not answer retries the delivery.
func (s *server) tensorJob(j *job, ev *bus.TensorSubmitted) {
	j.ev = &bus.ImageSubmitted{Meta: ev.Meta, Owner: ev.Owner, Model: ev.Model, ModelVersion: ev.ModelVersion}
	s.resolve(j, ev.Model, ev.ModelVersion)
	if j.model == nil {
		return
	}
	t0 := time.Now()
	if ev.Object.Object != "" && len(ev.Data) == 0 {
		data, fail, err := s.tensorObject(j.d.Ctx, ev.Object, 4*int64(j.model.InputSize()))
		switch {
		case err != nil:
			// Not the tensor's fault: nothing is published, the delivery
			// comes back after the backoff.
			j.d.Retry(fmt.Errorf("tensor object %s: %w", ev.Object.Object, err))
			j.skip = true
			return
		case fail != nil:
			j.inputTook = time.Since(t0)
			j.failWith(failBadTensor, fail)
			return
		}
		ev.Data = data
	}
	input, err := tensorInput(j.model, ev)
	j.inputTook = time.Since(t0)
	if err != nil {
		j.failWith(failBadTensor, err)
		return
	}
	j.input = input
}

// tensorObject reads a row held in the image bucket and checks its
// digest: fail says why the tensor can never be graded (missing, larger
// than the model's input, corrupt), err that the store did not answer.
func (s *server) tensorObject(ctx context.Context, ref bus.ImageRef, limit int64) (data []byte, fail, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tensorObjectTimeout)
	defer cancel()
	data, err = s.objects.read(ctx, ref.Object, limit)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return nil, fmt.Errorf("tensor object %q not found in bucket %s", ref.Object, bus.ImageBucket), nil
	case errors.Is(err, errTooLarge):
		return nil, fmt.Errorf("tensor object %q: %w (the model's input)", ref.Object, err), nil
	case errors.Is(err, jetstream.ErrDigestMismatch):
		return nil, fmt.Errorf("tensor object %q is corrupt: %w", ref.Object, err), nil
	case err != nil:
		return nil, nil, err
	}
	if fail := checkDigest(fmt.Sprintf("tensor object %q", ref.Object), data, ref.SHA256); fail != nil {
		return nil, fail, nil
	}
	return data, nil, nil
}

// tensorInput checks a submitted tensor against the model and returns its
// values.
func tensorInput(m *Model, ev *bus.TensorSubmitted) ([]float32, error) {
	if ev.Input != m.Input.Name {
		return nil, fmt.Errorf("model %s has no input %q (its input is %q)", m.Name, ev.Input, m.Input.Name)
	}
	if want := m.Input.InputShape(); !slices.Equal(ev.Shape, want) {
		return nil, fmt.Errorf("input %s: shape %v, model %s wants %v (%s)", ev.Input, ev.Shape, m.Name, want, m.Input.Layout)
	}
	if ev.Datatype != bus.DatatypeFP32 || len(ev.Data) != 4*m.InputSize() {
		return nil, fmt.Errorf("input %s: %d bytes of %s, want %d bytes of FP32", ev.Input, len(ev.Data), ev.Datatype, 4*m.InputSize())
	}
	out := make([]float32, m.InputSize())
	for i := range out {
		v := math.Float32frombits(binary.LittleEndian.Uint32(ev.Data[4*i:]))
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("input %s: element %d is %v; every element must be finite", ev.Input, i, v)
		}
		out[i] = v
	}
	return out, nil
}
