package ingest_test

import (
	"bytes"
	"encoding/base64"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// pngImage draws a small gradient as PNG.
func pngImage(t *testing.T, w, h int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, gradient(w, h)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func jpegImage(t *testing.T, w, h int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, gradient(w, h), &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gradient(w, h int) image.Image {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x * 255 / max(w, 1)), uint8(y * 255 / max(h, 1)), 128, 255})
		}
	}
	return img
}

// webpImage is a 1x1 lossy WebP.
func webpImage(t *testing.T) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString("UklGRiIAAABXRUJQVlA4IBYAAAAwAQCdASoBAAEADsD+JaQAA3AAAAAA")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pngBomb is a valid PNG header declaring a 100000x100000 canvas.
func pngBomb(t *testing.T) []byte {
	t.Helper()
	small := pngImage(t, 1, 1)
	// IHDR starts at byte 8 (length) + 4 (type); width and height follow.
	b := append([]byte(nil), small...)
	put := func(off int, v uint32) {
		b[off], b[off+1], b[off+2], b[off+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	}
	put(16, 100000)
	put(20, 100000)
	// Fix the IHDR CRC so decoders reach the size check.
	crc := crc32IEEE(b[12:29])
	put(29, crc)
	return b
}

// datasetImage reads a real photograph from the datasets cache.
func datasetImage(t *testing.T, name string) []byte {
	t.Helper()
	dir := os.Getenv("GRADELINE_DATASETS_DIR")
	if dir == "" {
		t.Fatal("GRADELINE_DATASETS_DIR is not set: run `make install` (or `make test`, which sets it)")
	}
	b, err := os.ReadFile(filepath.Join(dir, "images", name))
	if err != nil {
		t.Fatalf("%v: run `make install` to fetch the datasets", err)
	}
	return b
}

func crc32IEEE(b []byte) uint32 { return crc32.ChecksumIEEE(b) }

// newImage catalogues a small PNG for c and returns its id.
func newImage(t *testing.T, c *client) string {
	t.Helper()
	r := c.multipart("POST", "/api/v1/images", nil, filePart{"image", "a.png", pngImage(t, 8, 6)})
	if r.Status != http.StatusCreated {
		t.Fatalf("catalogue an image: %d %s", r.Status, r.Body)
	}
	return r.JSON(t)["img_id"].(string)
}

// share shares owner's image with user.
func share(t *testing.T, owner *client, image, user string) {
	t.Helper()
	if r := owner.do("PUT", "/api/v1/images/"+image+"/shares/"+user, nil, nil); r.Status != http.StatusOK {
		t.Fatalf("share %s with %s: %d %s", image, user, r.Status, r.Body)
	}
}
