package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Subject roots: each stream captures every subject under its root
// (root + ">"), so the event subjects, the streams and the consumers'
// filters below are written from them instead of repeating the wildcards.
const (
	rootAnnotations = "gradeline.annotations."
	rootImages      = "gradeline.images."
	rootGrades      = "gradeline.grades."
	rootCatalog     = "gradeline.catalog."
	rootIris        = "gradeline.iris."
	rootRegrades    = "gradeline.regrades."
	rootCallbacks   = "gradeline.callbacks."
)

// Subjects of events. Streams capture them; any NATS client may subscribe.
const (
	SubjectAnnotationCreated = rootAnnotations + "created"
	SubjectAnnotationUpdated = rootAnnotations + "updated"
	SubjectAnnotationDeleted = rootAnnotations + "deleted"
	SubjectImageSharesSet    = rootCatalog + "images.shares_set"
	SubjectImageSubmitted    = rootImages + "submitted"
	SubjectGradeCompleted    = rootGrades + "completed"
	SubjectGradeFailed       = rootGrades + "failed"
	SubjectGradePending      = rootGrades + "pending"
	SubjectImageCatalogued   = rootCatalog + "images.catalogued"
	SubjectImageTagsSet      = rootCatalog + "images.tags_set"
	SubjectImageDeleted      = rootCatalog + "images.deleted"
	SubjectIrisMeasured      = rootIris + "measurements"
	SubjectTensorSubmitted   = rootImages + "tensor_submitted"
	// SubjectGradeShadow: a grade re-run by another model version
	// (`gradeline regrade`), beside the grades it never changes.
	SubjectGradeShadow = rootRegrades + "results"
	// SubjectGradeCallbackAttempted: one attempt to deliver a grade's
	// result to its callback_url.
	SubjectGradeCallbackAttempted = rootCallbacks + "attempted"
	// SubjectGradeCallbackDue: a result (grade.completed or grade.failed)
	// whose submission named a callback_url, with that URL; inference
	// publishes it beside the result in GRADES, which carries no URL. The
	// edge delivers from here, so it reads only the results it delivers.
	SubjectGradeCallbackDue = rootCallbacks + "due"
	// SubjectDeadLetterPrefix is followed by the durable name of the
	// consumer that gave up on the message.
	SubjectDeadLetterPrefix = "gradeline.deadletter."
)

// under is the wildcard of every subject under root.
func under(root string) []string { return []string{root + ">"} }

// Subjects of request-reply query services (nats.go/micro, queue groups).
const (
	SvcAnnotationsList  = "gradeline.svc.annotations.list"
	SvcAnnotationsGet   = "gradeline.svc.annotations.get"
	SvcImagesList       = "gradeline.svc.images.list"
	SvcImagesGet        = "gradeline.svc.images.get"
	SvcGradesGet        = "gradeline.svc.grades.get"
	SvcGradesList       = "gradeline.svc.grades.list"
	SvcModelsList       = "gradeline.svc.models.list"
	SvcIrisRange        = "gradeline.svc.iris.range"
	SvcIrisStats        = "gradeline.svc.iris.stats"
	SvcStatsGrades      = "gradeline.svc.stats.grades"
	SvcStatsAnnotations = "gradeline.svc.stats.annotations"
	SvcStatsReview      = "gradeline.svc.stats.review"
	SvcStatsAgreement   = "gradeline.svc.stats.agreement"
	SvcStatsRegrade     = "gradeline.svc.stats.regrade"

	// SvcImagesTagged lists every owner's images carrying a tag
	// (TaggedImagesQuery): the operator's `gradeline regrade --tag`.
	SvcImagesTagged = "gradeline.svc.images.tagged"
)

// SvcModelsRepository loads or unloads a model on every inference replica
// (no queue group: each acts, the first reply answers).
const SvcModelsRepository = "gradeline.svc.models.repository"

// Stream names.
const (
	StreamAnnotations = "ANNOTATIONS"
	StreamImages      = "IMAGES"
	StreamGrades      = "GRADES"
	StreamCatalog     = "CATALOG"
	StreamIris        = "IRIS"
	StreamDeadLetter  = "DEADLETTER"
	StreamRegrades    = "REGRADES"
	StreamCallbacks   = "CALLBACKS"
)

// ImageBucket is the object store bucket that holds image bytes.
const ImageBucket = "gradeline-images"

// ModelStateBucket is the key-value bucket that remembers the models
// unloaded through the repository API (POST
// /v2/repository/models/{m}/unload): key the model's name, value
// ModelStateUnloaded; a load deletes the key. Every inference replica
// applies it at start and watches it, so replicas, and a replica that
// restarts, agree on what is unloaded. `gradeline setup` creates it with
// the streams.
const (
	ModelStateBucket   = "gradeline-model-state"
	ModelStateUnloaded = "unloaded"
	// ModelStateBucketMaxBytes bounds it: one small entry per model.
	ModelStateBucketMaxBytes = 1 << 20
)

// DuplicateWindow is how long a stream remembers message ids: a publish
// retried within it is stored once.
const DuplicateWindow = 2 * time.Minute

// IdempotencyBucket is the key-value bucket where the edge keeps the first
// answer to each request that carried an Idempotency-Key (keyed by a hash
// of user and key). Entries live as long as the streams' duplicate window:
// within it, a retried request gets the first answer and its events, whose
// ids derive from the key, are dropped as duplicates.
const (
	IdempotencyBucket = "gradeline-idempotency"
	IdempotencyTTL    = DuplicateWindow
)

// IdempotencyStore returns the idempotency bucket, creating it when missing.
func IdempotencyStore(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, IdempotencyBucket)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("bus: key-value bucket %s: %w", IdempotencyBucket, err)
	}
	kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      IdempotencyBucket,
		Description: "first answers to requests with an Idempotency-Key",
		History:     1,
		TTL:         IdempotencyTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    max(1, replicas),
		MaxBytes:    IdempotencyBucketMaxBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: key-value bucket %s: %w", IdempotencyBucket, err)
	}
	return kv, nil
}

// StreamSpec is one row of the stream table.
type StreamSpec struct {
	Name        string
	Description string
	Subjects    []string
	MaxAge      time.Duration
	MaxBytes    int64
}

// Streams is the table of streams. Limits retention keeps history for
// replay; the age and size bounds keep a disk from filling. JetStream
// reserves MaxBytes up front, so the sum (with the image bucket, about
// 20 GiB) must fit the server's store; TopologyOptions.MaxBytesScale
// grows or shrinks every bound together.
var Streams = []StreamSpec{
	{StreamAnnotations, "annotations created by users", under(rootAnnotations), 365 * 24 * time.Hour, 2 << 30},
	{StreamImages, "images submitted for grading", under(rootImages), 30 * 24 * time.Hour, 1 << 30},
	{StreamGrades, "grades completed or failed", under(rootGrades), 365 * 24 * time.Hour, 2 << 30},
	{StreamCatalog, "image catalogue changes", under(rootCatalog), 365 * 24 * time.Hour, 1 << 30},
	{StreamIris, "iris measurement batches", under(rootIris), 30 * 24 * time.Hour, 8 << 30},
	{StreamDeadLetter, "messages consumers gave up on, with the reason", under(SubjectDeadLetterPrefix), 90 * 24 * time.Hour, 1 << 30},
	{StreamRegrades, "shadow grades of regrade runs", under(rootRegrades), 90 * 24 * time.Hour, 512 << 20},
	{StreamCallbacks, "grade results due at their callback_url and the attempts to deliver them", under(rootCallbacks), 90 * 24 * time.Hour, 256 << 20},
}

// ConsumerSpec is one row of the durable consumer table.
type ConsumerSpec struct {
	Stream         string
	Durable        string
	Description    string
	FilterSubjects []string
	// AckWait bounds how long a delivered message may stay unacknowledged
	// before the server redelivers it.
	AckWait time.Duration
	// MaxAckPending bounds the messages in flight across all replicas.
	MaxAckPending int
}

// Durable consumers, one per service and stream.
var (
	ConsumerInference = ConsumerSpec{StreamImages, "inference", "grades submitted images and tensors",
		[]string{SubjectImageSubmitted, SubjectTensorSubmitted}, 60 * time.Second, 1024}
	ConsumerAnnotator = ConsumerSpec{StreamAnnotations, "annotator", "stores annotations in MongoDB",
		[]string{SubjectAnnotationCreated, SubjectAnnotationUpdated, SubjectAnnotationDeleted}, 30 * time.Second, 4096}
	ConsumerAnnotatorCatalog = ConsumerSpec{StreamCatalog, "annotator-catalog", "stores the image catalogue in MongoDB",
		under(rootCatalog), 30 * time.Second, 4096}
	// ConsumerAnnotatorGrades keeps the grade history: one document per
	// grade, written whole from its result (which carries the submission's
	// time) or first as pending from a grade.pending event.
	ConsumerAnnotatorGrades = ConsumerSpec{StreamGrades, "annotator-grades", "stores grade history in MongoDB",
		under(rootGrades), 30 * time.Second, 4096}
	ConsumerAnalyticsIris = ConsumerSpec{StreamIris, "analytics-iris", "loads iris measurements into ClickHouse",
		[]string{SubjectIrisMeasured}, 60 * time.Second, 256}
	ConsumerAnalyticsGrades = ConsumerSpec{StreamGrades, "analytics-grades", "loads grades into ClickHouse",
		[]string{SubjectGradeCompleted, SubjectGradeFailed}, 60 * time.Second, 8192}
	ConsumerAnalyticsRegrades = ConsumerSpec{StreamRegrades, "analytics-regrades", "loads shadow grades into ClickHouse",
		[]string{SubjectGradeShadow}, 60 * time.Second, 8192}
	ConsumerAnalyticsAnnotations = ConsumerSpec{StreamAnnotations, "analytics-annotations", "loads annotation counts into ClickHouse",
		[]string{SubjectAnnotationCreated}, 60 * time.Second, 8192}
	// ConsumerIngestCallbacks delivers the results due at a callback_url
	// (SubjectGradeCallbackDue); a failed delivery is naked with the
	// retry's delay, so retries survive a restart of the edge. Results in
	// retry stay pending: MaxAckPending bounds them.
	ConsumerIngestCallbacks = ConsumerSpec{StreamCallbacks, "ingest-callbacks-due", "delivers grade results to their callback_url",
		[]string{SubjectGradeCallbackDue}, 60 * time.Second, 16384}
	// ConsumerIngestCallbacksLegacy is where callbacks were delivered from
	// before SubjectGradeCallbackDue: every result in GRADES, the few with
	// a callback_url delivered. It is draining (DrainingConsumers).
	ConsumerIngestCallbacksLegacy = ConsumerSpec{StreamGrades, "ingest-callbacks", "delivers grade results to their callback_url (results from before gradeline.callbacks.due; draining)",
		[]string{SubjectGradeCompleted, SubjectGradeFailed}, 60 * time.Second, 16384}
	ConsumerAnnotatorCallbacks = ConsumerSpec{StreamCallbacks, "annotator-callbacks", "stores callback attempts in MongoDB",
		[]string{SubjectGradeCallbackAttempted}, 30 * time.Second, 4096}
)

// Consumers is the table of durable consumers.
var Consumers = []ConsumerSpec{
	ConsumerInference, ConsumerAnnotator, ConsumerAnnotatorCatalog, ConsumerAnnotatorGrades, ConsumerAnalyticsIris, ConsumerAnalyticsGrades, ConsumerAnalyticsAnnotations, ConsumerAnalyticsRegrades,
	ConsumerIngestCallbacks, ConsumerAnnotatorCallbacks,
}

// RetiredConsumers are durables earlier versions created and this one no
// longer reads; EnsureStreams deletes them, so a server upgraded in place
// does not keep counting a backlog nobody will read.
var RetiredConsumers = []struct{ Stream, Durable string }{
	// Recorded every submission as a pending grade; results now carry
	// the whole grade, and grade.pending the ones answered before it.
	{StreamImages, "annotator-submissions"},
}

// DrainingConsumers are durables an earlier version created that their
// owner still reads, so that nothing they hold is lost, but never creates:
// results published by an older inference (with their callback_url in
// GRADES) are still delivered after an upgrade. EnsureStreams deletes
// one once it holds nothing, pending or unacknowledged.
var DrainingConsumers = []ConsumerSpec{ConsumerIngestCallbacksLegacy}

// Config returns the JetStream configuration of the consumer. MaxDeliver is
// unlimited on the server: Consume applies the delivery limit itself, so a
// message past it is dead-lettered with a reason instead of silently parked.
func (c ConsumerSpec) Config() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        c.Durable,
		Description:    c.Description,
		FilterSubjects: c.FilterSubjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        c.AckWait,
		MaxDeliver:     -1,
		MaxAckPending:  c.MaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
}

// TopologyOptions tune EnsureStreams, EnsureTopology and EnsureService for
// the deployment.
type TopologyOptions struct {
	// Replicas of every stream and the object store: 1 for a single
	// server, 3 for a production cluster.
	Replicas int
	// MaxBytesScale multiplies the size bound of every stream (0 = 1).
	// Tests shrink it; large deployments grow it.
	MaxBytesScale float64
	// Logger receives the error logged when a consumer had to be
	// repositioned, and EnsureService's "streams missing" warnings
	// (default slog.Default()).
	Logger *slog.Logger
	// StreamsWait bounds how long EnsureService waits for the streams
	// the service needs before it gives up (0 = DefaultStreamsWait).
	StreamsWait time.Duration
}

// DefaultStreamsWait is how long a starting service waits for its streams:
// long enough for the deploy step that creates them (the gradeline-setup
// Job, the compose setup service) to pull its image and run, short enough
// that a deployment that never runs it fails visibly (the process exits
// and its orchestrator restarts it, logging why).
const DefaultStreamsWait = 5 * time.Minute

func (o TopologyOptions) withDefaults() TopologyOptions {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.MaxBytesScale <= 0 {
		o.MaxBytesScale = 1
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.StreamsWait <= 0 {
		o.StreamsWait = DefaultStreamsWait
	}
	return o
}

// SetupHint says who creates the streams, for the messages of a service
// that finds them missing.
const SetupHint = "run `gradeline setup` as the operator (docker compose: the setup service; " +
	"Kubernetes: the gradeline-setup Job; the local stack does it itself)"

// ErrStreamsMissing is wrapped by the errors of a service that needs
// streams (or the image bucket) the server does not have: the deploy step
// that creates them (EnsureStreams, `gradeline setup`) has not run.
var ErrStreamsMissing = errors.New("streams missing")

// EnsureTopology creates or updates every stream, the image bucket and
// every durable consumer: EnsureStreams, then each consumer as its owner
// would. For tests and examples that play every role at once; a
// deployment runs EnsureStreams once and lets each service ensure its own
// consumers (EnsureService). It is idempotent.
func EnsureTopology(ctx context.Context, js jetstream.JetStream, opt TopologyOptions) error {
	if err := EnsureStreams(ctx, js, opt); err != nil {
		return err
	}
	for _, c := range Consumers {
		if _, err := ensureConsumer(ctx, js, c, opt.withDefaults().Logger); err != nil {
			return err
		}
	}
	return nil
}

// EnsureStreams creates or updates every stream of the table and the image
// bucket, and deletes RetiredConsumers, leaving the other consumers alone: the operator's deploy step (`gradeline
// setup`, the compose setup service, the Kubernetes Job, the local stack),
// run before the services start and again after an upgrade that changes
// the table. Services cannot do it: their NATS users may not create or
// update streams. It is idempotent: a second run, or two at once, changes
// nothing.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, opt TopologyOptions) error {
	opt = opt.withDefaults()
	for _, s := range Streams {
		_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        s.Name,
			Description: s.Description,
			Subjects:    s.Subjects,
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Discard:     jetstream.DiscardOld,
			MaxAge:      s.MaxAge,
			MaxBytes:    StreamMaxBytes(s, opt),
			Duplicates:  DuplicateWindow,
			Replicas:    opt.Replicas,
		})
		if err != nil {
			return fmt.Errorf("bus: stream %s: %w", s.Name, err)
		}
	}
	for _, c := range RetiredConsumers {
		err := js.DeleteConsumer(ctx, c.Stream, c.Durable)
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("bus: delete retired consumer %s/%s: %w", c.Stream, c.Durable, err)
		}
	}
	for _, c := range DrainingConsumers {
		if err := deleteDrained(ctx, js, c, opt.Logger); err != nil {
			return err
		}
	}
	if err := ensureImageBucket(ctx, js, opt.Replicas); err != nil {
		return err
	}
	return ensureModelStateBucket(ctx, js, opt.Replicas)
}

// deleteDrained deletes the draining consumer c if it exists and holds
// nothing; one that still holds messages is left to its owner.
func deleteDrained(ctx context.Context, js jetstream.JetStream, c ConsumerSpec, log *slog.Logger) error {
	cons, err := js.Consumer(ctx, c.Stream, c.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bus: draining consumer %s/%s: %w", c.Stream, c.Durable, err)
	}
	info := cons.CachedInfo()
	if info.NumPending > 0 || info.NumAckPending > 0 {
		log.Info("draining consumer still holds messages; it is deleted by a later setup once its owner has read them",
			"stream", c.Stream, "consumer", c.Durable, "pending", info.NumPending, "unacknowledged", info.NumAckPending)
		return nil
	}
	err = js.DeleteConsumer(ctx, c.Stream, c.Durable)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("bus: delete drained consumer %s/%s: %w", c.Stream, c.Durable, err)
	}
	log.Info("drained consumer deleted", "stream", c.Stream, "consumer", c.Durable)
	return nil
}

// EnsureConsumers creates or updates the durable consumers that belong to
// owner (ConsumerSpec.Owner) and no others: a service sets the settings of
// its own consumers only, so in a rolling upgrade an old replica of one
// service never rewrites the consumers of another.
func EnsureConsumers(ctx context.Context, js jetstream.JetStream, owner string, opt TopologyOptions) error {
	opt = opt.withDefaults()
	for _, c := range ConsumersOfUser(owner) {
		if _, err := ensureConsumer(ctx, js, c, opt.Logger); err != nil {
			return err
		}
	}
	return nil
}

// EnsureService is what a service does at start: it waits for the streams
// it needs (WaitForStreams; it never creates them), then ensures the
// durable consumers it owns (EnsureConsumers) and no others.
func EnsureService(ctx context.Context, js jetstream.JetStream, user string, opt TopologyOptions) error {
	if err := WaitForStreams(ctx, js, user, opt); err != nil {
		return err
	}
	return EnsureConsumers(ctx, js, user, opt)
}

// CheckStreams reports whether the streams user needs (StreamsNeededBy)
// are on the server: nil when they are, an error wrapping
// ErrStreamsMissing that names the missing ones and SetupHint when some
// are not, or the error that kept it from asking. A service's readiness
// check uses it, so a service without its streams is not ready.
func CheckStreams(ctx context.Context, js jetstream.JetStream, user string) error {
	missing, err := missingStreams(ctx, js, user)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("bus: %w: %s: %s", ErrStreamsMissing, strings.Join(missing, ", "), SetupHint)
	}
	return nil
}

// missingStreams returns the streams of StreamsNeededBy(user) the server lacks.
func missingStreams(ctx context.Context, js jetstream.JetStream, user string) ([]string, error) {
	var missing []string
	for _, name := range StreamsNeededBy(user) {
		_, err := js.Stream(ctx, name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			missing = append(missing, name)
		case err != nil:
			return nil, fmt.Errorf("bus: stream %s: %w", name, err)
		}
	}
	return missing, nil
}

// WaitForStreams returns once the streams user needs exist. While any is
// missing it polls (backing off to streamsPoll), logging a warning at
// once and then every streamsNag with the names and SetupHint; after
// opt.StreamsWait it gives up with CheckStreams' error (wrapping
// ErrStreamsMissing), so the process exits and its supervisor restarts it.
// Any other error ends the wait at once.
func WaitForStreams(ctx context.Context, js jetstream.JetStream, user string, opt TopologyOptions) error {
	opt = opt.withDefaults()
	start := time.Now()
	var nagged time.Time
	delay := 100 * time.Millisecond
	for {
		missing, err := missingStreams(ctx, js, user)
		if err != nil {
			return err
		}
		if len(missing) == 0 {
			if !nagged.IsZero() {
				opt.Logger.Info("streams found; starting", "service", user, "waited", time.Since(start).Round(time.Millisecond).String())
			}
			return nil
		}
		waited := time.Since(start)
		if waited >= opt.StreamsWait {
			return fmt.Errorf("bus: %w: %s: %s (gave up after %s)", ErrStreamsMissing, strings.Join(missing, ", "), SetupHint, opt.StreamsWait)
		}
		if nagged.IsZero() || time.Since(nagged) >= streamsNag {
			opt.Logger.Warn("streams missing: "+SetupHint+"; waiting for them", "service", user, "missing", missing,
				"waited", waited.Round(time.Second).String(), "gives_up_after", opt.StreamsWait.String())
			nagged = time.Now()
		}
		t := time.NewTimer(min(delay, opt.StreamsWait-waited))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("bus: waiting for streams: %w", ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, streamsPoll)
	}
}

// How often WaitForStreams asks at most, and how often it repeats its warning.
const (
	streamsPoll = 2 * time.Second
	streamsNag  = 30 * time.Second
)

// EnsureConsumer creates the durable consumer or brings an existing one to
// the table's settings. Where a replay moved its start (DeliverByStartTime),
// that start is kept: the server cannot change it and a restart must not undo it.
// A consumer whose position is beyond the end of its stream is
// repositioned (see CheckPosition), logging to slog.Default().
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec) (jetstream.Consumer, error) {
	return ensureConsumer(ctx, js, spec, slog.Default())
}

// ensureConsumer is EnsureConsumer with a logger. A JetStream API call
// that times out (a cluster electing a leader, a
// server too busy to answer within the client's 5 s) is tried again for
// up to ensureRetryFor, so a service does not fail its start on it.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, log *slog.Logger) (jetstream.Consumer, error) {
	start := time.Now()
	delay := 250 * time.Millisecond
	for {
		c, err := ensureConsumerOnce(ctx, js, spec, log)
		if err == nil || ctx.Err() != nil || !transientAPIError(err) || time.Since(start) > ensureRetryFor {
			return c, err
		}
		log.Warn("consumer not ensured yet; trying again", "consumer", spec.Durable, "err", err)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// ensureRetryFor bounds how long ensureConsumer tries again.
const ensureRetryFor = time.Minute

// transientAPIError reports a JetStream API call that got no answer in
// time, as opposed to one the server refused.
func transientAPIError(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

func ensureConsumerOnce(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, log *slog.Logger) (jetstream.Consumer, error) {
	cfg := spec.Config()
	if cur, err := js.Consumer(ctx, spec.Stream, spec.Durable); err == nil {
		moved, err := CheckPosition(ctx, js, spec, cur.CachedInfo(), log)
		if err != nil {
			return nil, err
		}
		if moved {
			return js.Consumer(ctx, spec.Stream, spec.Durable)
		}
		old := cur.CachedInfo().Config
		if sameSettings(old, cfg) {
			// Every replica of the owner ensures it at start: leave a
			// consumer that already matches untouched.
			return cur, nil
		}
		cfg.DeliverPolicy, cfg.OptStartTime, cfg.OptStartSeq = old.DeliverPolicy, old.OptStartTime, old.OptStartSeq
		c, err := js.UpdateConsumer(ctx, spec.Stream, cfg)
		if err != nil {
			return nil, fmt.Errorf("bus: consumer %s/%s: %w", spec.Stream, spec.Durable, err)
		}
		return c, nil
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("bus: consumer %s/%s: %w", spec.Stream, spec.Durable, err)
	}
	c, err := js.CreateOrUpdateConsumer(ctx, spec.Stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("bus: consumer %s/%s: %w", spec.Stream, spec.Durable, err)
	}
	return c, nil
}

// sameSettings reports whether a consumer has the settings the table gives it.
func sameSettings(have, want jetstream.ConsumerConfig) bool {
	return have.Description == want.Description && slices.Equal(have.FilterSubjects, want.FilterSubjects) &&
		have.AckPolicy == want.AckPolicy && have.AckWait == want.AckWait && have.MaxDeliver == want.MaxDeliver &&
		have.MaxAckPending == want.MaxAckPending
}

// Replay makes the durable consumer spec deliver its stream again, from
// the first message (since zero) or from the first message at or after
// since. The consumer is recreated under the same name, so the service
// that owns it picks the replay up without a restart; its idempotent
// writes (event id as key) turn replayed events that are already stored
// into no-ops.
func Replay(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, since time.Time) error {
	if err := js.DeleteConsumer(ctx, spec.Stream, spec.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("bus: replay %s: delete consumer: %w", spec.Durable, err)
	}
	cfg := spec.Config()
	if !since.IsZero() {
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &since
	}
	if _, err := js.CreateConsumer(ctx, spec.Stream, cfg); err != nil {
		return fmt.Errorf("bus: replay %s: %w", spec.Durable, err)
	}
	return nil
}

// CheckPosition repositions the durable consumer spec when it has delivered
// beyond the last sequence of its stream. That happens when the stream
// lost its tail (a damaged block file is cut at the damage when the server
// recovers it): new events get sequences the consumer believes it has
// already delivered, so none would ever reach it, silently. The consumer
// is logged as an error (stream, consumer, the gap) and reset to deliver
// from the first message still in the stream; every consumer
// writes idempotently (event id as key), so the replay stores nothing twice.
// info may be nil (it is then fetched). It reports whether it repositioned.
func CheckPosition(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, info *jetstream.ConsumerInfo, log *slog.Logger) (bool, error) {
	if log == nil {
		log = slog.Default()
	}
	if info == nil {
		c, err := js.Consumer(ctx, spec.Stream, spec.Durable)
		if err != nil {
			return false, fmt.Errorf("bus: consumer %s/%s: %w", spec.Stream, spec.Durable, err)
		}
		info = c.CachedInfo()
	}
	st, err := js.Stream(ctx, spec.Stream)
	if err != nil {
		return false, fmt.Errorf("bus: stream %s: %w", spec.Stream, err)
	}
	state := st.CachedInfo().State
	delivered := max(info.Delivered.Stream, info.AckFloor.Stream)
	if delivered <= state.LastSeq {
		return false, nil
	}
	log.Error("consumer is beyond the end of its stream: the stream lost messages (damaged or truncated store), "+
		"and new events would never be delivered; replaying the stream from its first message",
		"stream", spec.Stream, "consumer", spec.Durable, "consumer_delivered_seq", delivered,
		"stream_last_seq", state.LastSeq, "stream_first_seq", state.FirstSeq, "stream_msgs", state.Msgs,
		"gap", delivered-state.LastSeq)
	consumerRepositioned.WithLabelValues(spec.Durable).Inc()
	// Reset in place (the consumer keeps its name, settings and pullers;
	// a service may reset but never delete a consumer); a consumer whose
	// replayed start forbids that sequence is recreated instead.
	_, err = js.ResetConsumerToSequence(ctx, spec.Stream, spec.Durable, max(state.FirstSeq, 1))
	if errors.Is(err, jetstream.ErrConsumerInvalidReset) {
		err = Replay(ctx, js, spec, time.Time{})
	}
	if err != nil {
		return false, fmt.Errorf("bus: reposition consumer %s/%s: %w", spec.Stream, spec.Durable, err)
	}
	return true, nil
}

// ConsumersOf returns the durable consumers of a stream from the table.
func ConsumersOf(stream string) []ConsumerSpec {
	var out []ConsumerSpec
	for _, c := range Consumers {
		if c.Stream == stream {
			out = append(out, c)
		}
	}
	return out
}

// ImageStore returns the object store bucket for image bytes. It never
// creates it (EnsureStreams does): a missing bucket is an error wrapping
// ErrStreamsMissing.
func ImageStore(ctx context.Context, js jetstream.JetStream) (jetstream.ObjectStore, error) {
	os, err := js.ObjectStore(ctx, ImageBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("bus: object store %s: %w: %s", ImageBucket, ErrStreamsMissing, SetupHint)
	}
	if err != nil {
		return nil, fmt.Errorf("bus: object store %s: %w", ImageBucket, err)
	}
	return os, nil
}

// ensureImageBucket creates the image bucket when it is missing. An
// existing bucket is left as it is: its size bound and replicas are set
// once, at creation.
func ensureImageBucket(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := js.ObjectStore(ctx, ImageBucket)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("bus: object store %s: %w", ImageBucket, err)
	}
	_, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      ImageBucket,
		Description: "image bytes referenced by events (claim check)",
		Storage:     jetstream.FileStorage,
		Replicas:    max(1, replicas),
		MaxBytes:    ImageBucketMaxBytes,
	})
	if err != nil {
		return fmt.Errorf("bus: object store %s: %w", ImageBucket, err)
	}
	return nil
}

// ensureModelStateBucket creates the model state bucket when it is
// missing; like the image bucket, an existing one is left as it is.
func ensureModelStateBucket(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := js.KeyValue(ctx, ModelStateBucket)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("bus: key-value bucket %s: %w", ModelStateBucket, err)
	}
	_, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      ModelStateBucket,
		Description: "models unloaded through the repository API, for every inference replica",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(1, replicas),
		MaxBytes:    ModelStateBucketMaxBytes,
	})
	if err != nil {
		return fmt.Errorf("bus: key-value bucket %s: %w", ModelStateBucket, err)
	}
	return nil
}

// ModelStateStore returns the model state bucket. It never creates it
// (EnsureStreams does): a missing bucket is an error wrapping
// ErrStreamsMissing.
func ModelStateStore(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, ModelStateBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("bus: key-value bucket %s: %w: %s", ModelStateBucket, ErrStreamsMissing, SetupHint)
	}
	if err != nil {
		return nil, fmt.Errorf("bus: key-value bucket %s: %w", ModelStateBucket, err)
	}
	return kv, nil
}

// EnvReplicas is the environment variable that sets the replicas of every
// stream and the image bucket (`gradeline setup`) and of the key-value
// buckets the edge creates.
const EnvReplicas = "GRADELINE_REPLICAS"

// ReplicasFromEnv reads GRADELINE_REPLICAS: 1 when unset, else 1..5.
func ReplicasFromEnv() (int, error) { return ParseReplicas(os.Getenv(EnvReplicas)) }

// ParseReplicas parses a GRADELINE_REPLICAS value: 1 when empty, else 1..5.
func ParseReplicas(v string) (int, error) {
	if v == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 5 {
		return 0, fmt.Errorf("%s=%q: want an integer from 1 to 5 (3 on a cluster)", EnvReplicas, v)
	}
	return n, nil
}
