package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"mime/multipart"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// gradeWaiters dispatches grade results to the requests waiting for
// them, keyed by grade id. It reads the GRADES stream through one ordered
// consumer per server rather than a plain subscription: a result arrives
// only once the stream has stored it, with its stream sequence, so the
// edge hands out nothing the annotator cannot be asked to wait for
// (GradeGetQuery.AfterSeq). It holds nothing else: a grade is read from
// the annotator's record, never from here.
type gradeWaiters struct {
	mu      sync.Mutex
	waiting map[string]chan gradeResult
	stop    func()
}

// gradeResult is a result event and its GRADES stream sequence.
type gradeResult struct {
	ev  bus.Event
	seq uint64
}

func newGradeWaiters() *gradeWaiters {
	return &gradeWaiters{waiting: map[string]chan gradeResult{}}
}

// subscribe starts reading the results stored from now on.
func (g *gradeWaiters) subscribe(ctx context.Context, js jetstream.JetStream, log *slog.Logger) error {
	cons, err := js.OrderedConsumer(ctx, bus.StreamGrades, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{bus.SubjectGradeCompleted, bus.SubjectGradeFailed},
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		InactiveThreshold: 30 * time.Second,
		NamePrefix:        "ingest-waiters-" + randomHex(8),
	})
	if err != nil {
		return fmt.Errorf("grade results: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil {
			return
		}
		// Only a result someone waits for is decoded.
		if id, ok := bus.PeekGradeID(m.Data()); ok && !g.waits(id) {
			return
		}
		ev, err := bus.Decode(m.Data())
		if err != nil {
			log.Warn("undecodable grade result", "subject", m.Subject(), "err", err)
			return
		}
		g.deliver(gradeResult{ev, meta.Sequence.Stream})
	}, jetstream.PullMaxMessages(1024))
	if err != nil {
		return fmt.Errorf("grade results: %w", err)
	}
	g.stop = cc.Stop
	return nil
}

func (g *gradeWaiters) unsubscribe() {
	if g.stop != nil {
		g.stop()
	}
}

func gradeIDOf(ev bus.Event) string {
	switch e := ev.(type) {
	case *bus.GradeCompleted:
		return e.GradeID
	case *bus.GradeFailed:
		return e.GradeID
	}
	return ""
}

// waits reports whether a request waits for grade id.
func (g *gradeWaiters) waits(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.waiting[id]
	return ok
}

func (g *gradeWaiters) deliver(r gradeResult) {
	id := gradeIDOf(r.ev)
	if id == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if ch, ok := g.waiting[id]; ok {
		select {
		case ch <- r:
		default:
		}
	}
}

// add registers a waiter before the event is published, so a result that
// comes back at once is not missed.
func (g *gradeWaiters) add(id string) chan gradeResult {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch := make(chan gradeResult, 1)
	g.waiting[id] = ch
	return ch
}

func (g *gradeWaiters) remove(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.waiting, id)
}

// modelCache keeps the inference service's model list: every grade request
// checks its model against it. It answers from the last list it has and
// refreshes a list older than ttl in the background (stale-while-revalidate),
// so a slow or stopped inference replica never fails a submission; only
// the very first fetch, with no list yet, makes a request wait.
type modelCache struct {
	ttl time.Duration
	log *slog.Logger

	mu         sync.Mutex
	fetched    time.Time
	models     []bus.ModelInfo
	refreshing bool
}

func newModelCache(ttl time.Duration, log *slog.Logger) *modelCache {
	return &modelCache{ttl: ttl, log: log}
}

// refreshAfter lets a miss refetch a list older than this, so a model
// dropped in a moment ago is found without waiting out the whole ttl.
const refreshAfter = time.Second

// Each request for the list goes to one replica of the inference
// service's queue group, picked at random. A fetch sends waves of requests
// at once, each wave twice the last (1, 2, 4, 8), every request with a
// short deadline: the first answer wins, so a stopped replica that takes
// its share of requests and answers none delays the list by a wave or two
// instead of failing it (all 15 requests landing on it when one other
// replica is up: 1 in 32,768).
const (
	modelFetchAttempt = 1500 * time.Millisecond
	modelFetchWaves   = 4
)

// get returns the model list, starting a background refresh when it is
// older than the ttl.
func (m *modelCache) get(ctx context.Context, s *Server) ([]bus.ModelInfo, error) {
	m.mu.Lock()
	if m.fetched.IsZero() {
		m.mu.Unlock()
		return m.fetch(ctx, s)
	}
	models := m.models
	if time.Since(m.fetched) >= m.ttl && !m.refreshing {
		m.refreshing = true
		go func() {
			defer func() {
				m.mu.Lock()
				m.refreshing = false
				m.mu.Unlock()
			}()
			if _, err := m.fetch(context.Background(), s); err != nil {
				m.log.Warn("model list refresh failed; answering from the last list", "err", err)
			}
		}()
	}
	m.mu.Unlock()
	return models, nil
}

// has reports whether the service serves model (at version, when not
// ""). On a miss a list older than refreshAfter is refetched once; when
// that fails, the last list answers.
func (m *modelCache) has(ctx context.Context, s *Server, model, version string) ([]bus.ModelInfo, bool, error) {
	found := func(ms []bus.ModelInfo) bool {
		return slices.ContainsFunc(ms, func(mi bus.ModelInfo) bool { return mi.Name == model && mi.Served(version) })
	}
	models, err := m.get(ctx, s)
	if err != nil || found(models) {
		return models, err == nil, err
	}
	m.mu.Lock()
	age := time.Since(m.fetched)
	m.mu.Unlock()
	if age < refreshAfter {
		return models, false, nil
	}
	fresh, err := m.fetch(ctx, s)
	if err != nil {
		m.log.Warn("model list refresh failed; answering from the last list", "model", model, "err", err)
		return models, false, nil
	}
	return fresh, found(fresh), nil
}

// fetch asks the inference service for its models (retrying short attempts)
// and keeps the answer.
func (m *modelCache) fetch(ctx context.Context, s *Server) ([]bus.ModelInfo, error) {
	type answer struct {
		models []bus.ModelInfo
		err    error
	}
	var err error
	for wave := range modelFetchWaves {
		n := 1 << wave
		answers := make(chan answer, n)
		actx, cancel := context.WithTimeout(ctx, modelFetchAttempt)
		for range n {
			go func() {
				models, err := request[[]bus.ModelInfo](actx, s, bus.SvcModelsList, bus.ModelsQuery{})
				answers <- answer{models, err}
			}()
		}
		var models []bus.ModelInfo
		for range n {
			a := <-answers
			if a.err == nil {
				models, err = a.models, nil
				cancel() // the others need not wait
				break
			}
			err = a.err
			var be *bus.Error
			if errors.As(err, &be) {
				cancel()
				return nil, err
			}
		}
		cancel()
		if models == nil && err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			continue
		}
		slices.SortFunc(models, func(a, b bus.ModelInfo) int { return strings.Compare(a.Name, b.Name) })
		m.mu.Lock()
		m.models, m.fetched = models, time.Now()
		m.mu.Unlock()
		return models, nil
	}
	return nil, err
}

func (s *Server) listModels(c *fiber.Ctx) error {
	models, err := s.models.get(c.UserContext(), s)
	if err != nil {
		return err
	}
	if models == nil {
		models = []bus.ModelInfo{}
	}
	return c.JSON(fiber.Map{"data": models, "total": len(models)})
}

// A grade document (POST and GET /api/v1/grades) is the annotator's
// bus.Grade, made by bus.GradeFrom: one type and one conversion for the
// history and the HTTP reply.

func failedGrade(r bus.Grade) *apiError {
	return &apiError{Status: http.StatusUnprocessableEntity, Message: "grading failed: " + r.Reason,
		Details: []string{r.Reason}, Extra: map[string]any{"id": r.ID, "status": r.Status, "reason": r.Reason, "model": r.Model, "image_id": r.ImageID}}
}

// parseWait reads ?wait=: absent = the configured default, 0 = do not
// wait, N or a Go duration ("1500ms", "5s") up to a minute.
func parseWait(v string, def time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, ferr := strconv.ParseFloat(v, 64)
		if ferr != nil || math.IsNaN(secs) || secs < 0 || secs > maxGradeWait.Seconds() {
			return 0, invalid("invalid query", "wait: seconds (e.g. 5) or a duration (e.g. 1500ms)")
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d < 0 || d > maxGradeWait {
		return 0, invalid("invalid query", fmt.Sprintf("wait: must be between 0 and %s", maxGradeWait))
	}
	return d, nil
}

var validModel = validRef

// submitGrade stores the image (or puts a small one in the event),
// publishes the submission and waits for its result: 200 completed, 422
// failed, 202 + Location when not ready.
func (s *Server) submitGrade(c *fiber.Ctx) error {
	wait, err := parseWait(c.Query("wait"), s.cfg.GradeWait)
	if err != nil {
		return err
	}
	f, err := s.gradeForm(c)
	if err != nil {
		return err
	}
	ctx := c.UserContext()
	if err := s.knownModel(ctx, f.model, f.version); err != nil {
		return err
	}
	if err := s.checkCallback(ctx, f.callbackURL); err != nil {
		return err
	}
	imageID, ref, err := s.gradeImage(ctx, userOf(c), f)
	if err != nil {
		return err
	}
	ev := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: imageID, Owner: userOf(c), Model: f.model, ModelVersion: f.version, Image: ref,
		Catalogued: f.up == nil, CallbackURL: f.callbackURL}
	ev.ID = idFor(ctx, "grade")
	var ch chan gradeResult
	if wait > 0 {
		ch = s.grades.add(ev.ID)
		defer s.grades.remove(ev.ID)
	}
	// publish notes the submission's sequence for the owner (writerOf), so
	// a GET right after this answer reads it as pending, not unknown.
	if err := s.publish(ctx, ev); err != nil {
		return err
	}
	return s.answerGrade(c, ev, ch, wait)
}

// gradeRequest is a grade submission: the model and either an uploaded
// image or the id of a catalogue image the caller may see.
type gradeRequest struct {
	// model and version: "name@version" names a version ("" = the newest
	// served).
	model   string
	version string
	up      *upload
	imageID string
	// callbackURL is where the result is POSTed (callbacks.go), if anywhere.
	callbackURL string
}

// gradeForm reads a grade submission, every missing field named at once:
// a multipart form with the model (or the seed's model_selected) and the
// image file or an image_id, or JSON {"model", "image_id"}.
func (s *Server) gradeForm(c *fiber.Ctx) (gradeRequest, error) {
	var (
		f       gradeRequest
		form    *multipart.Form
		missing []string
	)
	if strings.HasPrefix(strings.ToLower(c.Get(fiber.HeaderContentType)), fiber.MIMEApplicationJSON) {
		var req struct {
			Model       string `json:"model"`
			ImageID     string `json:"image_id"`
			CallbackURL string `json:"callback_url"`
		}
		if err := decodeJSON(c.Body(), &req, true); err != nil {
			return f, err
		}
		f.model, f.imageID = strings.TrimSpace(req.Model), strings.TrimSpace(req.ImageID)
		f.callbackURL = strings.TrimSpace(req.CallbackURL)
		if f.imageID == "" {
			missing = append(missing, "image_id: required (the id of a catalogue image; upload a new image as multipart/form-data)")
		}
	} else {
		var err error
		if form, err = multipartForm(c); err != nil {
			return f, err
		}
		f.model, f.imageID = formValue(form, "model", "model_selected"), formValue(form, "image_id")
		f.callbackURL = formValue(form, "callback_url")
		if len(form.File["image"]) == 0 && f.imageID == "" {
			missing = append(missing, "image: required (a file field), or image_id of a catalogue image")
		}
	}
	if f.model == "" {
		missing = append([]string{"model: required (or model_selected)"}, missing...)
	}
	if len(missing) > 0 {
		return f, invalid("missing fields", missing...)
	}
	if form != nil && len(form.File["image"]) > 0 {
		if f.imageID != "" {
			return f, invalid("invalid request", "image, image_id: give one, not both")
		}
		var err error
		if f.up, err = readUpload(form, "image", s.cfg.MaxBodyBytes); err != nil {
			return f, err
		}
	}
	var err error
	if f.model, f.version, err = parseModelRef(f.model); err != nil {
		return f, err
	}
	return f, nil
}

// gradeImage is the image a submission grades: the upload under a new id,
// or the catalogue image the caller may see (404 otherwise), graded from
// the bytes already stored.
func (s *Server) gradeImage(ctx context.Context, user string, f gradeRequest) (string, bus.ImageRef, error) {
	if f.up == nil {
		img, err := s.getImageMeta(ctx, user, f.imageID)
		if err != nil {
			return "", bus.ImageRef{}, err
		}
		return img.ID, bus.ImageRef{Object: img.ID, SHA256: img.SHA256, ContentType: img.ContentType, Size: img.Size}, nil
	}
	id := idFor(ctx, "image")
	if ref, ok := inlineImage(id, f.up); ok {
		return id, ref, nil
	}
	ref, err := s.storeImage(ctx, id, f.up)
	return id, ref, err
}

// inlineImage is the reference of an upload small enough to travel in its
// event (bus.MaxInlineImageBytes): nothing is put in the object store, so
// the submission is stored, and the 2xx earned, by the one publish of the
// event, which holds the bytes for inference and for any replay. Only
// grades use it: nothing reads a graded upload back from the store (a
// catalogue image is always stored).
func inlineImage(id string, up *upload) (bus.ImageRef, bool) {
	if len(up.Data) > bus.MaxInlineImageBytes {
		return bus.ImageRef{}, false
	}
	return bus.ImageRef{Object: id, SHA256: up.SHA256, ContentType: up.ContentType, Size: int64(len(up.Data)), Data: up.Data}, true
}

// parseModelRef splits and checks a model reference "name[@version]".
func parseModelRef(ref string) (name, version string, err error) {
	name, version = bus.SplitModelRef(ref)
	if !validModel.MatchString(name) || (strings.Contains(ref, "@") && !validModel.MatchString(version)) {
		return "", "", invalid("invalid model name", "model: "+refRule+", optionally followed by @version (e.g. fashion@2)")
	}
	return name, version, nil
}

// knownModel is a 404 naming the available models for a model inference
// does not have, or the versions it serves for a version it does not.
func (s *Server) knownModel(ctx context.Context, model, version string) error {
	models, known, err := s.models.has(ctx, s, model, version)
	if err != nil || known {
		return err
	}
	if i := slices.IndexFunc(models, func(m bus.ModelInfo) bool { return m.Name == model }); i >= 0 {
		versions := models[i].ServedVersions()
		e := errorf(http.StatusNotFound, "model %q has no version %q; served versions: %s", model, version, strings.Join(versions, ", "))
		e.Extra = map[string]any{"available": versions}
		return e
	}
	names := make([]string, len(models))
	for i, m := range models {
		names[i] = m.Name
	}
	e := errorf(http.StatusNotFound, "unknown model %q; available models: %s", model, strings.Join(names, ", "))
	e.Extra = map[string]any{"available": names}
	return e
}

// answerGrade waits up to wait for the result on ch: 200 with it (or the
// failure), else 202 with the pending grade and its Location.
func (s *Server) answerGrade(c *fiber.Ctx, ev *bus.ImageSubmitted, ch chan gradeResult, wait time.Duration) error {
	location := "/api/v1/grades/" + ev.ID
	pending := func() error {
		// Answered before its result, the grade is recorded as pending:
		// a GET of Location must find it. A grade answered with its
		// result needs no record of its own (the result carries it). A
		// failed publish only delays the record until the result; the
		// submission is accepted either way.
		pe := bus.PendingOf(ev)
		pe.ID = idFor(c.UserContext(), "grade-pending")
		_ = s.publish(c.UserContext(), pe)
		c.Set(fiber.HeaderLocation, location)
		c.Set(fiber.HeaderRetryAfter, "1")
		return c.Status(http.StatusAccepted).JSON(bus.GradeFrom(ev, nil))
	}
	if wait == 0 {
		return pending()
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case out := <-ch:
		// The owner's next read waits for this result to be stored.
		s.writes.note(ev.Owner, bus.StreamGrades, out.seq)
		r := bus.GradeFrom(ev, out.ev)
		if r.Status == bus.GradeStatusFailed {
			return failedGrade(r)
		}
		c.Set(fiber.HeaderLocation, location)
		return c.JSON(r)
	case <-timer.C:
		return pending()
	case <-s.stopping:
		// The edge is shutting down: the grade is accepted and will be
		// done; the client polls Location rather than losing the answer.
		return pending()
	}
}

// getGrade answers the grade document: 200 when completed or failed (with
// the reason), 202 while pending. The annotator's record is the only
// source; AfterSeq makes a grade submitted a moment ago read as pending,
// and the annotator waits for stored results before it says pending (see
// bus.GradeGetQuery), so a result this edge returned is never read back
// as pending, even by another replica or after a restart.
func (s *Server) getGrade(c *fiber.Ctx) error {
	id := c.Params("id")
	user := userOf(c)
	if !validRef.MatchString(id) {
		return errorf(http.StatusNotFound, "grade %q not found", id)
	}
	g, err := request[bus.Grade](c.UserContext(), s, bus.SvcGradesGet, bus.GradeGetQuery{ID: id, Owner: user,
		AfterSeq: s.writes.after(user, bus.StreamGrades)})
	if err != nil {
		return err
	}
	if g.Status == bus.GradeStatusPending || g.Status == "" {
		g.Status = bus.GradeStatusPending
		c.Set(fiber.HeaderRetryAfter, "1")
		return c.Status(http.StatusAccepted).JSON(g)
	}
	return c.JSON(g)
}

// listGrades lists the caller's grades of one image.
func (s *Server) listGrades(c *fiber.Ctx) error {
	page, perPage, cursor, err := parsePage(c)
	if err != nil {
		return err
	}
	user := userOf(c)
	q := bus.GradesQuery{ImageID: c.Query("image_id"), Owner: user, Cursor: cursor, Page: page, PerPage: perPage,
		AfterSeq: s.writes.after(user, bus.StreamGrades)}
	switch {
	case q.ImageID == "":
		return invalid("invalid query", "image_id: required")
	case !validRef.MatchString(q.ImageID):
		return invalid("invalid query", "image_id: "+refRule)
	}
	return listReply[bus.Grade](c, s, bus.SvcGradesList, q)
}
