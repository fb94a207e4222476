package inference

import (
	"errors"
	"fmt"
	"image"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/inference/internal/datasets"
	"github.com/gradeline/gradeline/inference/internal/testenv"
	"github.com/gradeline/gradeline/inference/onnxpb"
)

// The shipped models reach the accuracy their manifest claims, through
// ONNX Runtime and the service's preprocessing, on the real test data.
func TestShippedModelsAccuracy(t *testing.T) {
	dir := testenv.DatasetsDir(t)
	r := testRegistry(t)
	tests := []struct {
		model string
		bar   float64
		test  func() (*datasets.Set, error)
	}{
		{"fashion", 0.85, func() (*datasets.Set, error) { _, s, err := datasets.Fashion(dir); return s, err }},
		{"digits", 0.90, func() (*datasets.Set, error) { _, s, err := datasets.Digits(dir); return s, err }},
	}
	for _, tc := range tests {
		t.Run(tc.model, func(t *testing.T) {
			m := mustModel(t, r, tc.model)
			if m.Source != "builtin/"+tc.model {
				t.Errorf("source %q, want the embedded folder", m.Source)
			}
			set, err := tc.test()
			if err != nil {
				t.Fatal(err)
			}
			acc, err := datasets.Accuracy(set, m.MaxBatch, func(imgs []image.Image) ([]int, error) {
				in := make([][]float32, len(imgs))
				for i, img := range imgs {
					in[i] = m.PreprocessImage(img)
				}
				preds, err := m.Run(in)
				out := make([]int, len(preds))
				for i, p := range preds {
					out[i] = p.Index
				}
				return out, err
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: accuracy %.4f on %d images (manifest %.4f)", tc.model, acc, set.Len(), m.Accuracy)
			if math.Abs(acc-m.Accuracy) > 0.001 {
				t.Errorf("measured accuracy %.4f, manifest says %.4f", acc, m.Accuracy)
			}
			if acc < tc.bar {
				t.Errorf("accuracy %.4f is below the bar of %.2f", acc, tc.bar)
			}
			if m.TrainedOn == "" || m.EvaluatedOn == "" {
				t.Error("manifest does not say what the model was trained and evaluated on")
			}
			if st, err := os.Stat(filepath.Join("models", tc.model, "model.onnx")); err != nil || st.Size() > 1<<20 {
				t.Errorf("shipped model.onnx: %v, size over 1 MiB?", err)
			}
		})
	}
}

// Scores are probabilities: each in [0, 1], summing to 1.
func TestScoresArePerLabelProbabilities(t *testing.T) {
	r := testRegistry(t, userDir(t))
	for _, m := range r.Models() {
		in := make([][]float32, 3)
		for i := range in {
			in[i] = make([]float32, m.InputSize())
			for j := range in[i] {
				in[i][j] = float32((i*7+j)%13) / 13
			}
		}
		preds, err := m.Run(in)
		if err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		for _, p := range preds {
			var sum float64
			for _, s := range p.Scores {
				if s < 0 || s > 1 {
					t.Fatalf("%s: score %v", m.Name, s)
				}
				sum += float64(s)
			}
			if math.Abs(sum-1) > 1e-4 || len(p.Scores) != len(m.Labels) || p.BatchSize != 3 {
				t.Fatalf("%s: scores %v (sum %v), batch %d", m.Name, p.Scores, sum, p.BatchSize)
			}
			if p.Label != m.Labels[p.Index] || m.ScoreMap(p)[p.Label] != float64(p.Scores[p.Index]) {
				t.Fatalf("%s: label %s index %d", m.Name, p.Label, p.Index)
			}
		}
	}
	if _, err := mustModel(t, r, "digits").Run(make([][]float32, 33)); err == nil {
		t.Error("a batch over max_batch ran")
	}
	if _, err := mustModel(t, r, "digits").Run([][]float32{make([]float32, 3)}); err == nil {
		t.Error("an input of the wrong size ran")
	}
}

// userDir is a models folder as a user would make it: one good two-class
// RGB model and several broken ones.
func userDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	writeHealthModel(t, dir, "retina-health")
	good := readFile(t, filepath.Join(dir, "retina-health", "model.onnx"))
	goodYAML := string(readFile(t, filepath.Join(dir, "retina-health", "model.yaml")))
	// Garbage instead of ONNX.
	writeModelDir(t, filepath.Join(dir, "garbage-onnx"), []byte("not a protobuf at all"),
		strings.Replace(goodYAML, "name: retina-health", "name: garbage-onnx", 1))
	// A manifest that is not YAML.
	writeModelDir(t, filepath.Join(dir, "bad-yaml"), good, "name: [unclosed\n")
	// A manifest with invalid values.
	writeModelDir(t, filepath.Join(dir, "bad-values"), good,
		strings.NewReplacer("name: retina-health", "name: bad-values", "channels: 3", "channels: 2", "kind: logits", "kind: magic").Replace(goodYAML))
	// Three labels for a graph with two outputs.
	writeModelDir(t, filepath.Join(dir, "label-mismatch"), good,
		strings.NewReplacer("name: retina-health", "name: label-mismatch", "[healthy, unhealthy]", "[a, b, c]").Replace(goodYAML))
	// An input name the graph does not have, and the wrong size.
	writeModelDir(t, filepath.Join(dir, "input-mismatch"), good,
		strings.NewReplacer("name: retina-health", "name: input-mismatch", "name: image,", "name: pixels,", "width: 224", "width: 100").Replace(goodYAML))
	// model.yaml without model.onnx.
	writeModelDir(t, filepath.Join(dir, "no-onnx"), nil, strings.Replace(goodYAML, "name: retina-health", "name: no-onnx", 1))
	// Not a model directory at all: ignored, not broken.
	if err := os.MkdirAll(filepath.Join(dir, "notes"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestRegistrySkipsBrokenModels(t *testing.T) {
	dir := userDir(t)
	r := testRegistry(t, dir, filepath.Join(t.TempDir(), "missing-folder"))
	if got, want := strings.Join(r.Names(), ","), "digits,fashion,retina-health"; got != want {
		t.Fatalf("loaded %s, want %s", got, want)
	}
	broken := r.Broken()
	want := map[string]string{
		"garbage-onnx":   "model.onnx",
		"bad-yaml":       "model.yaml",
		"bad-values":     "input.channels 2",
		"label-mismatch": "2 scores per image but the manifest has 3 labels",
		"input-mismatch": `input.name "pixels" is not an input of the graph`,
		"no-onnx":        "model.onnx",
	}
	for name, msg := range want {
		err, ok := broken[name]
		if !ok {
			t.Errorf("%s is not reported broken (broken: %v)", name, broken)
			continue
		}
		if !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v; want it to mention %q", name, err, msg)
		}
	}
	if err := broken["bad-values"]; err == nil || !strings.Contains(err.Error(), "output.kind") {
		t.Errorf("bad-values should report every problem, got %v", err)
	}
	var missing bool
	for k := range broken {
		missing = missing || strings.HasSuffix(k, "missing-folder")
	}
	if !missing || len(broken) != len(want)+1 {
		t.Errorf("broken = %v", broken)
	}

	m := mustModel(t, r, "retina-health")
	info := m.Info()
	if info.Version != "3" || info.Input.Layout != "NHWC" || info.Input.Width != 224 || info.Input.Channels != 3 ||
		strings.Join(info.Labels, ",") != "healthy,unhealthy" || info.MaxBatch != 8 {
		t.Errorf("info %+v", info)
	}
}

// A user folder that is itself a model directory, and a user model that
// replaces a built-in one of the same name.
func TestRegistryModelDirAndOverride(t *testing.T) {
	dir := t.TempDir()
	writeHealthModel(t, dir, "fashion")
	single := t.TempDir()
	writeHealthModel(t, single, "solo")
	r := testRegistry(t, dir, filepath.Join(single, "solo"))
	m := mustModel(t, r, "fashion")
	if m.Source != filepath.Join(dir, "fashion") || strings.Join(m.Labels, ",") != "healthy,unhealthy" {
		t.Errorf("fashion from %s with %v: the user's model should replace the built-in one", m.Source, m.Labels)
	}
	mustModel(t, r, "solo")
}

// A graph exported with a fixed batch of 1 is served by padding, one image
// per call.
func TestFixedBatchModel(t *testing.T) {
	dir := t.TempDir()
	g := onnxpb.Graph{
		Nodes: []onnxpb.Node{
			{OpType: "Flatten", Inputs: []string{"x"}, Outputs: []string{"f"}, Attrs: []onnxpb.Attr{onnxpb.Int("axis", 1)}},
			{OpType: "Sigmoid", Inputs: []string{"f"}, Outputs: []string{"y"}},
		},
		Inputs:  []onnxpb.ValueInfo{{Name: "x", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Value: 1}, {Value: 1}, {Value: 1}, {Value: 2}}}},
		Outputs: []onnxpb.ValueInfo{{Name: "y", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Value: 1}, {Value: 2}}}},
	}
	m := onnxpb.Model{Graph: g}
	writeModelDir(t, filepath.Join(dir, "fixed"), m.Marshal(), `name: fixed
input: {name: x, layout: NCHW, width: 2, height: 1, channels: 1, scale: 1, mean: [0], std: [1]}
output: {name: y, kind: sigmoid}
labels: [left, right]
max_batch: 16
`)
	r := testRegistry(t, dir)
	fm := mustModel(t, r, "fixed")
	if fm.MaxBatch != 1 {
		t.Fatalf("max_batch %d, want 1 (the graph's fixed batch)", fm.MaxBatch)
	}
	preds, err := fm.Run([][]float32{{0, 3}})
	if err != nil {
		t.Fatal(err)
	}
	// sigmoid of sigmoid: the graph applies one, the manifest's kind another.
	want := 1 / (1 + math.Exp(-1/(1+math.Exp(-3))))
	if preds[0].Label != "right" || math.Abs(float64(preds[0].Scores[1])-want) > 1e-5 {
		t.Errorf("prediction %+v, want right with %v", preds[0], want)
	}
}

func TestParseManifest(t *testing.T) {
	base := "name: m\ninput: {name: x, width: 8, height: 8, channels: 1}\noutput: {name: y}\nlabels: [a, b]\n"
	m, err := ParseManifest([]byte(base), "dir")
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != "1" || m.Task != TaskImageClassification || m.Input.Layout != "NCHW" || m.Input.Scale != 1.0/255 ||
		m.Output.Kind != OutputProbabilities || m.MaxBatch != DefaultMaxBatch {
		t.Errorf("defaults not applied: %+v", m)
	}
	if m, err := ParseManifest([]byte(strings.Replace(base, "name: m\n", "", 1)), "from-dir"); err != nil || m.Name != "from-dir" {
		t.Errorf("name should default to the directory: %v %v", m, err)
	}
	bad := []struct{ yaml, want string }{
		{"{", "model.yaml"},
		{strings.Replace(base, "name: m", "name: Bad Name", 1), "name"},
		{base + "task: detection\n", "task"},
		{strings.Replace(base, "name: x, ", "", 1), "input.name"},
		{base + "max_batch: 5000\n", "max_batch"},
		{strings.Replace(base, "width: 8", "width: 99999", 1), "input.width"},
		{strings.Replace(base, "[a, b]", "[a, a]", 1), "repeated"},
		{strings.Replace(base, "[a, b]", "[]", 1), "labels"},
		{strings.Replace(base, "[a, b]", "[a, ' ']", 1), "empty"},
		{strings.Replace(base, "channels: 1}", "channels: 3, mean: [1, 2]}", 1), "input.mean"},
		{strings.Replace(base, "channels: 1}", "channels: 1, std: [0]}", 1), "input.std"},
		{strings.Replace(base, "channels: 1}", "channels: 1, layout: CHW}", 1), "input.layout"},
		{strings.Replace(base, "output: {name: y}", "output: {kind: logits}", 1), "output.name"},
		{base + "accuracy: 1.5\n", "accuracy"},
	}
	for i, tc := range bad {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			_, err := ParseManifest([]byte(tc.yaml), "d")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// Without the ONNX Runtime library the registry fails with a message that
// says what to do. The runtime is loaded once per process, so this runs in
// a child process.
func TestMissingRuntimeNamesTheFix(t *testing.T) {
	if path := os.Getenv("INFERENCE_TEST_ORT_CHILD"); path != "" {
		_, err := LoadRegistry(RegistryOptions{ORTLib: path, Logger: quiet})
		fmt.Println("ERR:", err)
		return
	}
	for _, path := range []string{filepath.Join(t.TempDir(), "libonnxruntime.so.1"), os.Args[0]} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMissingRuntimeNamesTheFix$")
		cmd.Env = append(os.Environ(), "INFERENCE_TEST_ORT_CHILD="+path)
		out, _ := cmd.CombinedOutput()
		s := string(out)
		if !strings.Contains(s, "ERR: inference: ONNX Runtime is not available") || !strings.Contains(s, "ONNXRUNTIME_LIB") || !strings.Contains(s, "make install") {
			t.Errorf("with %s: %s", path, s)
		}
	}
}

// versionedDir writes model "m" in the versioned layout: m/model.yaml with
// extra (a version policy), good graphs in versions 1 and 2, garbage in 3.
func versionedDir(t testing.TB, extra string) string {
	t.Helper()
	dir := t.TempDir()
	writeHealthModel(t, dir, "m")
	flat := filepath.Join(dir, "m")
	good := readFile(t, filepath.Join(flat, "model.onnx"))
	if err := os.Remove(filepath.Join(flat, "model.onnx")); err != nil {
		t.Fatal(err)
	}
	yaml := strings.Replace(string(readFile(t, filepath.Join(flat, "model.yaml"))), "version: \"3\"\n", "", 1) + extra
	writeModelDir(t, flat, nil, yaml)
	writeModelDir(t, filepath.Join(flat, "1"), good, "")
	writeModelDir(t, filepath.Join(flat, "2"), good, "")
	writeModelDir(t, filepath.Join(flat, "3"), []byte("not onnx"), "")
	return dir
}

// The versioned layout under each version policy: a version that fails to
// load does not count, so the policy picks among the others.
func TestVersionPolicies(t *testing.T) {
	for _, tc := range []struct {
		name, policy string
		served       string // newest first; "" = none
	}{
		{"default: newest that loads", "", "2"},
		{"latest 2", "version_policy: {latest: {num_versions: 2}}\n", "2,1"},
		{"latest 5", "version_policy: {latest: {num_versions: 5}}\n", "2,1"},
		{"all", "version_policy: {all: {}}\n", "2,1"},
		{"specific 1", "version_policy: {specific: {versions: [1]}}\n", "1"},
		{"specific broken only", "version_policy: {specific: {versions: [3]}}\n", ""},
		{"specific missing", "version_policy: {specific: {versions: [5]}}\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRegistry(t, versionedDir(t, tc.policy))
			var info *bus.ModelInfo
			for _, i := range r.Infos(true) {
				if i.Name == "m" {
					info = &i
				}
			}
			if info == nil {
				t.Fatalf("m is not listed: %v", r.Infos(true))
			}
			if tc.served == "" {
				if info.State != StateUnavailable || !strings.Contains(info.Error, "version 3: model.onnx") ||
					!strings.Contains(info.Error, "selects none of the loadable versions 2, 1") {
					t.Errorf("info %+v, want UNAVAILABLE with the load error of the version the policy selects", info)
				}
				if _, err := r.Acquire("m", ""); !errors.Is(err, ErrUnknownModel) {
					t.Errorf("acquire: %v", err)
				}
				return
			}
			if got := strings.Join(info.ServedVersions(), ","); got != tc.served {
				t.Fatalf("served %s, want %s (versions %+v)", got, tc.served, info.Versions)
			}
			if newest := strings.Split(tc.served, ",")[0]; info.Version != newest {
				t.Errorf("version %s, want the newest served %s", info.Version, newest)
			}
			if len(info.Versions) != 3 || info.Versions[0].Version != "3" || info.Versions[0].State != StateUnavailable ||
				!strings.Contains(info.Versions[0].Error, "model.onnx") {
				t.Errorf("versions %+v: want 3 UNAVAILABLE with its load error first", info.Versions)
			}
			m, err := r.Acquire("m", "")
			if err != nil || m.Version != info.Version {
				t.Fatalf("acquire newest: %v %v", m, err)
			}
			m.Release()
			if _, err := r.Acquire("m", "3"); err == nil || !strings.Contains(err.Error(), "served versions: "+strings.ReplaceAll(tc.served, ",", ", ")) {
				t.Errorf("acquire of the broken version: %v", err)
			}
			// Grade takes model@version.
			img := encodePNG(t, image.NewRGBA(image.Rect(0, 0, 4, 4)))
			for _, v := range strings.Split(tc.served, ",") {
				p, err := r.Grade(t.Context(), "m@"+v, [][]byte{img})
				if err != nil || p[0].Err != nil {
					t.Fatalf("grade m@%s: %v %v", v, err, p[0].Err)
				}
			}
			if p, err := r.Grade(t.Context(), "m@9", [][]byte{img}); err != nil || p[0].Err == nil {
				t.Errorf("grade of an unknown version: %v %+v", err, p)
			}
		})
	}
}

// A flat model.onnx is the manifest's version beside numbered folders.
func TestFlatAndVersionedLayouts(t *testing.T) {
	dir := t.TempDir()
	writeHealthModel(t, dir, "m") // flat, version "3"
	writeModelDir(t, filepath.Join(dir, "m", "7"), readFile(t, filepath.Join(dir, "m", "model.onnx")), "")
	writeModelDir(t, filepath.Join(dir, "m", "model.yaml.d"), nil, "") // not a version folder: ignored
	if err := os.WriteFile(filepath.Join(dir, "m", "model.yaml"),
		append(readFile(t, filepath.Join(dir, "m", "model.yaml")), "version_policy: {all: {}}\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	r := testRegistry(t, dir)
	var got []string
	for _, i := range r.Infos(false) {
		if i.Name == "m" {
			got = i.ServedVersions()
		}
	}
	if strings.Join(got, ",") != "7,3" {
		t.Errorf("served %v, want 7 (folder) and 3 (flat, the manifest's version)", got)
	}
}

// The dynamic batcher cuts a model version's images by its preferred
// batch sizes, then max_batch (Triton's rule).
func TestPreferredBatchChunks(t *testing.T) {
	for _, tc := range []struct {
		max       int
		preferred []int
		n, want   int
	}{
		{8, nil, 20, 8},
		{8, nil, 3, 3},
		{8, []int{4, 2}, 20, 4},
		{8, []int{4, 2}, 3, 2},
		{8, []int{4, 2}, 1, 1},
		{8, []int{16}, 20, 8}, // a fixed-batch graph lowered max_batch below it
	} {
		m := &Model{Manifest: Manifest{MaxBatch: tc.max, PreferredBatch: tc.preferred}}
		if got := m.chunk(tc.n); got != tc.want {
			t.Errorf("max %d preferred %v: chunk of %d = %d, want %d", tc.max, tc.preferred, tc.n, got, tc.want)
		}
	}
}

func TestManifestBatchingAndPolicy(t *testing.T) {
	base := "name: m\ninput: {name: x, width: 8, height: 8, channels: 1}\noutput: {name: y}\nlabels: [a, b]\nmax_batch: 16\n"
	for _, tc := range []struct {
		yaml, want string // want: an error mentioning it, or "" for valid
		check      func(*Manifest) bool
	}{
		{"preferred_batch: 4\nmax_queue_delay: 5ms\n", "", func(m *Manifest) bool {
			return slices.Equal(m.PreferredBatch, BatchSizes{4}) && m.MaxQueueDelay == 5*time.Millisecond
		}},
		{"preferred_batch: [2, 8, 4]\n", "", func(m *Manifest) bool { return slices.Equal(m.PreferredBatch, BatchSizes{8, 4, 2}) }},
		{"version_policy: {latest: {num_versions: 2}}\n", "", func(m *Manifest) bool { return m.VersionPolicy.String() == "latest 2" }},
		{"version_policy: {all: {}}\n", "", func(m *Manifest) bool { return m.VersionPolicy.String() == "all" }},
		{"version_policy: {specific: {versions: [1, 3]}}\n", "", func(m *Manifest) bool { return m.VersionPolicy.String() == "specific 1,3" }},
		{"", "", func(m *Manifest) bool { return m.VersionPolicy.String() == "latest 1" && m.MaxQueueDelay == 0 }},
		{"preferred_batch: 32\n", "preferred_batch 32", nil},
		{"preferred_batch: [0]\n", "preferred_batch 0", nil},
		{"preferred_batch: lots\n", "preferred_batch", nil},
		{"max_queue_delay: 1h\n", "max_queue_delay", nil},
		{"max_queue_delay: soon\n", "model.yaml", nil},
		{"version_policy: {latest: {num_versions: 0}}\n", "num_versions 0", nil},
		{"version_policy: {all: {}, latest: {num_versions: 1}}\n", "one of latest, all and specific", nil},
		{"version_policy: {specific: {versions: []}}\n", "specific.versions", nil},
		{"version_policy: {specific: {versions: ['a b']}}\n", "specific version", nil},
		{"version: 'two words'\n", "version", nil},
	} {
		t.Run(tc.yaml, func(t *testing.T) {
			m, err := ParseManifest([]byte(base+tc.yaml), "d")
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(m) {
				t.Errorf("manifest %+v", m)
			}
		})
	}
}
