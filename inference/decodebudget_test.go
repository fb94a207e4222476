package inference

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/jpeg"
	"strings"
	"testing"
)

// bigPNG streams a valid w×h 16-bit RGBA PNG of one colour: it compresses
// to a few hundred KB whatever its size, without holding the pixels.
func bigPNG(t testing.TB, w, h int) []byte {
	t.Helper()
	var out bytes.Buffer
	out.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(data)))
		out.Write(n[:])
		c := crc32.NewIEEE()
		c.Write([]byte(typ))
		c.Write(data)
		out.WriteString(typ)
		out.Write(data)
		binary.BigEndian.PutUint32(n[:], c.Sum32())
		out.Write(n[:])
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = 16, 6 // 16 bits, RGBA
	chunk("IHDR", ihdr)
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestSpeed)
	row := make([]byte, 1+8*w)
	for i := 1; i < len(row); i += 8 {
		row[i], row[i+2], row[i+4], row[i+6] = 0x80, 0x40, 0x20, 0xff
		row[i+7] = 0xff
	}
	for range h {
		if _, err := zw.Write(row); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	chunk("IDAT", z.Bytes())
	chunk("IEND", nil)
	return out.Bytes()
}

// A 7000×7000 16-bit PNG (49 MP, 392 MB decoded) is refused by its header
// for every model, naming the limit; a per-model budget applies below the
// absolute cap, and images within it decode.
func TestDecodeBudget(t *testing.T) {
	huge := bigPNG(t, 7000, 7000)
	if len(huge) > 4<<20 {
		t.Fatalf("the test image is %d bytes; it should compress to little", len(huge))
	}
	fashion := newPreprocessor(Input{Layout: "NCHW", Width: 28, Height: 28, Channels: 1, Scale: 1.0 / 255, Mean: []float64{0}, Std: []float64{1}})
	if fashion.budget != MinDecodeBudget {
		t.Fatalf("fashion budget %d, want the floor %d", fashion.budget, MinDecodeBudget)
	}
	dst := make([]float32, fashion.size())
	err := fashion.bytes(huge, dst)
	if !errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrUndecodable) {
		t.Fatalf("7000x7000 PNG: %v", err)
	}
	for _, want := range []string{"7000x7000", "49000000 pixels", "max_pixels", EnvMaxImagePixels} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if _, _, err := DecodeImage(huge); !IsTooLarge(err) {
		t.Fatalf("absolute cap: %v", err)
	}
	// A model's own budget, below the cap.
	small := newPreprocessor(Input{Layout: "NCHW", Width: 28, Height: 28, Channels: 1, Scale: 1, Mean: []float64{0}, Std: []float64{1}, MaxPixels: 100 * 100})
	if err := small.bytes(bigPNG(t, 101, 100), dst); !IsTooLarge(err) {
		t.Fatalf("101x100 over a 100x100 budget: %v", err)
	}
	if err := small.bytes(bigPNG(t, 100, 100), dst); err != nil {
		t.Fatalf("100x100 within budget: %v", err)
	}
	// A big model's default is 64× its input, capped.
	big := decodeBudget(Input{Width: 1024, Height: 1024})
	if big != min(64*1024*1024, MaxImagePixels) {
		t.Fatalf("1024x1024 model budget %d", big)
	}
	// JPEGs follow the same budget (no scaled decode: refused by header).
	var jb bytes.Buffer
	if err := jpeg.Encode(&jb, image.NewGray(image.Rect(0, 0, 200, 100)), nil); err != nil {
		t.Fatal(err)
	}
	if err := small.bytes(jb.Bytes(), dst); !IsTooLarge(err) {
		t.Fatalf("200x100 JPEG over budget: %v", err)
	}
}

func TestManifestMaxPixels(t *testing.T) {
	y := "name: m\ninput: {name: x, width: 28, height: 28, channels: 1, max_pixels: %s}\noutput: {name: y}\nlabels: [a, b]\n"
	m, err := ParseManifest([]byte(strings.Replace(y, "%s", "40000", 1)), "m")
	if err != nil || m.Input.MaxPixels != 40000 {
		t.Fatalf("max_pixels: %v %+v", err, m)
	}
	if _, err := ParseManifest([]byte(strings.Replace(y, "%s", "-1", 1)), "m"); err == nil || !strings.Contains(err.Error(), "max_pixels") {
		t.Fatalf("negative max_pixels: %v", err)
	}
}
