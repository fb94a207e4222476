// Package inference is the grading service: a durable JetStream consumer
// of submitted images that grades them with ONNX Runtime in dynamic
// batches (like Triton's dynamic batcher) and publishes one grade event
// per image; a registry of model directories (built-in demo models plus
// user folders); and the query service that lists the models.
package inference

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
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
	// ModelsPoll is how often the models folders are scanned for new,
	// changed and removed versions (GRADELINE_MODELS_POLL; default
	// DefaultModelsPoll, negative: never). Each replica watches its own
	// folders.
	ModelsPoll time.Duration
	// ORTLib is the path of libonnxruntime.so.1 (ONNXRUNTIME_LIB).
	ORTLib string
	// MaxQueueDelay is how long a model version's queue waits for more
	// images after its oldest arrived, for models whose model.yaml sets
	// no max_queue_delay (default DefaultMaxQueueDelay). Under load,
	// images that arrive while the version's batch runs are batched
	// anyway; the delay only trades latency for batch size when traffic
	// is light.
	MaxQueueDelay time.Duration
	Logger        *slog.Logger
	// Registerer receives the metrics (nil = prometheus.DefaultRegisterer).
	Registerer prometheus.Registerer
	// OnReady, if set, is called once the models are loaded and the
	// consumer is about to start (a readiness probe).
	OnReady func()
}

// DefaultModelsPoll is how often the models folders are scanned: a
// changed version serves within about two polls (a file is loaded once it
// has stayed the same for one poll).
const DefaultModelsPoll = 2 * time.Second

// DefaultMaxQueueDelay is short: at one client every grade pays it in
// full.
const DefaultMaxQueueDelay = time.Millisecond

// MaxImageBytes bounds the image object the service reads.
const MaxImageBytes = 64 << 20

// Bounds of the batcher: images fetched at once; deliveries in hand
// (fetching, decoding, queued, running or publishing: half the
// consumer's MaxAckPending, so a second replica gets its share); and of
// those, the most that may wait in queues, beyond which the queues run
// early, so models with long delays cannot take every delivery and
// starve the others.
const (
	fetchers    = 16
	maxInFlight = 512
	maxWaiting  = 384
)

// Run connects to NATS, waits for its streams and ensures its consumer
// (bus.EnsureService), loads the models and grades
// submitted images until ctx is cancelled; it then finishes the batches
// in hand, returns the images still queued to the server and returns.
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
	if cfg.ModelsPoll == 0 {
		cfg.ModelsPoll = DefaultModelsPoll
	}
	var served atomic.Pointer[Registry]
	m := newMetrics(cfg.Registerer, func() float64 {
		if r := served.Load(); r != nil {
			return float64(len(r.Names()))
		}
		return 0
	})
	reg, err := LoadRegistry(RegistryOptions{Dirs: cfg.ModelsDirs, ORTLib: cfg.ORTLib, Logger: log,
		OnLoad: func(model, version string, err error) {
			result := loadOK
			if err != nil {
				result = loadFailed
			}
			m.loads.WithLabelValues(model, version, result).Inc()
		}})
	if err != nil {
		return err
	}
	served.Store(reg)
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
	s := &server{reg: reg, js: js, objects: newObjectReader(ctx, js, store), log: log, m: m}
	// What the repository API unloaded stays unloaded across restarts and
	// on every replica: applied before anything is served.
	if s.state, err = openModelState(ctx, js, reg, log); err != nil {
		return err
	}

	svc, err := bus.AddService(nc, "inference", "1.0.0", "lists the models the inference service grades with",
		bus.Endpoint{Name: "models-list", Subject: bus.SvcModelsList,
			Handler: bus.Handle(log, 5*time.Second, func(_ context.Context, q bus.ModelsQuery) ([]bus.ModelInfo, error) {
				return reg.Infos(q.All), nil
			})})
	if err != nil {
		return err
	}
	defer func() { _ = svc.Stop() }()
	// Every replica loads and unloads (no queue group): each watches and
	// serves its own folders. In order, so that an unload and the load
	// after it reach the model state bucket in that order.
	if err := svc.AddEndpoint("models-repository", bus.HandleInOrder(log, time.Minute, s.repository),
		micro.WithEndpointSubject(bus.SvcModelsRepository), micro.WithEndpointQueueGroupDisabled()); err != nil {
		return fmt.Errorf("inference: endpoint models-repository: %w", err)
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go reg.Watch(watchCtx, cfg.ModelsPoll)

	// Deliveries stream in and wait in a queue per model version, each
	// batched by its own max_batch, preferred_batch and max_queue_delay.
	s.batcher = newBatcher(cfg.MaxQueueDelay, maxWaiting, m, log)
	s.batcher.settleBatch = s.settleAll
	stopped := context.AfterFunc(ctx, s.batcher.close)
	defer stopped()
	if cfg.OnReady != nil {
		cfg.OnReady()
	}
	log.Info("inference consuming", "max_queue_delay", cfg.MaxQueueDelay, "max_in_flight", maxInFlight, "models", reg.Names(), "models_poll", cfg.ModelsPoll)
	err = bus.ConsumeStream(ctx, js, bus.ConsumerInference,
		bus.ConsumeOptions{MaxInFlight: maxInFlight, Logger: log}, s.receive)
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
	state   *modelState
	batcher *batcher
}

// repository loads or unloads a model (bus.ModelRepositoryQuery), which
// the model state bucket remembers for every replica and restart, and
// answers the model as this replica serves it afterwards.
func (s *server) repository(ctx context.Context, q bus.ModelRepositoryQuery) (bus.ModelInfo, error) {
	if !nameRE.MatchString(q.Model) {
		return bus.ModelInfo{}, bus.Errorf(bus.CodeNotFound, "unknown model %q", q.Model)
	}
	var err error
	switch q.Action {
	case bus.ModelLoad:
		err = s.state.load(ctx, q.Model)
	case bus.ModelUnload:
		err = s.state.unload(ctx, q.Model)
	default:
		return bus.ModelInfo{}, bus.Errorf(bus.CodeUnprocessable, "action %q: want %s or %s", q.Action, bus.ModelLoad, bus.ModelUnload)
	}
	var be *bus.Error
	switch {
	case errors.Is(err, ErrUnknownModel):
		return bus.ModelInfo{}, &bus.Error{Code: bus.CodeNotFound, Message: err.Error()}
	case errors.As(err, &be):
		return bus.ModelInfo{}, be
	case err != nil:
		return bus.ModelInfo{}, &bus.Error{Code: bus.CodeBadRequest, Message: fmt.Sprintf("model %s failed to load: %v", q.Model, err)}
	}
	for _, info := range s.reg.Infos(true) {
		if info.Name == q.Model {
			return info, nil
		}
	}
	return bus.ModelInfo{Name: q.Model, State: StateUnavailable, Error: errUnloaded.Error()}, nil
}

// resolve holds the model version a submission names (model@version in
// its model, or its model_version) for the job, or fails the job.
func (s *server) resolve(j *job, ref, version string) {
	name, v := bus.SplitModelRef(ref)
	if version != "" {
		v = version
	}
	m, err := s.reg.Acquire(name, v)
	if err != nil {
		j.failWith(failUnknownModel, err)
		return
	}
	j.model = m
}

// receive takes one delivery into the batcher: a submitted image or
// tensor is resolved to the model version it names (held until its
// outcome is settled, so a reload meanwhile closes the old session after
// it), loaded and decoded, queued and graded; settle publishes its outcome.
func (s *server) receive(_ context.Context, d *bus.Delivery) {
	j := &job{d: d, done: s.settle, last: d.NumPending == 0}
	switch ev := d.Event.(type) {
	case *bus.TensorSubmitted:
		s.tensorJob(j, ev)
	case *bus.ImageSubmitted:
		j.ev = ev
		s.resolve(j, ev.Model, ev.ModelVersion)
	default:
		d.Reject(fmt.Sprintf("inference consumes %s events, got %s", bus.TypeImageSubmitted, d.Event.EventMeta().Type))
		j.skip = true
	}
	// The bytes come from the object store (or the event). The
	// delivery's context outlives shutdown: an image in hand is finished.
	go s.batcher.add(d.Ctx, []*job{j}, s.fetch)
}

// settle publishes a job's outcome and then settles its delivery: acked
// after its event is published, naked with backoff when the publish or
// the image's load failed (no delivery limit: a dependency is down),
// retried on a failure of the runtime, returned at shutdown.
func (s *server) settle(j *job) { s.settleAll([]*job{j}) }

// settleAll settles jobs as settle does, their events published together:
// one round trip to the stream for a whole batch.
func (s *server) settleAll(jobs []*job) {
	errs := make([]error, len(jobs))
	var (
		ctxs []context.Context
		evs  []bus.Event
		idx  []int // the job of each event
	)
	for i, j := range jobs {
		switch {
		case j.shutdown:
			errs[i] = bus.ErrShutdown
		case j.loadErr != nil:
			errs[i] = fmt.Errorf("inference: fetch image: %w", j.loadErr)
		case j.retry != nil:
			j.d.Retry(j.retry)
		default:
			if ev := outcome(j); ev != nil {
				// A result due at a callback_url is published twice: in
				// GRADES without the URL, and with it for the edge to
				// deliver; the submission is acked once both are stored.
				ev, due := bus.SplitCallback(ev)
				ctxs, evs, idx = append(ctxs, j.d.Ctx), append(evs, ev), append(idx, i)
				if due != nil {
					ctxs, evs, idx = append(ctxs, j.d.Ctx), append(evs, due), append(idx, i)
				}
			}
		}
	}
	if len(evs) > 0 {
		for k, err := range bus.PublishAll(ctxs, s.js, evs) {
			if err != nil && errs[idx[k]] == nil {
				errs[idx[k]] = err
			}
		}
		for k, i := range idx {
			if errs[i] == nil && (k == 0 || idx[k-1] != i) { // once per job
				s.published(jobs[i])
			}
		}
	}
	for i, j := range jobs {
		j.d.Done(errs[i])
		if j.model != nil {
			j.model.Release()
		}
	}
}

// fetch reads the image bytes named by the event and checks their digest:
// the event's own (an inline image, bus.MaxInlineImageBytes at most, with
// no round trip) or the object's. A missing object or a wrong digest is
// final (a GradeFailed); any other error is returned (the store is
// unavailable).
func (s *server) fetch(ctx context.Context, j *job) error {
	ref := j.ev.Image
	data, what := ref.Data, fmt.Sprintf("inline image %q", ref.Object)
	if !ref.Inline() {
		what = fmt.Sprintf("image object %q", ref.Object)
		var err error
		data, err = s.objects.read(ctx, ref.Object, MaxImageBytes)
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
	}
	if err := checkDigest(what, data, ref.SHA256); err != nil {
		j.failWith(failChecksum, err)
		return nil
	}
	j.data = data
	return nil
}

// outcome is the event of a graded or failed image; nil for a job that
// publishes nothing. A failed publish is returned by settleAll: the
// submission is redelivered and the event republished under the same id,
// which the stream's duplicate window drops.
func outcome(j *job) bus.Event {
	switch {
	case j.skip:
		return nil
	case j.fail != nil:
		return &bus.GradeFailed{Meta: outcomeMeta(bus.TypeGradeFailed, j.ev.ID),
			GradeID: j.ev.ID, ImageID: j.ev.ImageID, Owner: j.ev.Owner, Model: j.ev.Model, Reason: j.fail.Error(),
			CallbackURL: j.ev.CallbackURL, SubmittedAt: j.ev.Time.UTC()}
	case j.pred != nil:
		p := j.pred
		return &bus.GradeCompleted{Meta: outcomeMeta(bus.TypeGradeCompleted, j.ev.ID),
			GradeID: j.ev.ID, ImageID: j.ev.ImageID, Owner: j.ev.Owner,
			Model: j.model.Name, ModelVersion: j.model.Version,
			Label: p.Label, Score: float64(p.Scores[p.Index]), Scores: j.model.ScoreMap(*p),
			InferenceMS: float64(p.Inference.Microseconds()) / 1000, BatchSize: p.BatchSize, Catalogued: j.ev.Catalogued,
			CallbackURL: j.ev.CallbackURL, SubmittedAt: j.ev.Time.UTC()}
	}
	return nil
}

// published counts and logs a job whose outcome the stream stored.
func (s *server) published(j *job) {
	if j.fail != nil {
		s.m.failed.WithLabelValues(j.failKind).Inc()
		if j.model != nil {
			s.m.failure.WithLabelValues(j.model.Name, j.model.Version, j.failKind).Inc()
		}
		s.log.Info("grade failed", "grade_id", j.ev.ID, "model", j.ev.Model, "reason", j.fail.Error(), "request_id", bus.RequestID(j.d.Ctx))
		return
	}
	s.m.completed.WithLabelValues(j.model.Name).Inc()
	s.m.success.WithLabelValues(j.model.Name, j.model.Version).Inc()
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
