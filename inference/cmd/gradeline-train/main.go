// Command gradeline-train trains the demo models from the datasets Debian
// ships and writes them as model directories (model.onnx + model.yaml):
//
//	fashion  Fashion-MNIST, 28x28 grey, 10 classes, scored on the 10,000 test images
//	digits   scikit-learn's 8x8 digits, 10 classes, scored on a fixed held-out fifth
//
// The accuracy in model.yaml is measured by running the written ONNX file
// through ONNX Runtime, with the service's own preprocessing.
//
//	go run ./inference/cmd/gradeline-train -out inference/models
package main

import (
	"flag"
	"fmt"
	"image"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gradeline/gradeline/inference"
	"github.com/gradeline/gradeline/inference/internal/datasets"
	"github.com/gradeline/gradeline/inference/internal/mlp"
	"github.com/gradeline/gradeline/inference/onnxpb"
)

// recipe is how one demo model is made.
type recipe struct {
	name, description, trainedOn, evaluatedOn string
	labels                                    []string
	load                                      func(dir string) (train, test *datasets.Set, err error)
	hidden                                    int
	opts                                      mlp.Options
	minAccuracy                               float64
}

var recipes = []recipe{
	{
		name:        "fashion",
		description: "Fashion-MNIST clothing classifier: a perceptron with one hidden layer of 128 units, trained in Go by gradeline-train",
		trainedOn:   "Fashion-MNIST train set, 60,000 images (Debian dataset-fashion-mnist)",
		evaluatedOn: "Fashion-MNIST test set, 10,000 images",
		labels:      datasets.FashionLabels,
		load:        datasets.Fashion,
		hidden:      128,
		opts:        mlp.Options{Epochs: 12, BatchSize: 64, LR: 1e-3, Seed: 1},
		minAccuracy: 0.85,
	},
	{
		name:        "digits",
		description: "handwritten digit classifier for 8x8 images: a perceptron with one hidden layer of 64 units, trained in Go by gradeline-train",
		trainedOn:   "scikit-learn digits (Debian python3-sklearn), " + datasets.DigitsTrainRows,
		evaluatedOn: "scikit-learn digits, " + datasets.DigitsTestRows,
		labels:      datasets.DigitsLabels,
		load:        datasets.Digits,
		hidden:      64,
		opts:        mlp.Options{Epochs: 150, BatchSize: 32, LR: 2e-3, Seed: 1},
		minAccuracy: 0.90,
	},
}

func main() {
	dsDir := flag.String("datasets", os.Getenv("GRADELINE_DATASETS_DIR"), "datasets folder (deploy/install/datasets.sh)")
	out := flag.String("out", "inference/models", "folder to write model directories into")
	lib := flag.String("ort", os.Getenv("ONNXRUNTIME_LIB"), "path of libonnxruntime.so.1")
	only := flag.String("models", "fashion,digits", "comma-separated models to train")
	flag.Parse()
	if *dsDir == "" {
		fail("set GRADELINE_DATASETS_DIR or -datasets (run `make install` first)")
	}
	if err := inference.InitRuntime(*lib); err != nil {
		fail(err.Error())
	}
	for _, name := range strings.Split(*only, ",") {
		var r *recipe
		for i := range recipes {
			if recipes[i].name == name {
				r = &recipes[i]
			}
		}
		if r == nil {
			fail(fmt.Sprintf("unknown model %q", name))
		}
		if err := build(*r, *dsDir, *out); err != nil {
			fail(fmt.Sprintf("%s: %v", name, err))
		}
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "gradeline-train:", msg)
	os.Exit(1)
}

func build(r recipe, dsDir, out string) error {
	train, test, err := r.load(dsDir)
	if err != nil {
		return err
	}
	mean, std := pixelStats(train)
	man := &inference.Manifest{
		Name: r.name, Version: "1", Task: inference.TaskImageClassification,
		Input: inference.Input{Name: "pixels", Layout: "NCHW", Width: train.Width, Height: train.Height, Channels: 1,
			Scale: 1.0 / 255, Mean: []float64{mean}, Std: []float64{std}},
		Output:      inference.Output{Name: "probabilities", Kind: inference.OutputProbabilities},
		Labels:      r.labels,
		MaxBatch:    inference.DefaultMaxBatch,
		TrainedOn:   r.trainedOn,
		EvaluatedOn: r.evaluatedOn,
		Description: r.description,
	}
	// The same normalisation the service applies (x = (p*scale-mean)/std).
	var lut [256]float32
	for v := range lut {
		lut[v] = float32((float64(v)*man.Input.Scale - mean) / std)
	}
	xs := make([][]float32, train.Len())
	for i, px := range train.Pixels {
		x := make([]float32, len(px))
		for j, v := range px {
			x[j] = lut[v]
		}
		xs[i] = x
	}
	net := mlp.New(train.Width*train.Height, r.hidden, len(r.labels), r.opts.Seed)
	opts := r.opts
	start := time.Now()
	opts.Progress = func(epoch int, loss float64) {
		fmt.Fprintf(os.Stderr, "%s: epoch %d/%d loss %.4f (%s)\n", r.name, epoch, opts.Epochs, loss, time.Since(start).Round(time.Second))
	}
	net.Train(xs, train.Labels, opts)

	model := onnxpb.Model{
		ProducerName: "gradeline-train", ProducerVersion: "1", ModelVersion: 1,
		DocString: r.description,
		Metadata:  map[string]string{"labels": strings.Join(r.labels, ",")},
		Graph:     net.Graph("pixels", "probabilities", 1, train.Height, train.Width),
	}
	dir := filepath.Join(out, r.name)
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	if err := write(tmp, model.Marshal(), man); err != nil {
		return err
	}
	// Measure through ONNX Runtime what the service will serve.
	reg, err := inference.LoadRegistry(inference.RegistryOptions{Dirs: []string{tmp}, NoBuiltin: true,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer reg.Close()
	m, ok := reg.Model(r.name)
	if !ok {
		return fmt.Errorf("the written model does not load: %v", reg.Broken())
	}
	acc, err := datasets.Accuracy(test, m.MaxBatch, func(imgs []image.Image) ([]int, error) {
		in := make([][]float32, len(imgs))
		for i, img := range imgs {
			in[i] = m.PreprocessImage(img)
		}
		preds, err := m.Run(in)
		labels := make([]int, len(preds))
		for i, p := range preds {
			labels[i] = p.Index
		}
		return labels, err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%s: accuracy %.4f on %s (trained in %s)\n", r.name, acc, r.evaluatedOn, time.Since(start).Round(time.Second))
	if acc < r.minAccuracy {
		return fmt.Errorf("accuracy %.4f is below the bar of %.2f", acc, r.minAccuracy)
	}
	man.Accuracy = math.Round(acc*1e4) / 1e4
	if err := write(tmp, nil, man); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

func write(dir string, onnx []byte, man *inference.Manifest) error {
	if onnx != nil {
		if err := os.WriteFile(filepath.Join(dir, "model.onnx"), onnx, 0o644); err != nil {
			return err
		}
	}
	y, err := man.Marshal()
	if err != nil {
		return err
	}
	head := "# Generated by `go run ./inference/cmd/gradeline-train`; do not edit.\n"
	return os.WriteFile(filepath.Join(dir, "model.yaml"), append([]byte(head), y...), 0o644)
}

// pixelStats returns the mean and standard deviation of the training
// pixels on the 0..1 scale: the manifest's mean and std.
func pixelStats(s *datasets.Set) (mean, std float64) {
	var sum, sq float64
	var n int
	for _, px := range s.Pixels {
		for _, v := range px {
			x := float64(v) / 255
			sum += x
			sq += x * x
		}
		n += len(px)
	}
	mean = sum / float64(n)
	std = math.Sqrt(sq/float64(n) - mean*mean)
	return math.Round(mean*1e4) / 1e4, math.Round(std*1e4) / 1e4
}
