package inference

import (
	"errors"
	"testing"
)

// Registry.Grade runs the service's batcher: one outcome per image, in the
// order given, across chunks of max_batch; a bad image fails alone.
func TestRegistryGrade(t *testing.T) {
	r := testRegistry(t)
	digits := mustModel(t, r, "digits")
	set := heldOutDigits(t)
	n := digits.MaxBatch + 3
	images := make([][]byte, n)
	want := make([]string, n)
	for i := range images {
		images[i] = encodePNG(t, set.Image(i))
		p, err := digits.Run([][]float32{digits.PreprocessImage(set.Image(i))})
		if err != nil {
			t.Fatal(err)
		}
		want[i] = p[0].Label
	}
	const bad = 1
	images[bad] = []byte("not an image")
	k := func(i int) int {
		if i > bad {
			return i - 1
		}
		return i
	}

	for _, tc := range []struct {
		name, model string
		images      [][]byte
		check       func(t *testing.T, i int, p Prediction)
	}{
		{"a chunk and a bit", "digits", images, func(t *testing.T, i int, p Prediction) {
			switch {
			case i == bad:
				if !errors.Is(p.Err, ErrUndecodable) {
					t.Fatalf("image %d: %v, want ErrUndecodable", i, p.Err)
				}
			case p.Err != nil || p.Label != want[i]:
				t.Fatalf("image %d: %q %v, want %q", i, p.Label, p.Err, want[i])
			// Image i is the k-th decodable one: the first max_batch make
			// the first call, the rest the second.
			case (k(i) < digits.MaxBatch && p.BatchSize != digits.MaxBatch) ||
				(k(i) >= digits.MaxBatch && p.BatchSize != n-1-digits.MaxBatch):
				t.Fatalf("image %d ran in a batch of %d (max_batch %d, %d decodable)", i, p.BatchSize, digits.MaxBatch, n-1)
			}
		}},
		{"unknown model", "resnet", images[:2], func(t *testing.T, i int, p Prediction) {
			if p.Err == nil {
				t.Fatalf("image %d graded by an unknown model: %+v", i, p)
			}
		}},
		{"nothing", "digits", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			preds, err := r.Grade(t.Context(), tc.model, tc.images)
			if err != nil {
				t.Fatal(err)
			}
			if len(preds) != len(tc.images) {
				t.Fatalf("%d predictions for %d images", len(preds), len(tc.images))
			}
			for i, p := range preds {
				tc.check(t, i, p)
			}
		})
	}
}
