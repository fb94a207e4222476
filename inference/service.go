// Package inference is the grading service: a durable JetStream consumer
// of submitted images that grades them with ONNX Runtime in dynamic
// batches (like Triton's dynamic batcher) and publishes one grade event
// per image; a registry of model directories (built-in demo models plus
// user folders); and the query service that lists the models.
package inference

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus"
)

// Config of the service; values are already resolved (see ConfigFromEnv).
type Config struct {
	// AdminAddr is where the binary serves /healthz, /readyz and /metrics
	// (none when empty); Run does not use it.
	AdminAddr string
	// NATSURL of the NATS server with JetStream (required).
	NATSURL string
	// ModelsDirs are folders of model directories loaded after the
	// built-in models (GRADELINE_MODELS_DIR, colon-separated).
	ModelsDirs []string
	// ORTLib is the path of libonnxruntime.so.1 (ONNXRUNTIME_LIB).
	ORTLib string
	// MaxQueueDelay is how long a batch waits for more images after its
	// first arrived (default DefaultMaxQueueDelay). Under load, images
	// that arrive while a batch runs are batched anyway; the delay only
	// trades latency for batch size when traffic is light.
	MaxQueueDelay time.Duration
	// Replicas of streams and the object store (EnsureService).
	Replicas int
	Logger   *slog.Logger
	// Registerer receives the metrics (nil = prometheus.DefaultRegisterer).
	Registerer prometheus.Registerer
	// OnReady, if set, is called once the models are loaded and the
	// consumer is about to start (a readiness probe).
	OnReady func()
}

// DefaultMaxQueueDelay is short: at one client every grade pays it in
// full.
const DefaultMaxQueueDelay = time.Millisecond

// MaxImageBytes bounds the image object the service reads.
const MaxImageBytes = 64 << 20

// Bounds of one consumed batch: images fetched at once, and messages per
// batch whatever the models' max_batch (their chunks are smaller anyway).
const (
	fetchers        = 16
	maxConsumeBatch = 256
)

// Run connects to NATS, waits for its streams and ensures its consumer
// (bus.EnsureService), loads the models and grades
// submitted images until ctx is cancelled; it then finishes the batch in
// hand and returns.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("service", "inference")
	if cfg.NATSURL == "" {
		return errors.New("inference: NATS URL is required (NATS_URL)")
	}
	if cfg.MaxQueueDelay <= 0 {
		cfg.MaxQueueDelay = DefaultMaxQueueDelay
	}
	reg, err := LoadRegistry(RegistryOptions{Dirs: cfg.ModelsDirs, ORTLib: cfg.ORTLib, Logger: log})
	if err != nil {
		return err
	}
	defer reg.Close()
	nc, js, err := bus.Connect(ctx, cfg.NATSURL, "inference", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := bus.EnsureService(ctx, js, bus.UserInference, bus.TopologyOptions{Logger: log}); err != nil {
		return err
	}
	store, err := bus.ImageStore(ctx, js)
	if err != nil {
		return err
	}
	s := &server{reg: reg, js: js, objects: newObjectReader(ctx, js, store), log: log, m: newMetrics(cfg.Registerer)}
	s.m.models.Set(float64(len(reg.models)))

	svc, err := bus.AddService(nc, "inference", "1.0.0", "lists the models the inference service grades with",
		bus.Endpoint{Name: "models-list", Subject: bus.SvcModelsList,
			Handler: bus.Handle(log, 5*time.Second, func(context.Context, bus.ModelsQuery) ([]bus.ModelInfo, error) {
				return s.modelInfos(), nil
			})})
	if err != nil {
		return err
	}
	defer func() { _ = svc.Stop() }()

	maxBatch := 1
	for _, m := range reg.Models() {
		maxBatch = max(maxBatch, m.MaxBatch)
	}
	maxBatch = min(maxBatch, maxConsumeBatch)
	if cfg.OnReady != nil {
		cfg.OnReady()
	}
	log.Info("inference consuming", "max_batch", maxBatch, "max_queue_delay", cfg.MaxQueueDelay, "models", reg.Names())
	err = bus.Consume(ctx, js, bus.ConsumerInference,
		bus.ConsumeOptions{MaxBatch: maxBatch, MaxQueueDelay: cfg.MaxQueueDelay, Logger: log}, s.handle)
	if err != nil {
		return err
	}
	if err := nc.Drain(); err != nil {
		log.Warn("nats drain", "err", err)
	}
	return nil
}

type server struct {
	reg     *Registry
	js      jetstream.JetStream
	objects *objectReader
	log     *slog.Logger
	m       *metrics
}

func (s *server) modelInfos() []bus.ModelInfo {
	models := s.reg.Models()
	out := make([]bus.ModelInfo, len(models))
	for i, m := range models {
		out[i] = m.Info()
	}
	return out
}

// handle grades one consumed batch: fetch and decode in parallel, one ONNX
// Runtime call per model per chunk of max_batch, one event per image.
func (s *server) handle(ctx context.Context, batch []*bus.Delivery) error {
	jobs := make([]*job, len(batch))
	for i, d := range batch {
		j := &job{d: d}
		jobs[i] = j
		if te, ok := d.Event.(*bus.TensorSubmitted); ok {
			s.tensorJob(j, te)
			continue
		}
		ev, ok := d.Event.(*bus.ImageSubmitted)
		if !ok {
			d.Reject(fmt.Sprintf("inference consumes %s events, got %s", bus.TypeImageSubmitted, d.Event.EventMeta().Type))
			j.skip = true
			continue
		}
		j.ev = ev
		if j.model, ok = s.reg.Model(ev.Model); !ok {
			j.failWith(failUnknownModel, fmt.Errorf("unknown model %q (available: %s)", ev.Model, strings.Join(s.reg.Names(), ", ")))
		}
	}

	// The batcher every grade goes through; the bytes come from the
	// object store.
	if err := gradeJobs(ctx, jobs, s.fetch, s.m, s.log); err != nil {
		return err
	}
	for _, j := range jobs {
		if j.retry != nil {
			j.d.Retry(j.retry)
			j.skip = true
		}
	}
	return s.publish(ctx, jobs)
}

// fetch reads the image bytes named by the event and checks their digest.
// A missing object or a wrong digest is final (a GradeFailed); any other
// error is returned (the store is unavailable).
func (s *server) fetch(ctx context.Context, j *job) error {
	ref := j.ev.Image
	data, err := s.objects.read(ctx, ref.Object, MaxImageBytes)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		j.failWith(failMissingObject, fmt.Errorf("image object %q not found in bucket %s", ref.Object, bus.ImageBucket))
		return nil
	case errors.Is(err, errTooLarge):
		j.failWith(failUndecodable, err)
		return nil
	case errors.Is(err, jetstream.ErrDigestMismatch):
		j.failWith(failChecksum, fmt.Errorf("image object %q is corrupt: %w", ref.Object, err))
		return nil
	case err != nil:
		return fmt.Errorf("object %s: %w", ref.Object, err)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); !strings.EqualFold(got, ref.SHA256) {
		j.failWith(failChecksum, fmt.Errorf("image object %q has sha256 %s, the event says %s", ref.Object, got, ref.SHA256))
		return nil
	}
	j.data = data
	return nil
}

// publish sends one event per graded or failed image. Publishing is I/O,
// so several are in flight. Any failure fails the batch: it is redelivered
// and the events republished under the same ids, which the stream's
// duplicate window drops.
func (s *server) publish(ctx context.Context, jobs []*job) error {
	var mu sync.Mutex
	var errs error
	parallelN(ctx, len(jobs), 16, func(i int) {
		j := jobs[i]
		var ev bus.Event
		switch {
		case j.skip:
			return
		case j.fail != nil:
			ev = &bus.GradeFailed{Meta: outcomeMeta(bus.TypeGradeFailed, j.ev.ID),
				GradeID: j.ev.ID, ImageID: j.ev.ImageID, Owner: j.ev.Owner, Model: j.ev.Model, Reason: j.fail.Error(),
				CallbackURL: j.ev.CallbackURL}
		case j.pred != nil:
			p := j.pred
			ev = &bus.GradeCompleted{Meta: outcomeMeta(bus.TypeGradeCompleted, j.ev.ID),
				GradeID: j.ev.ID, ImageID: j.ev.ImageID, Owner: j.ev.Owner,
				Model: j.model.Name, ModelVersion: j.model.Version,
				Label: p.Label, Score: float64(p.Scores[p.Index]), Scores: j.model.ScoreMap(*p),
				InferenceMS: float64(p.Inference.Microseconds()) / 1000, BatchSize: p.BatchSize, Catalogued: j.ev.Catalogued,
				CallbackURL: j.ev.CallbackURL}
		default:
			return
		}
		if _, err := bus.Publish(j.d.Ctx, s.js, ev); err != nil {
			mu.Lock()
			errs = errors.Join(errs, err)
			mu.Unlock()
			return
		}
		if j.fail != nil {
			s.m.failed.WithLabelValues(j.failKind).Inc()
			s.log.Info("grade failed", "grade_id", j.ev.ID, "model", j.ev.Model, "reason", j.fail.Error(), "request_id", bus.RequestID(j.d.Ctx))
		} else {
			s.m.completed.WithLabelValues(j.model.Name).Inc()
		}
	})
	if errs == nil {
		errs = ctx.Err()
	}
	return errs
}

// outcomeMeta gives the outcome event of a grade an id derived from the
// grade id: a redelivered submission republishes the same id, which the
// stream drops as a duplicate and downstream stores key on. It is a valid
// UUIDv7 carrying the submission's timestamp.
func outcomeMeta(typ, gradeID string) bus.Meta {
	m := bus.NewMeta(typ)
	h := sha256.Sum256([]byte("gradeline.grade-outcome/" + gradeID))
	var u uuid.UUID
	copy(u[:], h[:16])
	if g, err := uuid.Parse(gradeID); err == nil && g.Version() == 7 {
		copy(u[:6], g[:6])
	}
	u[6] = u[6]&0x0f | 0x70
	u[8] = u[8]&0x3f | 0x80
	m.ID = u.String()
	return m
}
