package inference

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/gradeline/gradeline/bus"
)

// job is one image on its way through the batcher.
type job struct {
	d     *bus.Delivery       // nil outside the service
	ev    *bus.ImageSubmitted // nil outside the service
	model *Model
	data  []byte
	input []float32
	// Exactly one outcome is set: fail (final, published as GradeFailed
	// with its text), pred (published as GradeCompleted), retry (a failure
	// of the runtime: redelivered), loadErr (the bytes could not be read:
	// redelivered without a delivery limit), shutdown (returned unhandled
	// at shutdown) or skip (nothing published).
	fail     error
	failKind string
	pred     *Prediction
	retry    error
	loadErr  error
	shutdown bool
	skip     bool
	// inputTook is how long decoding and preprocessing (or checking a
	// submitted tensor) took.
	inputTook time.Duration
	// queued is when the job entered its model version's queue.
	queued time.Time
	// last: nothing was behind its delivery on the server.
	last bool
	// done is told the job's outcome, once, by the batcher.
	done func(*job)
}

func (j *job) failWith(kind string, err error) { j.failKind, j.fail = kind, err }

// batcher is Triton's dynamic batcher, the one path from image bytes (or
// submitted tensors) to predictions, for the service's deliveries and for
// Registry.Grade alike. Jobs are loaded (I/O: up to fetchers at once) and
// decoded (CPU: one per core) as they arrive, then wait in a queue per
// model version. A queue forms a batch as soon as it holds the model's
// largest preferred batch size (max_batch without preferred sizes), or
// when its oldest job has waited the model's max_queue_delay: then it
// cuts the largest preferred size that fits, else what waits up to
// max_batch. So one model's delay never holds up another's images.
// Like a Triton model with one instance, a version runs one batch at a
// time and its next batch is cut when that one is done (fuller under
// load); batches of different versions run at the same time, up to one
// ONNX Runtime call per core.
type batcher struct {
	// delay is the max_queue_delay of a model whose manifest sets none.
	delay time.Duration
	// eager cuts every queue at once: Registry.Grade hands over all its
	// images together, so waiting for more would only add latency.
	eager bool
	// maxWaiting bounds the jobs waiting in queues: beyond it the queue
	// of the oldest job is cut early, so long delays cannot fill the
	// consumer's deliveries in flight and starve the other models.
	maxWaiting int
	m          *metrics // nil: none
	log        *slog.Logger
	// settleBatch, when set, is told the outcomes of a run batch together
	// (the service publishes them in one round trip); else each job's done.
	settleBatch func([]*job)

	loaders, decoders chan struct{}
	// runners is how many ONNX Runtime calls run at once (one per core:
	// a call uses one thread unless RegistryOptions.Threads says more).
	runners int

	mu      sync.Mutex
	queues  map[*Model]*queue
	waiting int // jobs in queues
	// preparing counts jobs handed to add and not yet queued or settled.
	preparing int
	running   int // batches running (at most runners)
	closed    bool
}

// queue is one model version's jobs waiting for a batch, oldest first.
type queue struct {
	model *Model
	jobs  []*job
	timer *time.Timer
	// busy: a batch of this version is running. Like a Triton model with
	// one instance, a version runs one batch at a time, so what arrives
	// meanwhile makes the next batch fuller instead of a second small one.
	busy bool
}

// newBatcher makes a batcher; delay is the default max_queue_delay and
// maxWaiting the bound of waiting jobs (0: none). m may be nil.
func newBatcher(delay time.Duration, maxWaiting int, m *metrics, log *slog.Logger) *batcher {
	cores := runtime.GOMAXPROCS(0)
	return &batcher{delay: delay, maxWaiting: maxWaiting, m: m, log: log,
		loaders: make(chan struct{}, fetchers), decoders: make(chan struct{}, cores), runners: cores,
		queues: map[*Model]*queue{}}
}

// add loads (load, nil when the bytes are in hand) and decodes the jobs
// in parallel, then queues them in their order. A job settled on the way
// (skipped, failed, not loaded) is done at once; the others are done
// when their batch has run. If ctx ends first, the jobs not yet loaded
// are done with ctx's error as their loadErr.
func (b *batcher) add(ctx context.Context, jobs []*job, load func(context.Context, *job) error) {
	start := time.Now()
	b.mu.Lock()
	b.preparing += len(jobs)
	b.mu.Unlock()
	prepared := make([]bool, len(jobs))
	parallelN(ctx, len(jobs), fetchers, func(i int) {
		b.prepare(ctx, jobs[i], load)
		prepared[i] = true
	})
	if b.m != nil {
		b.m.preprocess.Observe(time.Since(start).Seconds())
	}
	ready := make([]*job, 0, len(jobs))
	var settled []*job
	for i, j := range jobs {
		if !prepared[i] && j.loadErr == nil {
			j.loadErr = ctx.Err()
		}
		if j.skip || j.fail != nil || j.loadErr != nil {
			settled = append(settled, j)
			continue
		}
		if b.m != nil {
			b.m.compInput.WithLabelValues(j.model.Name, j.model.Version).Observe(j.inputTook.Seconds())
		}
		ready = append(ready, j)
	}
	b.enqueue(ready, len(jobs))
	for _, j := range settled {
		j.done(j)
	}
}

// prepare loads and decodes one job unless it is settled or already has
// its input (a submitted tensor).
func (b *batcher) prepare(ctx context.Context, j *job, load func(context.Context, *job) error) {
	if j.skip || j.fail != nil || j.input != nil {
		return
	}
	if load != nil {
		b.loaders <- struct{}{}
		err := load(ctx, j)
		<-b.loaders
		if err != nil {
			j.loadErr = err
			return
		}
		if j.fail != nil {
			return
		}
	}
	b.decoders <- struct{}{}
	defer func() { <-b.decoders }()
	t0 := time.Now()
	in := make([]float32, j.model.pre.size())
	if err := j.model.pre.bytes(j.data, in); err != nil {
		j.failWith(failUndecodable, err)
	} else {
		j.input = in
	}
	j.inputTook = time.Since(t0)
	j.data = nil
}

// enqueue appends jobs to their model versions' queues and starts the
// batches that are due; prepared of the jobs add counted are no longer
// being prepared. After close, jobs are returned unhandled.
func (b *batcher) enqueue(jobs []*job, prepared int) {
	now := time.Now()
	b.mu.Lock()
	b.preparing -= prepared
	if len(jobs) == 0 {
		// Settled jobs leave the count: a queue may now be due.
		if !b.closed {
			b.schedule(now)
		}
		b.mu.Unlock()
		return
	}
	if b.closed {
		b.mu.Unlock()
		for _, j := range jobs {
			j.shutdown = true
			j.done(j)
		}
		return
	}
	for _, j := range jobs {
		q := b.queues[j.model]
		if q == nil {
			q = &queue{model: j.model}
			b.queues[j.model] = q
		}
		j.queued = now
		q.jobs = append(q.jobs, j)
		b.waiting++
	}
	b.schedule(now)
	b.mu.Unlock()
}

// fullBatch is the batch size a queue runs as soon as it holds it: the
// largest preferred size, else max_batch (Triton's rule).
func (m *Model) fullBatch() int {
	if len(m.PreferredBatch) > 0 {
		return min(m.PreferredBatch[0], m.MaxBatch) // largest first
	}
	return m.MaxBatch
}

// queueDelay is how long the model version's oldest waiting job may wait
// for a fuller batch.
func (b *batcher) queueDelay(m *Model) time.Duration {
	if m.MaxQueueDelay > 0 {
		return m.MaxQueueDelay
	}
	return b.delay
}

// due reports whether q should run a batch now: it holds a full batch,
// its oldest job has waited its delay, or more jobs wait than the bound;
// or, for a model whose manifest sets no max_queue_delay, nothing more can
// come soon: one of its jobs had nothing behind it on the server and no
// job is on its way through loading and decoding. (Triton waits the delay
// out; waiting then could only add latency, so a lone client's grade runs
// at once while a busy queue still batches. A delay the manifest sets is
// waited out, as in Triton.)
func (b *batcher) due(q *queue, now time.Time) bool {
	if len(q.jobs) == 0 {
		return false
	}
	return b.eager || len(q.jobs) >= q.model.fullBatch() || now.Sub(q.jobs[0].queued) >= b.queueDelay(q.model) ||
		(b.maxWaiting > 0 && b.waiting > b.maxWaiting) ||
		(q.model.MaxQueueDelay == 0 && b.preparing == 0 && q.nothingBehind())
}

// nothingBehind reports whether a job in q had nothing behind its delivery.
func (q *queue) nothingBehind() bool {
	for _, j := range q.jobs {
		if j.last {
			return true
		}
	}
	return false
}

// schedule starts batches while a runner is free, from the due queue whose
// oldest job is oldest. Like Triton, a batch is cut only when it can run:
// while every runner is busy, the queues keep filling, so under load the
// batches grow (up to max_batch, or the preferred size that fits). Queues
// not due are woken at their oldest job's deadline. b.mu is held.
func (b *batcher) schedule(now time.Time) {
	for b.running < b.runners {
		var next *queue
		for _, q := range b.queues {
			if !q.busy && b.due(q, now) && (next == nil || q.jobs[0].queued.Before(next.jobs[0].queued)) {
				next = q
			}
		}
		if next == nil {
			break
		}
		n := next.model.chunk(len(next.jobs))
		batch := next.jobs[:n:n]
		next.jobs = next.jobs[n:]
		b.waiting -= n
		next.busy = true
		b.running++
		go b.run(next, batch, now)
	}
	for _, q := range b.queues {
		if len(q.jobs) == 0 || b.due(q, now) {
			continue // nothing waits, or it runs when a runner is free
		}
		wait := q.jobs[0].queued.Add(b.queueDelay(q.model)).Sub(now)
		if q.timer == nil {
			q.timer = time.AfterFunc(wait, func() { b.expire(q) })
		} else {
			q.timer.Reset(wait)
		}
	}
}

// expire starts the batches that are due when a queue's timer fires.
func (b *batcher) expire(q *queue) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.queues[q.model] != q {
		return // forgotten meanwhile
	}
	b.schedule(time.Now())
}

// close returns every waiting job unhandled (shutdown) and every job
// queued later; batches already cut still run.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	var jobs []*job
	for md, q := range b.queues {
		if q.timer != nil {
			q.timer.Stop()
		}
		jobs = append(jobs, q.jobs...)
		delete(b.queues, md)
	}
	b.waiting = 0
	b.mu.Unlock()
	for _, j := range jobs {
		j.shutdown = true
		j.done(j)
	}
}

// run makes one ONNX Runtime call for a batch of one model version, sets
// each job's outcome and tells the jobs, several at a time (publishing is
// I/O).
func (b *batcher) run(q *queue, batch []*job, now time.Time) {
	md := batch[0].model
	if b.m != nil {
		// The queue time ends when the batch is taken in hand (cut, with
		// a runner free), and starts at the submission (it includes the
		// stream's backlog), or at the queue for a job without one.
		for _, j := range batch {
			since := j.queued
			if j.ev != nil && !j.ev.Time.IsZero() {
				since = j.ev.Time
			}
			b.m.queue.WithLabelValues(md.Name, md.Version).Observe(max(now.Sub(since), 0).Seconds())
		}
	}
	inputs := make([][]float32, len(batch))
	for i, j := range batch {
		inputs[i] = j.input
	}
	preds, err := md.Run(inputs)
	b.mu.Lock()
	b.running--
	q.busy = false
	if len(q.jobs) == 0 && b.queues[q.model] == q {
		if q.timer != nil {
			q.timer.Stop()
		}
		delete(b.queues, q.model) // a retired version's queue goes with its last batch
	}
	b.schedule(time.Now())
	b.mu.Unlock()
	switch {
	case err != nil:
		b.log.Error("inference failed; will retry", "model", md.Name, "version", md.Version, "batch", len(batch), "err", err)
		for _, j := range batch {
			j.retry = err
		}
	default:
		if b.m != nil {
			b.m.batchSize.WithLabelValues(md.Name).Observe(float64(len(batch)))
			b.m.inference.WithLabelValues(md.Name).Observe(preds[0].Inference.Seconds())
			b.m.execCount.WithLabelValues(md.Name, md.Version).Inc()
			b.m.infCount.WithLabelValues(md.Name, md.Version).Add(float64(len(batch)))
			b.m.compInfer.WithLabelValues(md.Name, md.Version).Observe(preds[0].Inference.Seconds())
			b.m.compOutput.WithLabelValues(md.Name, md.Version).Observe(preds[0].Output.Seconds())
		}
		for i, j := range batch {
			j.input = nil
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
	if b.settleBatch != nil {
		b.settleBatch(batch)
		return
	}
	parallelN(context.Background(), len(batch), fetchers, func(i int) { batch[i].done(batch[i]) })
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
// version, "name@version" for another) through the service's batcher
// (decoding in parallel, one ONNX Runtime call per batch of max_batch or
// a preferred size, scores checked), without JetStream and the object
// store, for tools, benchmarks and tests. All the images are handed over
// at once, so no batch waits for more. A Prediction has Err set for an
// image that cannot be graded (unknown model or version, undecodable
// bytes, a non-finite score); the error is a failure of the runtime
// (worth retrying) or of ctx.
func (r *Registry) Grade(ctx context.Context, model string, images [][]byte) ([]Prediction, error) {
	m, err := r.Acquire(bus.SplitModelRef(model))
	if err == nil {
		defer m.Release()
	}
	var wg sync.WaitGroup
	wg.Add(len(images))
	jobs := make([]*job, len(images))
	for i, data := range images {
		jobs[i] = &job{model: m, data: data, done: func(*job) { wg.Done() }}
		if err != nil {
			jobs[i].failWith(failUnknownModel, err)
		}
	}
	b := newBatcher(DefaultMaxQueueDelay, 0, nil, discardLog)
	b.eager = true
	b.add(ctx, jobs, nil)
	wg.Wait()
	preds := make([]Prediction, len(jobs))
	for i, j := range jobs {
		switch {
		case j.loadErr != nil:
			return nil, j.loadErr
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
