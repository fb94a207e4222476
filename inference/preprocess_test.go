package inference

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/draw"
	"math"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/inference/internal/testenv"
)

// Every accepted format decodes to the pixels it holds: lossless formats
// exactly, JPEG and lossy WebP closely, and the model grades them alike.
func TestFormatsDecodeToTheSameInput(t *testing.T) {
	r := testRegistry(t)
	digits := mustModel(t, r, "digits")
	set := heldOutDigits(t)
	img := set.Image(0) // the digit the WebP test file holds
	want := digits.PreprocessImage(img)

	tests := []struct {
		name  string
		data  []byte
		exact bool
	}{
		{"png", encodePNG(t, img), true},
		{"gif", encodeGIF(t, img), true},
		{"bmp", encodeBMP(t, img), true},
		{"webp-lossless", readFile(t, filepath.Join("testdata", "digit-4-lossless.webp")), true},
		{"jpeg", encodeJPEG(t, img, 100), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := digits.Preprocess(tc.data)
			if err != nil {
				t.Fatal(err)
			}
			tol := 0.0
			if !tc.exact {
				tol = 12.0 / 255 / 0.3763 // a few grey levels, in normalised units
			}
			for i := range want {
				if d := math.Abs(float64(got[i] - want[i])); d > tol+1e-6 {
					t.Fatalf("value %d: got %v, want %v (tolerance %v)", i, got[i], want[i], tol)
				}
			}
			preds, err := r.Grade(t.Context(), "digits", [][]byte{tc.data})
			if err != nil || preds[0].Err != nil {
				t.Fatal(err, preds[0].Err)
			}
			if preds[0].Label != "4" {
				t.Errorf("graded %s, want 4", preds[0].Label)
			}
		})
	}
	t.Run("webp-lossy-resized", func(t *testing.T) {
		// 112x112 lossy VP8 of Fashion-MNIST test image 0 (an ankle boot):
		// resized to 28x28 by the preprocessing.
		preds, err := r.Grade(t.Context(), "fashion", [][]byte{readFile(t, filepath.Join("testdata", "ankle-boot-lossy.webp"))})
		if err != nil || preds[0].Err != nil {
			t.Fatal(err, preds[0].Err)
		}
		if preds[0].Label != "ankle-boot" {
			t.Errorf("graded %s (%v), want ankle-boot", preds[0].Label, preds[0].Scores)
		}
	})
}

// Bad bytes are rejected with a reason, never a panic, and a declared
// size beyond the limit is refused before pixels are allocated.
func TestUndecodableImages(t *testing.T) {
	good := encodeJPEG(t, heldOutDigits(t).Image(0), 90)
	tests := []struct {
		name, data, want string
	}{
		{"empty", "", "empty file"},
		{"text", "hello, this is not an image", "not a JPEG, PNG, GIF, WebP or BMP"},
		{"truncated-jpeg", string(good[:len(good)/2]), "jpeg"},
		{"jpeg-header-only", string(good[:20]), "jpeg"},
		{"png-bomb", string(pngHeader(100000, 100000)), "more than the limit"},
		{"png-zero-size", string(pngHeader(0, 10)), "png"},
		{"png-without-data", string(pngHeader(64, 64)), "png"},
		{"gif-garbage", "GIF89a\x10\x00\x10\x00\x00\x00\x00", "gif"},
		{"webp-garbage", "RIFF\x10\x00\x00\x00WEBPVP8 \x04\x00\x00\x00abcd", "webp"},
		{"bmp-garbage", "BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00", "bmp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			_, _, err := DecodeImage([]byte(tc.data))
			runtime.ReadMemStats(&ms1)
			if !errors.Is(err, ErrUndecodable) {
				t.Fatalf("err = %v, want ErrUndecodable", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to mention %q", err, tc.want)
			}
			if grew := ms1.TotalAlloc - ms0.TotalAlloc; grew > 8<<20 {
				t.Errorf("allocated %d bytes to reject it", grew)
			}
		})
	}
}

// pngHeader is a PNG signature and IHDR chunk declaring w x h RGBA pixels,
// with a correct CRC, and no image data.
func pngHeader(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 6 // 8 bits, RGBA
	chunk := append([]byte("IHDR"), ihdr...)
	binary.Write(&b, binary.BigEndian, uint32(len(ihdr)))
	b.Write(chunk)
	binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(chunk))
	return b.Bytes()
}

// quadrants is an upright test picture, wider than tall, with a distinct
// colour in each quadrant, so every turn and mirror is visible.
var quadColors = [4]color.RGBA{{255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 255, 255}, {255, 255, 255, 255}}

func quadrants(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			q := 0
			if x >= w/2 {
				q++
			}
			if y >= h/2 {
				q += 2
			}
			img.SetRGBA(x, y, quadColors[q])
		}
	}
	return img
}

// stored returns what a camera stores for an upright picture when it
// writes EXIF orientation o: the inverse of the turn a viewer applies.
func stored(up *image.RGBA, o int) *image.RGBA {
	w, h := up.Rect.Dx(), up.Rect.Dy()
	sw, sh := w, h
	if o >= 5 {
		sw, sh = h, w
	}
	out := image.NewRGBA(image.Rect(0, 0, sw, sh))
	for y := range h {
		for x := range w {
			var sx, sy int
			switch o {
			case 1:
				sx, sy = x, y
			case 2: // viewer mirrors left-right
				sx, sy = w-1-x, y
			case 3: // viewer turns 180°
				sx, sy = w-1-x, h-1-y
			case 4: // viewer mirrors top-bottom
				sx, sy = x, h-1-y
			case 5: // viewer transposes
				sx, sy = y, x
			case 6: // viewer turns 90° clockwise, so the camera stored it turned counter-clockwise
				sx, sy = y, w-1-x
			case 7: // viewer transverses
				sx, sy = h-1-y, w-1-x
			case 8: // viewer turns 90° counter-clockwise
				sx, sy = h-1-y, x
			}
			out.SetRGBA(sx, sy, up.RGBAAt(x, y))
		}
	}
	return out
}

// withEXIF inserts an APP1 EXIF segment with the orientation tag after SOI.
func withEXIF(jpg []byte, o int, bo binary.ByteOrder) []byte {
	var tiff bytes.Buffer
	if bo == binary.LittleEndian {
		tiff.WriteString("II")
	} else {
		tiff.WriteString("MM")
	}
	binary.Write(&tiff, bo, uint16(42))
	binary.Write(&tiff, bo, uint32(8))
	binary.Write(&tiff, bo, uint16(2)) // two entries: one unrelated, then orientation
	for _, e := range []struct{ tag, v uint16 }{{0x010F, 0}, {0x0112, uint16(o)}} {
		binary.Write(&tiff, bo, e.tag)
		binary.Write(&tiff, bo, uint16(3))
		binary.Write(&tiff, bo, uint32(1))
		binary.Write(&tiff, bo, e.v)
		binary.Write(&tiff, bo, uint16(0))
	}
	binary.Write(&tiff, bo, uint32(0))
	payload := append([]byte("Exif\x00\x00"), tiff.Bytes()...)
	seg := []byte{0xFF, 0xE1, 0, 0}
	binary.BigEndian.PutUint16(seg[2:], uint16(len(payload)+2))
	seg = append(seg, payload...)
	out := append([]byte{}, jpg[:2]...)
	out = append(out, seg...)
	return append(out, jpg[2:]...)
}

func TestEXIFOrientation(t *testing.T) {
	const w, h = 64, 32
	up := quadrants(w, h)
	pre := newPreprocessor(Input{Name: "x", Layout: "NHWC", Width: w, Height: h, Channels: 3, Scale: 1, Mean: []float64{0}, Std: []float64{1}})
	for o := 1; o <= 8; o++ {
		for _, bo := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
			data := withEXIF(encodeJPEG(t, stored(up, o), 95), o, bo)
			if got := jpegOrientation(data); got != o {
				t.Fatalf("orientation %d (%v): read %d", o, bo, got)
			}
			dst := make([]float32, pre.size())
			if err := pre.bytes(data, dst); err != nil {
				t.Fatal(err)
			}
			// Sample the middle of each quadrant of the upright picture.
			for q, c := range quadColors {
				x, y := w/4+(q%2)*w/2, h/4+(q/2)*h/2
				i := 3 * (y*w + x)
				for ch, want := range []uint8{c.R, c.G, c.B} {
					if d := math.Abs(float64(dst[i+ch]) - float64(want)); d > 24 {
						t.Fatalf("orientation %d: quadrant %d channel %d is %v, want %v", o, q, ch, dst[i+ch], want)
					}
				}
			}
		}
	}
}

func TestMalformedEXIFIsIgnored(t *testing.T) {
	jpg := encodeJPEG(t, quadrants(16, 8), 90)
	full := withEXIF(jpg, 6, binary.BigEndian)
	// Every truncation of the EXIF segment, and a few corruptions, must read
	// as "no orientation" or the real value, never panic.
	for n := 2; n < 60; n++ {
		b := append(append([]byte{}, full[:n]...), jpg[2:]...)
		if o := jpegOrientation(b); o < 1 || o > 8 {
			t.Fatalf("truncated at %d: orientation %d", n, o)
		}
	}
	bad := append([]byte{}, full...)
	bad[2+4+6+4] = 0xFF // IFD offset out of range
	if o := jpegOrientation(bad); o != 1 {
		t.Errorf("bad IFD offset: orientation %d, want 1", o)
	}
	if o := jpegOrientation(withEXIF(jpg, 9, binary.LittleEndian)); o != 1 {
		t.Errorf("orientation 9 read as %d, want 1", o)
	}
	if o := jpegOrientation([]byte{0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x01}); o != 1 {
		t.Errorf("short segment: %d", o)
	}
}

// Real photographs from Debian packages are decoded, turned grey or kept
// RGB, resized and normalised; grey follows BT.601 luma.
func TestRealPhotographs(t *testing.T) {
	for _, name := range []string{"retina.jpg", "flower.jpg", "china.jpg", "astronaut.png", "coffee.png", "chelsea.png"} {
		t.Run(name, func(t *testing.T) {
			data := readFile(t, testenv.Dataset(t, filepath.Join("images", name)))
			img, _, err := DecodeImage(data)
			if err != nil {
				t.Fatal(err)
			}
			rgb := newPreprocessor(Input{Layout: "NCHW", Width: 32, Height: 24, Channels: 3, Scale: 1, Mean: []float64{0}, Std: []float64{1}})
			grey := newPreprocessor(Input{Layout: "NCHW", Width: 32, Height: 24, Channels: 1, Scale: 1.0 / 255, Mean: []float64{0.5}, Std: []float64{0.25}})
			x, g := make([]float32, rgb.size()), make([]float32, grey.size())
			if err := rgb.bytes(data, x); err != nil {
				t.Fatal(err)
			}
			if err := grey.bytes(data, g); err != nil {
				t.Fatal(err)
			}
			// The mean colour survives the resize (area-preserving filter).
			r, gr := meanRedGreen(img)
			var mr, mg float64
			plane := 32 * 24
			for i := range plane {
				mr += float64(x[i])
				mg += float64(x[plane+i])
			}
			mr, mg = mr/float64(plane), mg/float64(plane)
			if math.Abs(mr-r) > 6 || math.Abs(mg-gr) > 6 {
				t.Errorf("mean red/green after resize %.1f/%.1f, before %.1f/%.1f", mr, mg, r, gr)
			}
			for i := range plane {
				luma := 0.299*float64(x[i]) + 0.587*float64(x[plane+i]) + 0.114*float64(x[2*plane+i])
				want := (luma/255 - 0.5) / 0.25
				if math.Abs(float64(g[i])-want) > 0.02 {
					t.Fatalf("grey value %d is %v, want %v", i, g[i], want)
				}
			}
		})
	}
}

// Transparent pixels are composited over black, and NCHW/NHWC place the
// channels where the layout says.
func TestLayoutsAndAlpha(t *testing.T) {
	img := image.NewNRGBA(image.Rect(0, 0, 2, 1))
	img.SetNRGBA(0, 0, color.NRGBA{10, 20, 30, 255})
	img.SetNRGBA(1, 0, color.NRGBA{200, 100, 50, 0}) // fully transparent
	data := encodePNG(t, img)
	for _, tc := range []struct {
		layout string
		want   []float32
	}{
		{"NCHW", []float32{10, 0, 20, 0, 30, 0}},
		{"NHWC", []float32{10, 20, 30, 0, 0, 0}},
	} {
		pre := newPreprocessor(Input{Layout: tc.layout, Width: 2, Height: 1, Channels: 3, Scale: 1, Mean: []float64{0}, Std: []float64{1}})
		dst := make([]float32, pre.size())
		if err := pre.bytes(data, dst); err != nil {
			t.Fatal(err)
		}
		for i := range dst {
			if dst[i] != tc.want[i] {
				t.Fatalf("%s: got %v, want %v", tc.layout, dst, tc.want)
			}
		}
	}
	// Per-channel mean and std.
	pre := newPreprocessor(Input{Layout: "NCHW", Width: 1, Height: 1, Channels: 3, Scale: 0.5, Mean: []float64{1, 2, 3}, Std: []float64{2, 4, 8}})
	one := image.NewRGBA(image.Rect(0, 0, 1, 1))
	draw.Draw(one, one.Rect, image.NewUniform(color.RGBA{10, 20, 30, 255}), image.Point{}, draw.Src)
	dst := make([]float32, 3)
	pre.image(one, 1, dst)
	if want := []float32{2, 2, 1.5}; dst[0] != want[0] || dst[1] != want[1] || dst[2] != want[2] {
		t.Errorf("normalised %v, want %v", dst, want)
	}
}
