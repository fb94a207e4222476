package inference

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	natsd "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/inference/internal/testenv"
	"github.com/gradeline/gradeline/inference/onnxpb"
)

// stack is an embedded NATS server with the inference service running on
// it, shared by the tests of this file (started on first use).
type stack struct {
	ns      *natsd.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	store   jetstream.ObjectStore
	metrics *prometheus.Registry
	cancel  context.CancelFunc
	done    chan error
	tmp     string

	mu       sync.Mutex
	outcomes map[string][]bus.Event // by grade id
	arrived  chan struct{}          // closed and replaced on every outcome
}

var (
	stackOnce sync.Once
	theStack  *stack
	stackErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if theStack != nil {
		theStack.close()
	}
	os.Exit(code)
}

func getStack(t testing.TB) *stack {
	t.Helper()
	lib := testenv.ORTLib(t)
	users := userDir(t) // removed with the test that started the stack: the models are loaded by then
	// A queue delay long enough that concurrent submissions share batches.
	stackOnce.Do(func() { theStack, stackErr = startStack(lib, 20*time.Millisecond, users) })
	if stackErr != nil {
		t.Fatal(stackErr)
	}
	return theStack
}

func startStack(lib string, delay time.Duration, modelsDirs ...string) (*stack, error) {
	return startStackPolling(lib, delay, 0, modelsDirs...)
}

// startStackPolling starts a stack whose service scans its models folders
// every poll (0: the default).
func startStackPolling(lib string, delay, poll time.Duration, modelsDirs ...string) (*stack, error) {
	tmp, err := os.MkdirTemp("", "inference-test-")
	if err != nil {
		return nil, err
	}
	// The streams reserve their full size bounds (over 60 GB), more than a
	// test machine may have free; nothing near that is written.
	ns, err := natsserver.Start(natsserver.Config{Dir: tmp, MaxStore: 1 << 40, Setup: &bus.TopologyOptions{}})
	if err != nil {
		return nil, err
	}
	s := &stack{ns: ns, tmp: tmp, metrics: prometheus.NewRegistry(), done: make(chan error, 1),
		outcomes: map[string][]bus.Event{}, arrived: make(chan struct{})}
	log := quiet
	if os.Getenv("INFERENCE_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	ready := make(chan struct{})
	go func() {
		s.done <- Run(ctx, Config{
			NATSURL: ns.ClientURL(), ModelsDirs: modelsDirs, ORTLib: lib,
			MaxQueueDelay: delay, ModelsPoll: poll,
			Logger: log, Registerer: s.metrics,
			OnReady: func() { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-s.done:
		return nil, fmt.Errorf("inference.Run: %v", err)
	}
	if s.nc, s.js, err = bus.Connect(ctx, ns.ClientURL(), "inference-test", log); err != nil {
		return nil, err
	}
	if s.store, err = bus.ImageStore(ctx, s.js); err != nil {
		return nil, err
	}
	// Every outcome event, as any downstream subscriber sees them.
	cons, err := s.js.OrderedConsumer(ctx, bus.StreamGrades, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	if _, err := cons.Consume(func(m jetstream.Msg) {
		ev, err := bus.Decode(m.Data())
		if err != nil {
			panic(fmt.Sprintf("undecodable grade event: %v", err))
		}
		var id string
		switch e := ev.(type) {
		case *bus.GradeCompleted:
			id = e.GradeID
		case *bus.GradeFailed:
			id = e.GradeID
		}
		s.mu.Lock()
		s.outcomes[id] = append(s.outcomes[id], ev)
		close(s.arrived)
		s.arrived = make(chan struct{})
		s.mu.Unlock()
	}); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *stack) close() {
	s.cancel()
	if err := <-s.done; err != nil {
		fmt.Fprintln(os.Stderr, "inference.Run returned:", err)
	}
	s.nc.Close()
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	os.RemoveAll(s.tmp)
}

// put stores bytes in the image bucket and returns their reference.
func (s *stack) put(t testing.TB, data []byte) bus.ImageRef {
	t.Helper()
	sum := sha256.Sum256(data)
	name := "images/" + bus.NewID()
	if _, err := s.store.PutBytes(t.Context(), name, data); err != nil {
		t.Fatal(err)
	}
	return bus.ImageRef{Object: name, SHA256: hex.EncodeToString(sum[:]), ContentType: "application/octet-stream", Size: int64(len(data))}
}

// submit publishes an ImageSubmitted event for ref and returns its id.
func (s *stack) submit(t testing.TB, model string, ref bus.ImageRef) string {
	t.Helper()
	ev := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: bus.NewID(), Owner: "tester", Model: model, Image: ref}
	if _, err := bus.Publish(t.Context(), s.js, ev); err != nil {
		t.Fatal(err)
	}
	return ev.ID
}

// outcome waits for the first outcome event of a grade.
func (s *stack) outcome(t testing.TB, gradeID string) bus.Event {
	t.Helper()
	// A bound so a lost message fails the test instead of hanging it.
	deadline := time.After(2 * time.Minute)
	for {
		s.mu.Lock()
		evs, arrived := s.outcomes[gradeID], s.arrived
		s.mu.Unlock()
		if len(evs) > 0 {
			return evs[0]
		}
		select {
		case <-arrived:
		case <-deadline:
			t.Fatalf("no outcome for grade %s", gradeID)
		}
	}
}

func (s *stack) completed(t testing.TB, gradeID string) *bus.GradeCompleted {
	t.Helper()
	ev := s.outcome(t, gradeID)
	c, ok := ev.(*bus.GradeCompleted)
	if !ok {
		t.Fatalf("grade %s: %T %+v, want completed", gradeID, ev, ev)
	}
	return c
}

func (s *stack) failed(t testing.TB, gradeID string) *bus.GradeFailed {
	t.Helper()
	ev := s.outcome(t, gradeID)
	f, ok := ev.(*bus.GradeFailed)
	if !ok {
		t.Fatalf("grade %s: %T %+v, want failed", gradeID, ev, ev)
	}
	return f
}

func checkScores(t testing.TB, g *bus.GradeCompleted, labels []string) {
	t.Helper()
	var sum float64
	for _, l := range labels {
		p, ok := g.Scores[l]
		if !ok || p < 0 || p > 1 {
			t.Fatalf("scores %v lack label %q", g.Scores, l)
		}
		sum += p
		if p > g.Scores[g.Label] {
			t.Fatalf("label %s is not the argmax of %v", g.Label, g.Scores)
		}
	}
	if len(g.Scores) != len(labels) || math.Abs(sum-1) > 1e-4 || g.Score != g.Scores[g.Label] {
		t.Fatalf("scores %v (sum %v), score %v", g.Scores, sum, g.Score)
	}
	if g.BatchSize < 1 || g.InferenceMS <= 0 {
		t.Fatalf("batch size %d, inference %v ms", g.BatchSize, g.InferenceMS)
	}
}

// Real photographs, graded end to end through JetStream by a built-in
// model and by the user's two-class RGB model from GRADELINE_MODELS_DIR.
func TestGradeRealPhotographsThroughTheBus(t *testing.T) {
	s := getStack(t)
	for _, name := range []string{"retina.jpg", "flower.jpg"} {
		t.Run(name, func(t *testing.T) {
			data := readFile(t, testenv.Dataset(t, filepath.Join("images", name)))
			ref := s.put(t, data)
			health := s.submit(t, "retina-health", ref)
			fashion := s.submit(t, "fashion", ref)

			g := s.completed(t, health)
			checkScores(t, g, []string{"healthy", "unhealthy"})
			img, _, err := DecodeImage(data)
			if err != nil {
				t.Fatal(err)
			}
			r, gr := meanRedGreen(img)
			want := "healthy"
			if r > gr {
				want = "unhealthy"
			}
			// The rule's score: softmax of 10*(R-G)/255 against its negative.
			wantP := 1 / (1 + math.Exp(-20*(r-gr)/255))
			if g.Label != want || math.Abs(g.Scores["unhealthy"]-wantP) > 0.02 {
				t.Errorf("graded %s %v; mean red %.1f green %.1f gives %s with p(unhealthy)=%.3f", g.Label, g.Scores, r, gr, want, wantP)
			}
			if g.Model != "retina-health" || g.ModelVersion != "3" || g.ImageID == "" || g.Owner != "tester" || g.ID == health {
				t.Errorf("event fields: %+v", g)
			}
			f := s.completed(t, fashion)
			checkScores(t, f, mustModel(t, testRegistry(t), "fashion").Labels)
			if f.ModelVersion != "1" {
				t.Errorf("fashion version %q", f.ModelVersion)
			}
		})
	}
}

func TestGradeEveryFormatThroughTheBus(t *testing.T) {
	s := getStack(t)
	img := heldOutDigits(t).Image(0) // a 4
	tests := []struct {
		name, model, want string
		data              []byte
	}{
		{"png", "digits", "4", encodePNG(t, img)},
		{"jpeg", "digits", "4", encodeJPEG(t, img, 100)},
		{"gif", "digits", "4", encodeGIF(t, img)},
		{"bmp", "digits", "4", encodeBMP(t, img)},
		{"webp-lossless", "digits", "4", readFile(t, filepath.Join("testdata", "digit-4-lossless.webp"))},
		{"webp-lossy", "fashion", "ankle-boot", readFile(t, filepath.Join("testdata", "ankle-boot-lossy.webp"))},
	}
	ids := make([]string, len(tests))
	for i, tc := range tests {
		ids[i] = s.submit(t, tc.model, s.put(t, tc.data))
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := s.completed(t, ids[i])
			if g.Label != tc.want {
				t.Errorf("graded %s (%v), want %s", g.Label, g.Scores, tc.want)
			}
		})
	}
}

// Concurrent submissions are graded in shared ONNX Runtime calls, and
// every grade carries the scores of its own image.
func TestDynamicBatching(t *testing.T) {
	s := getStack(t)
	digits := mustModel(t, testRegistry(t), "digits")
	set := heldOutDigits(t)
	const n = 64
	type want struct {
		label  string
		scores []float32
	}
	wants := make([]want, n)
	datas := make([][]byte, n)
	for i := range n {
		p, err := digits.Run([][]float32{digits.PreprocessImage(set.Image(i))})
		if err != nil {
			t.Fatal(err)
		}
		wants[i] = want{p[0].Label, p[0].Scores}
		datas[i] = encodePNG(t, set.Image(i))
	}
	refs := make([]bus.ImageRef, n)
	for i := range n {
		refs[i] = s.put(t, datas[i])
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				ids[i] = s.submit(t, "digits", refs[i])
			}
		})
	}
	wg.Wait()
	maxBatch := 0
	for i := range n {
		g := s.completed(t, ids[i])
		maxBatch = max(maxBatch, g.BatchSize)
		if g.Label != wants[i].label {
			t.Errorf("image %d graded %s, want %s", i, g.Label, wants[i].label)
		}
		for j, l := range digits.Labels {
			if math.Abs(g.Scores[l]-float64(wants[i].scores[j])) > 1e-5 {
				t.Fatalf("image %d: score of %s is %v, graded alone %v: results went to the wrong image", i, l, g.Scores[l], wants[i].scores[j])
			}
		}
		if g.BatchSize > digits.MaxBatch {
			t.Errorf("batch of %d exceeds max_batch %d", g.BatchSize, digits.MaxBatch)
		}
	}
	t.Logf("largest batch: %d", maxBatch)
	if maxBatch <= 1 {
		t.Errorf("64 concurrent submissions were graded one at a time")
	}
	if c := s.counter(t, "gradeline_inference_grades_completed_total", "digits", n); c < n {
		t.Errorf("completed counter %v, want >= %d", c, n)
	}
}

// counter waits until the labelled counter of the service's registry
// reaches at least want and returns it. The service counts an event after
// its publish returns, which may be after a subscriber has seen it.
func (s *stack) counter(t testing.TB, name, label string, want float64) float64 {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		v := s.read(t, name, label)
		if v >= want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *stack) read(t testing.TB, name, label string) float64 {
	t.Helper()
	mfs, err := s.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// Images that can never be graded end as grade-failed events with the
// reason, once; they do not stop the batch they came in.
func TestFailedGrades(t *testing.T) {
	s := getStack(t)
	good := encodeJPEG(t, heldOutDigits(t).Image(0), 90)
	wrongSum := s.put(t, good)
	wrongSum.SHA256 = strings.Repeat("ab", 32)
	tests := []struct {
		name, model string
		ref         bus.ImageRef
		want        []string
	}{
		{"text", "digits", s.put(t, []byte("this is not an image")), []string{"cannot be decoded", "not a JPEG, PNG, GIF, WebP or BMP"}},
		{"zero-byte", "digits", s.put(t, nil), []string{"cannot be decoded", "empty file"}},
		{"truncated-jpeg", "digits", s.put(t, good[:len(good)/2]), []string{"cannot be decoded", "jpeg"}},
		{"png-bomb", "digits", s.put(t, pngHeader(100000, 100000)), []string{"100000x100000", "limit"}},
		{"unknown-model", "no-such-model", s.put(t, good), []string{`unknown model "no-such-model"`, "digits", "fashion", "retina-health"}},
		{"broken-model", "garbage-onnx", s.put(t, good), []string{`unknown model "garbage-onnx"`}},
		{"missing-object", "digits", bus.ImageRef{Object: "images/never-stored", SHA256: strings.Repeat("0", 64)}, []string{"not found"}},
		{"checksum-mismatch", "digits", wrongSum, []string{"sha256"}},
	}
	ids := make([]string, len(tests))
	for i, tc := range tests {
		ids[i] = s.submit(t, tc.model, tc.ref)
	}
	// A good image in the same stream of batches is still graded.
	ok := s.submit(t, "digits", s.put(t, good))
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := s.failed(t, ids[i])
			for _, w := range tc.want {
				if !strings.Contains(f.Reason, w) {
					t.Errorf("reason %q does not mention %q", f.Reason, w)
				}
			}
			if f.Model != tc.model || f.Owner != "tester" || f.ImageID == "" {
				t.Errorf("event fields %+v", f)
			}
		})
	}
	if g := s.completed(t, ok); g.Label != "4" {
		t.Errorf("good image graded %s", g.Label)
	}
	if c := s.counter(t, "gradeline_inference_grades_failed_total", failUndecodable, 4); c < 4 {
		t.Errorf("undecodable counter %v, want >= 4", c)
	}
}

// A submission delivered twice (stored twice, as after a lost ack) gives
// one outcome event: both carry the same id, and the stream drops the
// second.
func TestRedeliveryPublishesOneOutcome(t *testing.T) {
	s := getStack(t)
	ev := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: bus.NewID(), Owner: "tester", Model: "digits",
		Image: s.put(t, encodePNG(t, heldOutDigits(t).Image(1)))}
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	// Raw publishes without Nats-Msg-Id, so the IMAGES stream keeps both.
	var last uint64
	for range 2 {
		ack, err := s.js.Publish(t.Context(), bus.SubjectImageSubmitted, data)
		if err != nil {
			t.Fatal(err)
		}
		last = ack.Sequence
	}
	first := s.completed(t, ev.ID)
	// Wait until the consumer has handled both copies (past the second:
	// the server tells a consumer of new messages asynchronously, so its
	// info alone may not count it yet).
	for {
		info, err := s.js.Consumer(t.Context(), bus.StreamImages, bus.ConsumerInference.Durable)
		if err != nil {
			t.Fatal(err)
		}
		ci := info.CachedInfo()
		if ci.NumPending == 0 && ci.NumAckPending == 0 && ci.Delivered.Stream >= last {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The grade stream holds one outcome for this grade.
	n := 0
	msgs, err := s.js.OrderedConsumer(t.Context(), bus.StreamGrades, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := msgs.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	batch, err := msgs.FetchNoWait(int(info.NumPending))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if strings.Contains(string(m.Data()), ev.ID) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d outcome events for one grade delivered twice, want 1", n)
	}
	if first.ID != outcomeMeta(bus.TypeGradeCompleted, ev.ID).ID {
		t.Errorf("outcome id %s is not derived from the grade id", first.ID)
	}
}

func TestOutcomeIDs(t *testing.T) {
	grade := bus.NewID()
	a, b := outcomeMeta(bus.TypeGradeCompleted, grade), outcomeMeta(bus.TypeGradeFailed, grade)
	if a.ID != b.ID || a.ID == grade {
		t.Errorf("ids %s %s for grade %s", a.ID, b.ID, grade)
	}
	u, err := uuid.Parse(a.ID)
	if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 {
		t.Fatalf("%s is not a UUIDv7: %v", a.ID, err)
	}
	g := uuid.MustParse(grade)
	if string(u[:6]) != string(g[:6]) {
		t.Errorf("outcome id %s does not carry the grade's timestamp %s", a.ID, grade)
	}
	if outcomeMeta(bus.TypeGradeCompleted, bus.NewID()).ID == a.ID {
		t.Error("two grades share an outcome id")
	}
	if _, err := uuid.Parse(outcomeMeta(bus.TypeGradeFailed, "not-a-uuid").ID); err != nil {
		t.Error(err)
	}
}

func TestModelsListService(t *testing.T) {
	s := getStack(t)
	infos, err := bus.Request[[]bus.ModelInfo](t.Context(), s.nc, bus.SvcModelsList, bus.ModelsQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range infos {
		names = append(names, m.Name)
		if len(m.Labels) == 0 || m.Input.Width == 0 || m.MaxBatch == 0 {
			t.Errorf("incomplete info %+v", m)
		}
		if m.Name == "fashion" && (m.Accuracy < 0.85 || m.Input.Width != 28 || m.Input.Channels != 1 || len(m.Labels) != 10) {
			t.Errorf("fashion info %+v", m)
		}
	}
	if got := strings.Join(names, ","); got != "digits,fashion,retina-health" {
		t.Errorf("models %s", got)
	}
	// A malformed request is a 400, not a crash.
	msg, err := s.nc.Request(bus.SvcModelsList, []byte("{"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "400" {
		t.Errorf("malformed request answered with code %q: %s", code, msg.Data)
	}
}

func TestRunConfigErrors(t *testing.T) {
	err := Run(t.Context(), Config{ORTLib: testenv.ORTLib(t)})
	if err == nil || !strings.Contains(err.Error(), "NATS_URL") {
		t.Errorf("without a NATS URL: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	err = Run(ctx, Config{NATSURL: "nats://127.0.0.1:1", ORTLib: testenv.ORTLib(t), Logger: quiet, Registerer: prometheus.NewRegistry()})
	if err == nil || !strings.Contains(err.Error(), "connect") {
		t.Errorf("with no server: %v", err)
	}
}

// A model that fails in ONNX Runtime is retried with backoff, publishes
// nothing meanwhile, and does not hold up the other models; a model whose
// scores are not numbers fails the grade with the reason.
func TestModelFailures(t *testing.T) {
	dir := t.TempDir()
	// Seven scores per image, reshaped to rows of 7 + sign(sum |x|):
	// the zero input of the load's warm-up passes, and any real image
	// (8 columns of 7 values) fails, but only the run finds out.
	g := onnxpb.Graph{
		Nodes: []onnxpb.Node{
			{OpType: "Flatten", Inputs: []string{"x"}, Outputs: []string{"f"}, Attrs: []onnxpb.Attr{onnxpb.Int("axis", 1)}},
			{OpType: "MatMul", Inputs: []string{"f", "w"}, Outputs: []string{"z"}},
			{OpType: "Abs", Inputs: []string{"x"}, Outputs: []string{"a"}},
			{OpType: "ReduceSum", Inputs: []string{"a"}, Outputs: []string{"sum"}, Attrs: []onnxpb.Attr{onnxpb.Int("keepdims", 0)}},
			{OpType: "Sign", Inputs: []string{"sum"}, Outputs: []string{"sign"}},
			{OpType: "Cast", Inputs: []string{"sign"}, Outputs: []string{"signi"}, Attrs: []onnxpb.Attr{onnxpb.Int("to", onnxpb.Int64)}},
			{OpType: "Add", Inputs: []string{"signi", "seven"}, Outputs: []string{"cols"}},
			{OpType: "Concat", Inputs: []string{"minus1", "cols"}, Outputs: []string{"shape"}, Attrs: []onnxpb.Attr{onnxpb.Int("axis", 0)}},
			{OpType: "Reshape", Inputs: []string{"z", "shape"}, Outputs: []string{"y"}},
		},
		Initializers: []onnxpb.Tensor{
			{Name: "w", Dims: []int64{2, 7}, Float: make([]float32, 14)},
			{Name: "seven", Dims: []int64{1}, Int64: []int64{7}},
			{Name: "minus1", Dims: []int64{1}, Int64: []int64{-1}},
		},
		Inputs:  []onnxpb.ValueInfo{{Name: "x", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Param: "N"}, {Value: 1}, {Value: 1}, {Value: 2}}}},
		Outputs: []onnxpb.ValueInfo{{Name: "y", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Param: "M"}, {Param: "C"}}}},
	}
	m := onnxpb.Model{Graph: g}
	writeModelDir(t, filepath.Join(dir, "flaky"), m.Marshal(), `name: flaky
input: {name: x, layout: NCHW, width: 2, height: 1, channels: 1}
output: {name: y, kind: logits}
labels: [a, b, c, d, e, f, g]
`)
	writeNaNModel(t, dir, "nan", "")
	s, err := startStack(testenv.ORTLib(t), 20*time.Millisecond, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	img := encodePNG(t, heldOutDigits(t).Image(0))
	bad := s.submit(t, "flaky", s.put(t, img))
	good := s.submit(t, "digits", s.put(t, img))
	if f := s.failed(t, s.submit(t, "nan", s.put(t, img))); !strings.Contains(f.Reason, "non-finite score") {
		t.Errorf("NaN scores: reason %q", f.Reason)
	}
	if g := s.completed(t, good); g.Label != "4" {
		t.Errorf("digits graded %s while another model fails", g.Label)
	}
	// Wait for the third delivery of the failing submission.
	for {
		info, err := s.js.Consumer(t.Context(), bus.StreamImages, bus.ConsumerInference.Durable)
		if err != nil {
			t.Fatal(err)
		}
		ci := info.CachedInfo()
		if ci.NumRedelivered >= 1 && ci.Delivered.Consumer >= 5 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.mu.Lock()
	n := len(s.outcomes[bad])
	s.mu.Unlock()
	if n != 0 {
		t.Errorf("a failing run published %d outcomes; it should be retried", n)
	}
}

// Objects are read whole through direct gets and through the Get fallback,
// whatever their number of chunks.
func TestObjectReader(t *testing.T) {
	s := getStack(t)
	direct := newObjectReader(t.Context(), s.js, s.store)
	if direct.stream == nil {
		t.Fatal("the image bucket's stream does not allow direct gets")
	}
	fallback := &objectReader{store: s.store}
	for _, size := range []int{0, 1, 128 << 10, 128<<10 + 1, 700 << 10} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7 / 3)
		}
		ref := s.put(t, data)
		for name, r := range map[string]*objectReader{"direct": direct, "fallback": fallback} {
			got, err := r.read(t.Context(), ref.Object, MaxImageBytes)
			if err != nil || string(got) != string(data) {
				t.Errorf("%s, %d bytes: read %d bytes, %v", name, size, len(got), err)
			}
			if size > 1 {
				if _, err := r.read(t.Context(), ref.Object, int64(size-1)); !errors.Is(err, errTooLarge) {
					t.Errorf("%s: over the limit: %v", name, err)
				}
			}
		}
	}
	ref := s.put(t, []byte("soon deleted"))
	if err := s.store.Delete(t.Context(), ref.Object); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.read(t.Context(), ref.Object, MaxImageBytes); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("deleted object: %v", err)
	}
}

// awaitOutcome waits up to d for the first outcome of a grade (nil when
// none came), for goroutines that may not call t.Fatal.
func (s *stack) awaitOutcome(gradeID string, d time.Duration) bus.Event {
	deadline := time.After(d)
	for {
		s.mu.Lock()
		evs, arrived := s.outcomes[gradeID], s.arrived
		s.mu.Unlock()
		if len(evs) > 0 {
			return evs[0]
		}
		select {
		case <-arrived:
		case <-deadline:
			return nil
		}
	}
}

// readLabels reads a counter with the model and version labels.
func (s *stack) readLabels(t testing.TB, name, model, version string) float64 {
	t.Helper()
	if m := s.metric(t, name, model, version); m != nil {
		return m.GetCounter().GetValue()
	}
	return 0
}

// histogramCount reads the count of a histogram with the model and
// version labels.
func (s *stack) histogramCount(t testing.TB, name, model, version string) uint64 {
	t.Helper()
	if m := s.metric(t, name, model, version); m != nil {
		return m.GetHistogram().GetSampleCount()
	}
	return 0
}

// sumCounter adds up the series of a counter with a label of that value.
func (s *stack) sumCounter(t testing.TB, name, value string) float64 {
	t.Helper()
	mfs, err := s.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

func (s *stack) metric(t testing.TB, name, model, version string) *dto.Metric {
	t.Helper()
	mfs, err := s.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["model"] == model && labels["version"] == version {
				return m
			}
		}
	}
	return nil
}
