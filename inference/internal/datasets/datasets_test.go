package datasets

import (
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/inference/internal/testenv"
)

func TestRealDatasets(t *testing.T) {
	dir := testenv.DatasetsDir(t)
	train, test, err := Fashion(dir)
	if err != nil {
		t.Fatal(err)
	}
	if train.Len() != 60000 || test.Len() != 10000 || train.Width != 28 || test.Image(0).Bounds().Dx() != 28 {
		t.Errorf("fashion: %d/%d images of %dx%d", train.Len(), test.Len(), train.Width, train.Height)
	}
	if test.Labels[0] != 9 { // the first test image is an ankle boot
		t.Errorf("first test label %d", test.Labels[0])
	}
	dtrain, dtest, err := Digits(dir)
	if err != nil {
		t.Fatal(err)
	}
	if dtrain.Len() != 1438 || dtest.Len() != 359 || dtest.Labels[0] != 4 {
		t.Errorf("digits: %d/%d, first held-out label %d", dtrain.Len(), dtest.Len(), dtest.Labels[0])
	}
}

func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := Fashion(dir); err == nil || !strings.Contains(err.Error(), "make install") {
		t.Errorf("missing files: %v", err)
	}
	write := func(rel, content string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		z := gzip.NewWriter(f)
		z.Write([]byte(content))
		z.Close()
		f.Close()
	}
	for _, n := range []string{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"} {
		write(filepath.Join("fashion-mnist", n), "not an idx file at all")
	}
	if _, _, err := Fashion(dir); err == nil || !strings.Contains(err.Error(), "not an IDX file") {
		t.Errorf("bad idx: %v", err)
	}
	write("sklearn/digits.csv.gz", "1,2,3\n")
	if _, _, err := Digits(dir); err == nil || !strings.Contains(err.Error(), "fields") {
		t.Errorf("bad csv: %v", err)
	}
	write("sklearn/digits.csv.gz", strings.Repeat("0,", 64)+"12\n")
	if _, _, err := Digits(dir); err == nil || !strings.Contains(err.Error(), "bad label") {
		t.Errorf("bad label: %v", err)
	}
}
