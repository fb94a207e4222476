package inference

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/inference/internal/testenv"
	"github.com/gradeline/gradeline/inference/onnxpb"
)

// writeDigitsAs writes the built-in digits model under another name with
// the given batching settings (lines of model.yaml).
func writeDigitsAs(t testing.TB, dir, name, batching string) {
	t.Helper()
	yaml := strings.Replace(string(readFile(t, filepath.Join("models", "digits", "model.yaml"))), "name: digits", "name: "+name, 1)
	yaml = strings.Replace(yaml, "max_batch: 32\n", batching, 1)
	writeModelDir(t, filepath.Join(dir, name), readFile(t, filepath.Join("models", "digits", "model.onnx")), yaml)
}

// writeNaNModel writes a model whose every score is NaN (sqrt(-1 - x)),
// with more lines of model.yaml (batching settings) when given.
func writeNaNModel(t testing.TB, dir, name, more string) {
	t.Helper()
	nan := onnxpb.Model{Graph: onnxpb.Graph{
		Nodes: []onnxpb.Node{
			{OpType: "Flatten", Inputs: []string{"x"}, Outputs: []string{"f"}, Attrs: []onnxpb.Attr{onnxpb.Int("axis", 1)}},
			{OpType: "Sub", Inputs: []string{"minus1", "f"}, Outputs: []string{"d"}},
			{OpType: "Sqrt", Inputs: []string{"d"}, Outputs: []string{"y"}},
		},
		Initializers: []onnxpb.Tensor{{Name: "minus1", Dims: []int64{1}, Float: []float32{-1}}},
		Inputs:       []onnxpb.ValueInfo{{Name: "x", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Param: "N"}, {Value: 1}, {Value: 1}, {Value: 2}}}},
		Outputs:      []onnxpb.ValueInfo{{Name: "y", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Param: "N"}, {Value: 2}}}},
	}}
	writeModelDir(t, filepath.Join(dir, name), nan.Marshal(), `name: `+name+`
input: {name: x, layout: NCHW, width: 2, height: 1, channels: 1}
output: {name: y, kind: probabilities}
labels: [a, b]
`+more)
}

// slowDelay is the max_queue_delay of the slow model: long enough that a
// loaded machine grades another model's images well within it.
const slowDelay = 5 * time.Second

// submitAll stores and submits the digits images i0..i0+n-1 for model,
// from several goroutines (submissions arrive in any order), and returns
// the grade ids in image order.
func (s *stack) submitAll(t *testing.T, model string, i0, n int) []string {
	t.Helper()
	set := heldOutDigits(t)
	refs := make([]bus.ImageRef, n)
	for i := range n {
		refs[i] = s.put(t, encodePNG(t, set.Image(i0+i)))
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				ids[i] = s.submit(t, model, refs[i])
			}
		})
	}
	wg.Wait()
	return ids
}

// histogramBelow is how many samples of the labelled histogram are at most
// le (a bucket bound).
func (s *stack) histogramBelow(t testing.TB, name, model, version string, le float64) uint64 {
	t.Helper()
	m := s.metric(t, name, model, version)
	if m == nil {
		return 0
	}
	for _, b := range m.GetHistogram().GetBucket() {
		if b.GetUpperBound() >= le {
			return b.GetCumulativeCount()
		}
	}
	return m.GetHistogram().GetSampleCount()
}

// Each model version has its own queue with its own settings: a long
// max_queue_delay holds up only its own model's images, preferred_batch
// sizes are the batches run, max_batch bounds them, and a model whose
// output is broken fails only its own grades.
func TestBatcherQueuePerModelVersion(t *testing.T) {
	dir := t.TempDir()
	writeDigitsAs(t, dir, "slow", fmt.Sprintf("max_batch: 64\nmax_queue_delay: %s\n", slowDelay))
	writeDigitsAs(t, dir, "pref4", "max_batch: 8\npreferred_batch: 4\nmax_queue_delay: 10s\n")
	writeDigitsAs(t, dir, "max3", "max_batch: 3\nmax_queue_delay: 10s\n")
	writeNaNModel(t, dir, "nan", "max_batch: 4\n")
	s, err := startStack(testenv.ORTLib(t), 20*time.Millisecond, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	set := heldOutDigits(t)
	digits := mustModel(t, testRegistry(t), "digits")
	wantLabel := func(i int) string {
		p, err := digits.Run([][]float32{digits.PreprocessImage(set.Image(i))})
		if err != nil {
			t.Fatal(err)
		}
		return p[0].Label
	}

	t.Run("a long delay holds up only its own model", func(t *testing.T) {
		// Submitted together: the slow model's two images wait for its
		// delay (two of 64 never fill a batch), the digits images do not.
		slow := s.submitAll(t, "slow", 0, 2)
		fast := s.submitAll(t, "digits", 0, 8)
		for i, id := range fast {
			if g := s.completed(t, id); g.Label != wantLabel(i) {
				t.Errorf("digits image %d graded %s, want %s", i, g.Label, wantLabel(i))
			}
		}
		s.mu.Lock()
		early := len(s.outcomes[slow[0]]) + len(s.outcomes[slow[1]])
		s.mu.Unlock()
		if early != 0 {
			t.Fatalf("the slow model's images were graded with the digits images (%d outcomes), not after its max_queue_delay", early)
		}
		for i, id := range slow {
			if g := s.completed(t, id); g.Label != wantLabel(i) || g.BatchSize != 2 {
				t.Errorf("slow image %d graded %s in a batch of %d, want %s in one batch of 2", i, g.Label, g.BatchSize, wantLabel(i))
			}
		}
		// The queue time is the slow model's own: both waited its delay.
		if n := s.histogramCount(t, "gradeline_inference_queue_seconds", "slow", "1"); n != 2 {
			t.Errorf("slow model: %d queue times, want 2", n)
		}
		if n := s.histogramBelow(t, "gradeline_inference_queue_seconds", "slow", "1", 3.2768); n != 0 {
			t.Errorf("slow model: %d queue times under 3.3 s, with a max_queue_delay of %s", n, slowDelay)
		}
	})

	for _, tc := range []struct {
		name, model string
		images      int
		batch       int // every batch run
	}{
		{"preferred_batch is the batch size run", "pref4", 12, 4},
		{"max_batch bounds the batches", "max3", 9, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids := s.submitAll(t, tc.model, 10, tc.images)
			for i, id := range ids {
				g := s.completed(t, id)
				if g.Label != wantLabel(10+i) || g.BatchSize != tc.batch {
					t.Errorf("image %d graded %s in a batch of %d, want %s in a batch of %d", i, g.Label, g.BatchSize, wantLabel(10+i), tc.batch)
				}
			}
			// The service counts a batch after its events are published.
			want := float64(tc.images / tc.batch)
			if n := s.counterLabels(t, "gradeline_inference_exec_count_total", tc.model, "1", want); n != want {
				t.Errorf("%v ONNX Runtime calls, want %v", n, want)
			}
			if n := s.readLabels(t, "gradeline_inference_count_total", tc.model, "1"); n != float64(tc.images) {
				t.Errorf("%v images run, want %d", n, tc.images)
			}
		})
	}

	t.Run("a broken model fails only its own grades", func(t *testing.T) {
		bad := s.submitAll(t, "nan", 20, 6)
		good := s.submitAll(t, "digits", 20, 6)
		for _, id := range bad {
			if f := s.failed(t, id); !strings.Contains(f.Reason, "non-finite score") {
				t.Errorf("NaN scores: reason %q", f.Reason)
			}
		}
		for i, id := range good {
			if g := s.completed(t, id); g.Label != wantLabel(20+i) {
				t.Errorf("digits image %d graded %s beside a broken model, want %s", i, g.Label, wantLabel(20+i))
			}
		}
	})
}

// counterLabels waits until the counter with the model and version labels
// reaches at least want and returns it.
func (s *stack) counterLabels(t testing.TB, name, model, version string, want float64) float64 {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		v := s.readLabels(t, name, model, version)
		if v >= want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runService starts another inference service (a replica) on the stack's
// NATS server and makes it the one the stack stops at close.
func (s *stack) runService(t *testing.T, modelsDirs ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- Run(ctx, Config{NATSURL: s.ns.ClientURL(), ModelsDirs: modelsDirs, ORTLib: testenv.ORTLib(t),
			Logger: quiet, Registerer: s.metrics, OnReady: func() { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("inference.Run: %v", err)
	}
	s.cancel, s.done = cancel, done
}

// stopService stops the stack's service and waits for Run to return.
func (s *stack) stopService(t *testing.T) {
	t.Helper()
	s.cancel()
	if err := <-s.done; err != nil {
		t.Fatalf("inference.Run returned %v", err)
	}
	s.done <- nil // for close
}

// A shutdown with images still queued loses none: they go back to the
// server and the next replica grades them, once each.
func TestShutdownReturnsQueuedImages(t *testing.T) {
	dir := t.TempDir()
	writeDigitsAs(t, dir, "slow", "max_batch: 64\nmax_queue_delay: 10s\n")
	s, err := startStack(testenv.ORTLib(t), 20*time.Millisecond, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	const n = 5
	ids := s.submitAll(t, "slow", 0, n)
	// All five are in the service's hands (delivered, not acked): in their
	// queue, which waits 10 s for more.
	waitConsumer(t, s, func(pending uint64, ackPending int) bool { return pending == 0 && ackPending == n })
	s.stopService(t)
	s.mu.Lock()
	for _, id := range ids {
		if len(s.outcomes[id]) != 0 {
			t.Errorf("grade %s published before its model's max_queue_delay", id)
		}
	}
	s.mu.Unlock()

	// The next replica serves the model with a short delay.
	dir2 := t.TempDir()
	writeDigitsAs(t, dir2, "slow", "max_batch: 64\nmax_queue_delay: 1ms\n")
	s.runService(t, dir2)
	set := heldOutDigits(t)
	digits := mustModel(t, testRegistry(t), "digits")
	for i, id := range ids {
		g := s.completed(t, id)
		p, err := digits.Run([][]float32{digits.PreprocessImage(set.Image(i))})
		if err != nil {
			t.Fatal(err)
		}
		if g.Label != p[0].Label {
			t.Errorf("image %d graded %s, want %s", i, g.Label, p[0].Label)
		}
	}
	waitConsumer(t, s, func(pending uint64, ackPending int) bool { return pending == 0 && ackPending == 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if k := len(s.outcomes[id]); k != 1 {
			t.Errorf("grade %s has %d outcomes, want 1", id, k)
		}
	}
}

// waitConsumer waits until the inference consumer's counts satisfy ok.
func waitConsumer(t *testing.T, s *stack, ok func(pending uint64, ackPending int) bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := s.js.Consumer(t.Context(), bus.StreamImages, bus.ConsumerInference.Durable)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if ok(info.NumPending, info.NumAckPending) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("inference consumer: pending %d, ack-pending %d", info.NumPending, info.NumAckPending)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The batcher's rules without the service: a queue runs the largest
// preferred batch size at once and keeps the rest for its delay (an hour
// here: never within the test), close returns what waits, and beyond
// maxWaiting the queues run early.
func TestBatcherRules(t *testing.T) {
	dir := t.TempDir()
	writeDigitsAs(t, dir, "pref4", "max_batch: 8\npreferred_batch: 4\n")
	writeDigitsAs(t, dir, "plain", "max_batch: 64\n")
	writeDigitsAs(t, dir, "delayed", "max_batch: 64\nmax_queue_delay: 10s\n")
	r := testRegistry(t, dir)
	set := heldOutDigits(t)
	for _, tc := range []struct {
		name       string
		model      string
		maxWaiting int
		jobs       int
		// nothingBehind: the job at this index (from 1; 0 for none) had
		// nothing behind its delivery on the server.
		nothingBehind int
		runs          []int // the batch sizes run, in order
	}{
		{"the largest preferred size runs at once", "pref4", 0, 6, 0, []int{4}},
		{"two preferred batches and a rest", "pref4", 0, 11, 0, []int{4, 4}},
		{"nothing full waits for its delay", "plain", 0, 5, 0, nil},
		{"beyond maxWaiting the queues run early", "plain", 3, 5, 0, []int{5}},
		{"nothing behind: a model without its own delay runs at once", "plain", 0, 3, 3, []int{3}},
		{"nothing behind, among others", "plain", 0, 5, 2, []int{5}},
		{"nothing behind does not cut a delay the manifest sets", "delayed", 0, 3, 3, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mustModel(t, r, tc.model)
			b := newBatcher(time.Hour, tc.maxWaiting, nil, quiet)
			done := make(chan *job, tc.jobs)
			jobs := make([]*job, tc.jobs)
			for i := range jobs {
				jobs[i] = &job{model: m, input: m.PreprocessImage(set.Image(i)), done: func(j *job) { done <- j }, last: i+1 == tc.nothingBehind}
			}
			b.add(t.Context(), jobs, nil)
			graded := 0
			for _, size := range tc.runs {
				for range size {
					j := <-done
					if j.pred == nil || j.pred.BatchSize != size {
						t.Fatalf("job done with %+v, want a prediction from a batch of %d", j, size)
					}
					graded++
				}
			}
			// What is left waits (for an hour): close returns it unhandled.
			b.close()
			for range tc.jobs - graded {
				if j := <-done; !j.shutdown || j.pred != nil {
					t.Fatalf("job left in the queue done with %+v, want returned at shutdown", j)
				}
			}
			select {
			case j := <-done:
				t.Fatalf("a job was done twice: %+v", j)
			default:
			}
		})
	}
}
