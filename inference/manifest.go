package inference

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Manifest is a model's model.yaml. Unknown keys are allowed (and ignored).
type Manifest struct {
	Name     string   `yaml:"name"`
	Version  string   `yaml:"version"`
	Task     string   `yaml:"task"`
	Input    Input    `yaml:"input,flow"`
	Output   Output   `yaml:"output,flow"`
	Labels   []string `yaml:"labels,flow"`
	MaxBatch int      `yaml:"max_batch"`
	// Accuracy measured on EvaluatedOn (0 when unknown).
	Accuracy    float64 `yaml:"accuracy,omitempty"`
	TrainedOn   string  `yaml:"trained_on,omitempty"`
	EvaluatedOn string  `yaml:"evaluated_on,omitempty"`
	Description string  `yaml:"description,omitempty"`
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
	maxSide         = 4096
	maxLabels       = 100000
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
