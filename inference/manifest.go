package inference

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Manifest is a model's model.yaml. Unknown keys are allowed (and ignored).
type Manifest struct {
	Name    string   `yaml:"name"`
	Version string   `yaml:"version"`
	Task    string   `yaml:"task"`
	Input   Input    `yaml:"input,flow"`
	Output  Output   `yaml:"output,flow"`
	Labels  []string `yaml:"labels,flow"`
	// MaxBatch bounds the images of one ONNX Runtime call (Triton's
	// max_batch_size).
	MaxBatch int `yaml:"max_batch"`
	// PreferredBatch are the batch sizes the dynamic batcher forms from
	// a model version's queue (Triton's preferred_batch_size): the queue
	// runs a batch as soon as it holds the largest; after MaxQueueDelay
	// it runs the largest that fits what is waiting, else what is
	// waiting up to MaxBatch. A single number or a list.
	PreferredBatch BatchSizes `yaml:"preferred_batch,flow,omitempty"`
	// MaxQueueDelay is how long this model version's queue waits for a
	// fuller batch after its oldest image arrived (Triton's
	// max_queue_delay_microseconds), as a Go duration ("2ms"); it holds
	// up no other model. 0: GRADELINE_MAX_QUEUE_DELAY.
	MaxQueueDelay time.Duration `yaml:"max_queue_delay,omitempty"`
	// VersionPolicy says which versions of the model's folder are served
	// (Triton's version_policy; default: the newest one).
	VersionPolicy VersionPolicy `yaml:"version_policy,omitempty"`
	// Accuracy measured on EvaluatedOn (0 when unknown).
	Accuracy    float64 `yaml:"accuracy,omitempty"`
	TrainedOn   string  `yaml:"trained_on,omitempty"`
	EvaluatedOn string  `yaml:"evaluated_on,omitempty"`
	Description string  `yaml:"description,omitempty"`
}

// BatchSizes is a list of batch sizes that may also be written as one
// number.
type BatchSizes []int

// UnmarshalYAML accepts a number or a list of numbers.
func (b *BatchSizes) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var v int
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("preferred_batch: %w", err)
		}
		*b = BatchSizes{v}
		return nil
	}
	var v []int
	if err := n.Decode(&v); err != nil {
		return fmt.Errorf("preferred_batch: %w", err)
	}
	*b = v
	return nil
}

// VersionPolicy is Triton's version_policy: exactly one of Latest, All
// and Specific, or none (the newest version). Versions that fail to load
// do not count: under latest 1 a broken new version leaves the previous
// one serving.
type VersionPolicy struct {
	Latest   *LatestPolicy   `yaml:"latest,omitempty"`
	All      *struct{}       `yaml:"all,omitempty"`
	Specific *SpecificPolicy `yaml:"specific,omitempty"`
}

// LatestPolicy serves the NumVersions newest versions.
type LatestPolicy struct {
	NumVersions int `yaml:"num_versions"`
}

// SpecificPolicy serves the listed versions.
type SpecificPolicy struct {
	Versions []string `yaml:"versions,flow"`
}

// IsZero reports a policy left out of the manifest (for omitempty).
func (p VersionPolicy) IsZero() bool { return p.Latest == nil && p.All == nil && p.Specific == nil }

// String renders the policy as the manifest writes it.
func (p VersionPolicy) String() string {
	switch {
	case p.All != nil:
		return "all"
	case p.Specific != nil:
		return "specific " + strings.Join(p.Specific.Versions, ",")
	case p.Latest != nil:
		return "latest " + strconv.Itoa(p.Latest.NumVersions)
	}
	return "latest 1"
}

// choose picks the served versions among good ones (sorted newest first).
func (p VersionPolicy) choose(good []string) []string {
	switch {
	case p.All != nil:
		return good
	case p.Specific != nil:
		var out []string
		for _, v := range good {
			for _, w := range p.Specific.Versions {
				if v == w || (isNumber(v) && isNumber(w) && compareVersions(v, w) == 0) {
					out = append(out, v)
					break
				}
			}
		}
		return out
	}
	n := 1
	if p.Latest != nil {
		n = p.Latest.NumVersions
	}
	return good[:min(n, len(good))]
}

func (p VersionPolicy) validate() error {
	set := 0
	for _, b := range []bool{p.Latest != nil, p.All != nil, p.Specific != nil} {
		if b {
			set++
		}
	}
	switch {
	case set > 1:
		return errors.New("version_policy: want one of latest, all and specific")
	case p.Latest != nil && (p.Latest.NumVersions < 1 || p.Latest.NumVersions > maxVersions):
		return fmt.Errorf("version_policy: latest.num_versions %d: want 1..%d", p.Latest.NumVersions, maxVersions)
	case p.Specific != nil && len(p.Specific.Versions) == 0:
		return errors.New("version_policy: specific.versions: want at least one version")
	}
	if p.Specific != nil {
		for _, v := range p.Specific.Versions {
			if !versionRE.MatchString(v) {
				return fmt.Errorf("version_policy: specific version %q: want a version number", v)
			}
		}
	}
	return nil
}

// versionRE is what a version may be: a folder name of the versioned
// layout is a number; the flat layout's manifest version is free within
// these characters.
var versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$`)

// isNumber reports a version written as a non-negative integer.
func isNumber(v string) bool {
	_, err := strconv.ParseUint(v, 10, 63)
	return err == nil
}

// compareVersions orders versions: numbers by value (before any other),
// others by text.
func compareVersions(a, b string) int {
	na, ea := strconv.ParseUint(a, 10, 63)
	nb, eb := strconv.ParseUint(b, 10, 63)
	switch {
	case ea == nil && eb == nil:
		if na != nb {
			if na < nb {
				return -1
			}
			return 1
		}
		return 0
	case ea == nil:
		return -1
	case eb == nil:
		return 1
	}
	return strings.Compare(a, b)
}

// Input describes the model's image input and its preprocessing:
// x = (pixel*Scale - Mean[c]) / Std[c], pixel in 0..255.
type Input struct {
	Name     string    `yaml:"name"`
	Layout   string    `yaml:"layout"` // NCHW or NHWC
	Width    int       `yaml:"width"`
	Height   int       `yaml:"height"`
	Channels int       `yaml:"channels"` // 1 = grey, 3 = RGB
	Scale    float64   `yaml:"scale"`
	Mean     []float64 `yaml:"mean,flow"`
	Std      []float64 `yaml:"std,flow"`
	// MaxPixels is the most pixels an image may have to be decoded for
	// this model (0: the default, see decodeBudget).
	MaxPixels int64 `yaml:"max_pixels,omitempty"`
}

// Output kinds: how the output tensor becomes scores.
const (
	OutputProbabilities = "probabilities" // used as they are
	OutputLogits        = "logits"        // softmax applied
	OutputSigmoid       = "sigmoid"       // logistic applied per label
)

// Output names the model's output tensor, shaped [batch, len(labels)].
type Output struct {
	Name string `yaml:"name"`
	Kind string `yaml:"kind"`
}

// TaskImageClassification is the only task served.
const TaskImageClassification = "image-classification"

// Limits of a manifest.
const (
	DefaultMaxBatch = 32
	MaxMaxBatch     = 1024
	// MaxModelQueueDelay bounds a manifest's max_queue_delay.
	MaxModelQueueDelay = 10 * time.Second
	maxVersions        = 1000
	maxSide            = 4096
	maxLabels          = 100000
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ParseManifest decodes and validates model.yaml. dirName is the model
// directory's name, the default for a missing name.
func ParseManifest(data []byte, dirName string) (*Manifest, error) {
	var m Manifest
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("model.yaml: %w", err)
	}
	if m.Name == "" {
		m.Name = dirName
	}
	if m.Version == "" {
		m.Version = "1"
	}
	if m.Task == "" {
		m.Task = TaskImageClassification
	}
	if m.Input.Layout == "" {
		m.Input.Layout = "NCHW"
	}
	if m.Input.Scale == 0 {
		m.Input.Scale = 1.0 / 255
	}
	if len(m.Input.Mean) == 0 {
		m.Input.Mean = []float64{0}
	}
	if len(m.Input.Std) == 0 {
		m.Input.Std = []float64{1}
	}
	if m.Output.Kind == "" {
		m.Output.Kind = OutputProbabilities
	}
	if m.MaxBatch == 0 {
		m.MaxBatch = DefaultMaxBatch
	}
	// Largest first: the batcher takes the first that fits.
	slices.SortFunc(m.PreferredBatch, func(a, b int) int { return b - a })
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate reports every problem of the manifest at once.
func (m *Manifest) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !nameRE.MatchString(m.Name) {
		bad("name %q: want lower-case letters, digits, '.', '_' or '-' (at most 64)", m.Name)
	}
	if m.Task != TaskImageClassification {
		bad("task %q: only %s is served", m.Task, TaskImageClassification)
	}
	in := m.Input
	if in.Name == "" {
		bad("input.name is required")
	}
	if in.Layout != "NCHW" && in.Layout != "NHWC" {
		bad("input.layout %q: want NCHW or NHWC", in.Layout)
	}
	if in.Width < 1 || in.Width > maxSide || in.Height < 1 || in.Height > maxSide {
		bad("input.width and input.height must be in 1..%d (got %dx%d)", maxSide, in.Width, in.Height)
	}
	if in.Channels != 1 && in.Channels != 3 {
		bad("input.channels %d: want 1 (grey) or 3 (RGB)", in.Channels)
	}
	if in.MaxPixels < 0 {
		bad("input.max_pixels %d: want a positive number of pixels (or none for the default)", in.MaxPixels)
	}
	if !finite(in.Scale) || in.Scale == 0 {
		bad("input.scale must be a finite non-zero number")
	}
	for _, p := range []struct {
		key string
		v   []float64
	}{{"mean", in.Mean}, {"std", in.Std}} {
		if len(p.v) != 1 && len(p.v) != in.Channels {
			bad("input.%s: want 1 or %d values (got %d)", p.key, in.Channels, len(p.v))
		}
		for _, x := range p.v {
			if !finite(x) || (p.key == "std" && x == 0) {
				bad("input.%s: %v is not allowed", p.key, x)
			}
		}
	}
	if m.Output.Name == "" {
		bad("output.name is required")
	}
	switch m.Output.Kind {
	case OutputProbabilities, OutputLogits, OutputSigmoid:
	default:
		bad("output.kind %q: want probabilities, logits or sigmoid", m.Output.Kind)
	}
	if len(m.Labels) == 0 || len(m.Labels) > maxLabels {
		bad("labels: want 1..%d labels", maxLabels)
	}
	seen := map[string]bool{}
	for i, l := range m.Labels {
		if strings.TrimSpace(l) == "" {
			bad("labels[%d] is empty", i)
		} else if seen[l] {
			bad("labels[%d] %q is repeated", i, l)
		}
		seen[l] = true
	}
	if m.MaxBatch < 1 || m.MaxBatch > MaxMaxBatch {
		bad("max_batch %d: want 1..%d", m.MaxBatch, MaxMaxBatch)
	}
	for _, b := range m.PreferredBatch {
		if b < 1 || b > m.MaxBatch {
			bad("preferred_batch %d: want 1..max_batch (%d)", b, m.MaxBatch)
		}
	}
	if m.MaxQueueDelay < 0 || m.MaxQueueDelay > MaxModelQueueDelay {
		bad("max_queue_delay %s: want 0..%s", m.MaxQueueDelay, MaxModelQueueDelay)
	}
	if !versionRE.MatchString(m.Version) {
		bad("version %q: want letters, digits, '.', '_' or '-' (at most 32)", m.Version)
	}
	if err := m.VersionPolicy.validate(); err != nil {
		errs = append(errs, err)
	}
	if m.Accuracy < 0 || m.Accuracy > 1 || !finite(m.Accuracy) {
		bad("accuracy %v: want a fraction in [0, 1]", m.Accuracy)
	}
	return errors.Join(errs...)
}

// Marshal encodes the manifest as model.yaml.
func (m *Manifest) Marshal() ([]byte, error) {
	return yaml.Marshal(m)
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
