// Package testenv finds the files tests need (ONNX Runtime, datasets) and
// fails the test, naming `make install`, when they are missing: a test that
// skips would pass on a machine where nothing was checked.
package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// ORTLib returns $ONNXRUNTIME_LIB, which must name an existing file.
func ORTLib(t testing.TB) string {
	t.Helper()
	return file(t, "ONNXRUNTIME_LIB", "")
}

// DatasetsDir returns $GRADELINE_DATASETS_DIR, which must be a directory.
func DatasetsDir(t testing.TB) string {
	t.Helper()
	p := os.Getenv("GRADELINE_DATASETS_DIR")
	if p == "" {
		t.Fatalf("GRADELINE_DATASETS_DIR is not set: run `make install` and set it to .cache/datasets (make test does both)")
	}
	if st, err := os.Stat(p); err != nil || !st.IsDir() {
		t.Fatalf("GRADELINE_DATASETS_DIR=%s is not a directory: run `make install`", p)
	}
	return p
}

// Dataset returns a file under $GRADELINE_DATASETS_DIR, which must exist.
func Dataset(t testing.TB, rel string) string {
	t.Helper()
	return file(t, "GRADELINE_DATASETS_DIR", rel)
}

func file(t testing.TB, env, rel string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		t.Fatalf("%s is not set: run `make install` (make test sets it)", env)
	}
	if rel != "" {
		p = filepath.Join(p, rel)
	}
	if st, err := os.Stat(p); err != nil || st.IsDir() {
		t.Fatalf("%s: %s is missing: run `make install`", env, p)
	}
	return p
}
