package inference

import (
	"context"
	"image"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/inference/internal/testenv"
)

// writeAtomically puts data at path by a rename, as a deployment should
// (the watcher also waits for a file to stay the same for one scan).
func writeAtomically(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// liveModel is what the models list says of model "live".
func liveModel(t testing.TB, s *stack) bus.ModelInfo {
	t.Helper()
	infos, err := bus.Request[[]bus.ModelInfo](t.Context(), s.nc, bus.SvcModelsList, bus.ModelsQuery{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range infos {
		if i.Name == "live" {
			return i
		}
	}
	t.Fatalf("live is not listed: %+v", infos)
	return bus.ModelInfo{}
}

// awaitModel polls the models list until ok holds (a bound turns a reload
// that never happens into a failure, not a hang).
func awaitModel(t testing.TB, s *stack, what string, ok func(bus.ModelInfo) bool) bus.ModelInfo {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		info := liveModel(t, s)
		if ok(info) {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the models list still says %+v", what, info)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func versionState(info bus.ModelInfo, v string) bus.ModelVersion {
	for _, mv := range info.Versions {
		if mv.Version == v {
			return mv
		}
	}
	return bus.ModelVersion{}
}

// Grades flow without a single failure while the model folder changes
// under the service: a new version (served at once, with its own
// behaviour), the same version changed in place, a broken copy of the
// served version and a broken new version (both reported, the previous
// one keeps serving).
func TestReloadWithoutDowntime(t *testing.T) {
	dir := t.TempDir()
	yaml := `name: live
input: {name: image, layout: NHWC, width: 224, height: 224, channels: 3}
output: {name: logits, kind: logits}
labels: [healthy, unhealthy]
max_batch: 8
preferred_batch: [4, 2]
`
	writeModelDir(t, filepath.Join(dir, "live"), nil, yaml)
	writeModelDir(t, filepath.Join(dir, "live", "1"), healthONNX(false), "")
	s, err := startStackPolling(testenv.ORTLib(t), 5*time.Millisecond, 50*time.Millisecond, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()

	red := image.NewRGBA(image.Rect(0, 0, 16, 16))
	for i := range red.Pix {
		if i%4 == 0 || i%4 == 3 {
			red.Pix[i] = 255
		}
	}
	ref := s.put(t, encodePNG(t, red))

	// Several clients grade continuously; every grade must complete.
	type result struct {
		version, label string
		failed         string
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	ctx, stop := context.WithCancel(t.Context())
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				ev := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: bus.NewID(), Owner: "tester", Model: "live", Image: ref}
				var r result
				if _, err := bus.Publish(t.Context(), s.js, ev); err != nil {
					r.failed = "publish: " + err.Error()
				} else {
					switch o := s.awaitOutcome(ev.ID, time.Minute).(type) {
					case *bus.GradeCompleted:
						r.version, r.label = o.ModelVersion, o.Label
					case *bus.GradeFailed:
						r.failed = o.Reason
					default:
						r.failed = "no outcome"
					}
				}
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		}()
	}
	// servedBy waits until some grade completed after now was served by
	// version with label.
	servedBy := func(version, label string) {
		t.Helper()
		mu.Lock()
		from := len(results)
		mu.Unlock()
		deadline := time.Now().Add(time.Minute)
		for {
			mu.Lock()
			var seen []result
			for _, r := range results[from:] {
				if r.version == version && r.label == label {
					mu.Unlock()
					return
				}
				seen = append(seen, r)
			}
			mu.Unlock()
			if time.Now().After(deadline) {
				t.Fatalf("no grade by version %s labelled %s; since: %v", version, label, seen)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	servedBy("1", "unhealthy")

	// A new version, which calls red healthy: it serves, alone (latest 1).
	writeAtomically(t, filepath.Join(dir, "live", "2", "model.onnx"), healthONNX(true))
	awaitModel(t, s, "version 2 served", func(i bus.ModelInfo) bool {
		return i.Version == "2" && strings.Join(i.ServedVersions(), ",") == "2" && versionState(i, "1").State == StateUnavailable
	})
	servedBy("2", "healthy")

	// Version 2 changed in place: the new copy serves.
	loaded := versionState(liveModel(t, s), "2").LoadedAt
	writeAtomically(t, filepath.Join(dir, "live", "2", "model.onnx"), healthONNX(false))
	awaitModel(t, s, "version 2 reloaded", func(i bus.ModelInfo) bool { return versionState(i, "2").LoadedAt.After(loaded) })
	servedBy("2", "unhealthy")

	// A broken copy of version 2: reported, the previous copy serves.
	loads := s.sumCounter(t, "gradeline_inference_model_loads_total", loadFailed)
	writeAtomically(t, filepath.Join(dir, "live", "2", "model.onnx"), []byte("truncated upload"))
	info := awaitModel(t, s, "broken copy reported", func(i bus.ModelInfo) bool { return versionState(i, "2").Error != "" })
	if v := versionState(info, "2"); v.State != StateReady || !strings.Contains(v.Error, "model.onnx") || !strings.Contains(v.Reason, "previous one serves") {
		t.Errorf("version 2 after a broken copy: %+v", v)
	}
	servedBy("2", "unhealthy")

	// A broken new version: reported, version 2 keeps serving.
	writeAtomically(t, filepath.Join(dir, "live", "3", "model.onnx"), []byte("not onnx either"))
	info = awaitModel(t, s, "broken version reported", func(i bus.ModelInfo) bool { return versionState(i, "3").Error != "" })
	if v := versionState(info, "3"); v.State != StateUnavailable || info.Version != "2" {
		t.Errorf("after a broken version 3: serving %s, version 3 %+v", info.Version, v)
	}
	servedBy("2", "unhealthy")
	if got := s.sumCounter(t, "gradeline_inference_model_loads_total", loadFailed); got < loads+2 {
		t.Errorf("failed loads counted %v, want at least %v", got, loads+2)
	}

	stop()
	wg.Wait()
	versions := map[string]int{}
	for _, r := range results {
		if r.failed != "" {
			t.Errorf("a grade failed during the reloads: %s", r.failed)
		}
		versions[r.version]++
	}
	if versions["1"] == 0 || versions["2"] == 0 {
		t.Errorf("grades by version %v", versions)
	}
	t.Logf("%d grades, by version %v", len(results), versions)

	// The Triton-style statistics are per model and version.
	for _, name := range []string{"gradeline_inference_request_success_total", "gradeline_inference_count_total", "gradeline_inference_exec_count_total"} {
		if v := s.readLabels(t, name, "live", "2"); v <= 0 {
			t.Errorf("%s{model=live,version=2} = %v", name, v)
		}
	}
	if inf, exec := s.readLabels(t, "gradeline_inference_count_total", "live", "1"), s.readLabels(t, "gradeline_inference_exec_count_total", "live", "1"); exec <= 0 || inf < exec {
		t.Errorf("version 1: %v inferences in %v executions", inf, exec)
	}
	for _, name := range []string{"gradeline_inference_queue_seconds", "gradeline_inference_compute_input_seconds", "gradeline_inference_compute_infer_seconds", "gradeline_inference_compute_output_seconds"} {
		if n := s.histogramCount(t, name, "live", "2"); n == 0 {
			t.Errorf("%s{model=live,version=2} has no observations", name)
		}
	}
}
