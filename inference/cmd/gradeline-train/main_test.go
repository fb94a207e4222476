package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/gradeline/gradeline/inference"
	"github.com/gradeline/gradeline/inference/internal/testenv"
)

// The shipped digits model is what the generator makes from the dataset:
// byte for byte on amd64 (training is deterministic), and the manifest
// with it. (fashion takes minutes to train; it is checked by accuracy in
// the inference package.)
func TestGeneratorReproducesShippedDigits(t *testing.T) {
	ds := testenv.DatasetsDir(t)
	if err := inference.InitRuntime(testenv.ORTLib(t)); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	var r recipe
	for _, x := range recipes {
		if x.name == "digits" {
			r = x
		}
	}
	if err := build(r, ds, out); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"model.yaml", "model.onnx"} {
		got, err := os.ReadFile(filepath.Join(out, "digits", f))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("..", "..", "models", "digits", f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "model.onnx" && runtime.GOARCH != "amd64" {
			continue // other architectures may fuse multiply-adds
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the shipped one: run `go run ./inference/cmd/gradeline-train -out inference/models`", f)
		}
	}
}
