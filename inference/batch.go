package inference

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/gradeline/gradeline/bus"
)

// job is one image on its way through a batch.
type job struct {
	d     *bus.Delivery       // nil outside the service
	ev    *bus.ImageSubmitted // nil outside the service
	model *Model
	data  []byte
	input []float32
	// Exactly one outcome is set: fail (final, published as GradeFailed
	// with its text), pred (published as GradeCompleted), retry (a failure
	// of the runtime: redelivered) or skip (nothing published).
	fail     error
	failKind string
	pred     *Prediction
	retry    error
	skip     bool
	// inputTook is how long decoding and preprocessing (or checking a
	// submitted tensor) took.
	inputTook time.Duration
}

func (j *job) failWith(kind string, err error) { j.failKind, j.fail = kind, err }

// gradeJobs is the batcher: the one path from image bytes to predictions,
// for the service's consumed batches and for Registry.Grade alike. Each
// job's bytes are loaded (load, nil when they are in hand) and decoded as
// they arrive: loading is I/O, so up to fetchers are in flight; decoding
// is CPU-bound, so one per core. Then the jobs of each model run in
// chunks of its max_batch, one ONNX Runtime call per chunk, in arrival
// order. It sets each job's outcome; an error of load (the object store
// unavailable) or of ctx fails the whole batch. m may be nil.
func gradeJobs(ctx context.Context, jobs []*job, load func(context.Context, *job) error, m *metrics, log *slog.Logger) error {
	start := time.Now()
	var loadErr error
	var mu sync.Mutex
	decoders := make(chan struct{}, runtime.GOMAXPROCS(0))
	parallelN(ctx, len(jobs), fetchers, func(i int) {
		j := jobs[i]
		if j.skip || j.fail != nil || j.input != nil {
			return // settled, or a submitted tensor: nothing to load or decode
		}
		if load != nil {
			if err := load(ctx, j); err != nil {
				mu.Lock()
				loadErr = errors.Join(loadErr, err)
				mu.Unlock()
				return
			}
			if j.fail != nil {
				return
			}
		}
		decoders <- struct{}{}
		defer func() { <-decoders }()
		t0 := time.Now()
		in := make([]float32, j.model.pre.size())
		if err := j.model.pre.bytes(j.data, in); err != nil {
			j.failWith(failUndecodable, err)
		} else {
			j.input = in
		}
		j.inputTook = time.Since(t0)
		j.data = nil
	})
	if loadErr != nil {
		// Nothing of the batch is graded: it is retried as a whole, with
		// no delivery limit, so nothing is lost during an outage.
		return fmt.Errorf("inference: fetch images: %w", loadErr)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if m != nil {
		m.preprocess.Observe(time.Since(start).Seconds())
	}

	// Group by model, keeping arrival order within a model.
	var order []*Model
	groups := map[*Model][]*job{}
	for _, j := range jobs {
		if j.skip || j.fail != nil {
			continue
		}
		if _, ok := groups[j.model]; !ok {
			order = append(order, j.model)
		}
		groups[j.model] = append(groups[j.model], j)
	}
	for _, md := range order {
		g := groups[md]
		if m != nil {
			for _, j := range g {
				m.compInput.WithLabelValues(md.Name, md.Version).Observe(j.inputTook.Seconds())
			}
		}
		for lo := 0; lo < len(g); {
			n := md.chunk(len(g) - lo)
			chunk := g[lo : lo+n]
			lo += n
			inputs := make([][]float32, len(chunk))
			for i, j := range chunk {
				inputs[i] = j.input
			}
			preds, err := md.Run(inputs)
			if err != nil {
				log.Error("inference failed; will retry", "model", md.Name, "batch", len(chunk), "err", err)
				for _, j := range chunk {
					j.retry = err
				}
				continue
			}
			if m != nil {
				m.batchSize.WithLabelValues(md.Name).Observe(float64(len(chunk)))
				m.inference.WithLabelValues(md.Name).Observe(preds[0].Inference.Seconds())
				m.execCount.WithLabelValues(md.Name, md.Version).Inc()
				m.infCount.WithLabelValues(md.Name, md.Version).Add(float64(len(chunk)))
				m.compInfer.WithLabelValues(md.Name, md.Version).Observe(preds[0].Inference.Seconds())
				m.compOutput.WithLabelValues(md.Name, md.Version).Observe(preds[0].Output.Seconds())
			}
			for i, j := range chunk {
				if bad := nonFinite(preds[i].Scores); bad >= 0 {
					// The same input gives the same output: final, like an
					// undecodable image (and NaN cannot be sent as JSON).
					j.failWith(failModelOutput, fmt.Errorf("model %s produced a non-finite score (%v) for label %q",
						md.Name, preds[i].Scores[bad], md.Labels[bad]))
					continue
				}
				j.pred = &preds[i]
			}
		}
	}
	return nil
}

// chunk is the size of the next batch the dynamic batcher cuts from n
// waiting images of this model version: the largest preferred batch size
// that n fills, else n up to max_batch (Triton's rule).
func (m *Model) chunk(n int) int {
	for _, p := range m.PreferredBatch { // largest first
		if p <= n && p <= m.MaxBatch {
			return p
		}
	}
	return min(n, m.MaxBatch)
}

// nonFinite returns the index of the first NaN or infinite score, or -1.
func nonFinite(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}

var discardLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// Grade grades images with the named model ("name" for its newest served
// version, "name@version" for another) through the batcher the service
// runs every consumed batch through (decoding in parallel, one ONNX
// Runtime call per chunk of max_batch, scores checked): the service's
// path without JetStream and the object store, for benchmarks and tests.
// A Prediction has Err set for an image that cannot be graded (unknown
// model or version, undecodable bytes, a non-finite score); the error is
// a failure of the runtime (worth retrying) or of ctx.
func (r *Registry) Grade(ctx context.Context, model string, images [][]byte) ([]Prediction, error) {
	m, err := r.Acquire(bus.SplitModelRef(model))
	if err == nil {
		defer m.Release()
	}
	jobs := make([]*job, len(images))
	for i, data := range images {
		jobs[i] = &job{model: m, data: data}
		if err != nil {
			jobs[i].failWith(failUnknownModel, err)
		}
	}
	if err := gradeJobs(ctx, jobs, nil, nil, discardLog); err != nil {
		return nil, err
	}
	preds := make([]Prediction, len(jobs))
	for i, j := range jobs {
		switch {
		case j.retry != nil:
			return nil, j.retry
		case j.fail != nil:
			preds[i].Err = j.fail
		default:
			preds[i] = *j.pred
		}
	}
	return preds, nil
}
