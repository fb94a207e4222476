package inference

import (
	"bytes"
	"image"
	"path/filepath"
	"testing"

	"github.com/gradeline/gradeline/inference/internal/datasets"
	"github.com/gradeline/gradeline/inference/internal/testenv"
	xdraw "golang.org/x/image/draw"
)

// The fast PNG path against image.Decode (as decodeImage called it before)
// on the two typical inputs: a 28×28 gray Fashion-MNIST image and a
// photograph scaled to 224×224 RGB.
func BenchmarkDecodePNG(b *testing.B) {
	_, test, err := datasets.Fashion(testenv.DatasetsDir(b))
	if err != nil {
		b.Fatal(err)
	}
	photo, _, err := image.Decode(bytes.NewReader(readFile(b, testenv.Dataset(b, filepath.Join("images", "chelsea.png")))))
	if err != nil {
		b.Fatal(err)
	}
	rgb := image.NewRGBA(image.Rect(0, 0, 224, 224))
	xdraw.BiLinear.Scale(rgb, rgb.Rect, photo, photo.Bounds(), xdraw.Src, nil)
	for _, in := range []struct {
		name string
		data []byte
	}{
		{"gray28x28", encodePNG(b, test.Image(0))},
		{"rgb224x224", encodePNG(b, rgb)},
	} {
		cfg, _, err := image.DecodeConfig(bytes.NewReader(in.data))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(in.name+"/fastpath", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in.data)))
			for b.Loop() {
				if _, err := decodePNG(in.data, cfg.Width, cfg.Height); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(in.name+"/image.Decode", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(in.data)))
			for b.Loop() {
				if _, _, err := image.Decode(newPeekReader(in.data)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
