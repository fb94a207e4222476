package inference

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"math"
	"testing"
)

func TestJPEGScale(t *testing.T) {
	for _, tc := range []struct{ w, h, tw, th, want int }{
		{7000, 7000, 28, 28, 8},
		{448, 448, 28, 28, 8},
		{440, 440, 28, 28, 4},
		{120, 120, 28, 28, 2},
		{100, 100, 28, 28, 1},
		{4000, 100, 28, 28, 1}, // the short side decides
		{4000, 3000, 224, 224, 4},
		{4000, 3000, 0, 0, 1}, // no model: full size
	} {
		if got := jpegScale(tc.w, tc.h, tc.tw, tc.th); got != tc.want {
			t.Errorf("jpegScale(%d, %d, %d, %d) = %d, want %d", tc.w, tc.h, tc.tw, tc.th, got, tc.want)
		}
	}
}

// A JPEG far larger than the model input is decoded at 1/8 by DCT
// scaling: a 6000×6000 photograph for a 28×28 model decodes 750×750
// pixels, fits a budget the full size would break, and gives the tensor
// of the full-size decode to within rounding.
func TestLargeJPEGDecodedDownscaled(t *testing.T) {
	const side = 6000
	src := image.NewRGBA(image.Rect(0, 0, side, side))
	for y := 0; y < side; y++ {
		for x := 0; x < side; x++ {
			i := src.PixOffset(x, y)
			src.Pix[i], src.Pix[i+1], src.Pix[i+2], src.Pix[i+3] = uint8(x*255/side), uint8(y*255/side), uint8((x+y)%256), 255
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, src, &jpeg.Options{Quality: 85}); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	in := Input{Name: "pixels", Layout: "NCHW", Width: 28, Height: 28, Channels: 3, Scale: 1.0 / 255, Mean: []float64{0}, Std: []float64{1}}

	img, format, err := decodeImage(data, 1<<20, in.Width, in.Height)
	if err != nil || format != "jpeg" {
		t.Fatalf("decode with a 1 MP budget: %v", err)
	}
	if b := img.Bounds(); b.Dx() != side/8 || b.Dy() != side/8 {
		t.Fatalf("decoded %v, want %dx%d", b, side/8, side/8)
	}
	// Without a model size, the same budget refuses the full image.
	if _, _, err := decodeImage(data, 1<<20, 0, 0); !IsTooLarge(err) {
		t.Fatalf("full-size decode over budget: %v", err)
	}

	p := newPreprocessor(in)
	scaled := make([]float32, p.size())
	if err := p.bytes(data, scaled); err != nil {
		t.Fatal(err)
	}
	full, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]float32, p.size())
	p.image(full, 1, ref)
	var worst float64
	for i := range ref {
		worst = math.Max(worst, math.Abs(float64(ref[i]-scaled[i])))
	}
	if worst > 0.05 {
		t.Fatalf("scaled decode differs from the full decode by up to %.3f (in units of full scale)", worst)
	}
}

func TestScaledJPEGCorruptAndGrey(t *testing.T) {
	g := image.NewGray(image.Rect(0, 0, 800, 600))
	for i := range g.Pix {
		g.Pix[i] = uint8(i % 251)
	}
	g.Set(0, 0, color.Gray{Y: 7})
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, g, nil); err != nil {
		t.Fatal(err)
	}
	img, _, err := decodeImage(buf.Bytes(), 1<<20, 28, 28)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := img.(*image.Gray); !ok || img.Bounds().Dx() != 100 {
		t.Fatalf("grey JPEG decoded as %T %v", img, img.Bounds())
	}
	// Cut in the middle of the scan (libjpeg would pad it with grey and
	// warn) or with a wrecked header: an error, never a picture, a crash
	// or a hang.
	cut := buf.Bytes()[:buf.Len()/2]
	for name, data := range map[string][]byte{
		"truncated":      cut,
		"wrecked header": append([]byte{0xff, 0xd8, 0xff, 0xc0, 0, 3}, cut[20:]...),
	} {
		if _, err := decodeJPEGScaled(data, 8); !errors.Is(err, ErrUndecodable) {
			t.Errorf("%s JPEG: %v, want ErrUndecodable", name, err)
		}
		if _, _, err := decodeImage(data, 1<<20, 28, 28); !errors.Is(err, ErrUndecodable) {
			t.Errorf("%s JPEG through decodeImage: %v, want ErrUndecodable", name, err)
		}
	}
}
