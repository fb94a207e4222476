package inference

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"testing"
)

// FuzzPreprocess: any bytes either become a model input or fail with
// ErrUndecodable; nothing panics and no budget is exceeded.
func FuzzPreprocess(f *testing.F) {
	img := image.NewNRGBA(image.Rect(0, 0, 5, 3))
	img.Set(1, 1, color.NRGBA{200, 10, 10, 128})
	var b bytes.Buffer
	_ = png.Encode(&b, img)
	f.Add(append([]byte(nil), b.Bytes()...))
	b.Reset()
	_ = jpeg.Encode(&b, img, nil)
	f.Add(append([]byte(nil), b.Bytes()...))
	f.Add(withEXIF(append([]byte(nil), b.Bytes()...), 6, binary.BigEndian))
	b.Reset()
	_ = gif.Encode(&b, img, nil)
	f.Add(append([]byte(nil), b.Bytes()...))
	f.Add(pngHeader(100000, 100000))
	f.Add([]byte("BM"))
	f.Add([]byte("RIFF\x00\x00\x00\x00WEBPVP8 "))
	pre := newPreprocessor(Input{Layout: "NHWC", Width: 4, Height: 3, Channels: 3, Scale: 1.0 / 255, Mean: []float64{0}, Std: []float64{1}, MaxPixels: 1 << 16})
	f.Fuzz(func(t *testing.T, data []byte) {
		dst := make([]float32, pre.size())
		err := pre.bytes(data, dst)
		if err != nil && !errors.Is(err, ErrUndecodable) {
			t.Fatalf("error not marked undecodable: %v", err)
		}
	})
}
