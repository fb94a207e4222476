package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"image"
	"image/color"
	_ "image/gif" // register decoders for DecodeConfig
	_ "image/jpeg"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	_ "golang.org/x/image/bmp"
	_ "golang.org/x/image/webp"

	"github.com/gradeline/gradeline/bus"
)

// maxImagePixels rejects decompression bombs (a tiny file declaring a huge
// canvas) before anything allocates the canvas.
const maxImagePixels = 50_000_000

// acceptedTypes are the sniffed content types ingest stores.
var acceptedTypes = map[string]bool{
	"image/jpeg": true, "image/png": true, "image/gif": true, "image/webp": true, "image/bmp": true,
}

// upload is an inspected image from a multipart form.
type upload struct {
	Data        []byte
	ContentType string
	Filename    string
	Width       int
	Height      int
	SHA256      string
	// colorModel is the header's, for what a full decode would allocate.
	colorModel color.Model
}

// multipartForm parses the body as multipart/form-data; anything else is 415.
func multipartForm(c *fiber.Ctx) (*multipart.Form, error) {
	ct := strings.ToLower(c.Get(fiber.HeaderContentType))
	if !strings.HasPrefix(ct, fiber.MIMEMultipartForm) {
		return nil, errorf(http.StatusUnsupportedMediaType, "Content-Type must be multipart/form-data, not %q", ct)
	}
	form, err := c.MultipartForm()
	if err != nil {
		return nil, &apiError{Status: http.StatusBadRequest, Message: "malformed multipart form", Cause: err}
	}
	return form, nil
}

func formValue(form *multipart.Form, names ...string) string {
	for _, n := range names {
		for _, v := range form.Value[n] {
			if v = strings.TrimSpace(v); v != "" {
				return v
			}
		}
	}
	return ""
}

// readUpload reads and inspects the file field: it must be one of the
// accepted image types (415 otherwise) whose header decodes to sane
// dimensions (422 otherwise).
func readUpload(form *multipart.Form, field string, limit int64) (*upload, error) {
	files := form.File[field]
	if len(files) == 0 {
		return nil, invalid("missing fields", field+": required (a file field)")
	}
	fh := files[0]
	f, err := fh.Open()
	if err != nil {
		return nil, &apiError{Status: http.StatusBadRequest, Message: "cannot read the uploaded file", Cause: err}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, &apiError{Status: http.StatusBadRequest, Message: "cannot read the uploaded file", Cause: err}
	}
	if int64(len(data)) > limit {
		return nil, errorf(http.StatusRequestEntityTooLarge, "image exceeds %d bytes", limit)
	}
	if len(data) == 0 {
		return nil, invalid("invalid image", field+": the file is empty")
	}
	ct := http.DetectContentType(data)
	if !acceptedTypes[ct] {
		return nil, &apiError{Status: http.StatusUnsupportedMediaType, Message: "not a supported image type",
			Details: []string{fmt.Sprintf("%s: detected %s; accepted: image/jpeg, image/png, image/gif, image/webp, image/bmp", field, ct)}}
	}
	cfg, err := decodeConfig(data, ct)
	if err != nil {
		return nil, &apiError{Status: http.StatusUnprocessableEntity, Message: "invalid image",
			Details: []string{fmt.Sprintf("%s: the %s header cannot be decoded", field, ct)}, Cause: err}
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || int64(cfg.Width)*int64(cfg.Height) > maxImagePixels {
		return nil, invalid("invalid image", fmt.Sprintf("%s: dimensions %dx%d outside 1..%d pixels", field, cfg.Width, cfg.Height, maxImagePixels))
	}
	sum := sha256.Sum256(data)
	return &upload{Data: data, ContentType: ct, Filename: cleanFilename(fh.Filename),
		Width: cfg.Width, Height: cfg.Height, SHA256: hex.EncodeToString(sum[:]), colorModel: cfg.ColorModel}, nil
}

// decodeConfig reads the image header. A PNG, the usual upload, goes
// straight to image/png: image.DecodeConfig would first copy the data
// through a new 4 KiB bufio.Reader to sniff a format already detected.
func decodeConfig(data []byte, contentType string) (image.Config, error) {
	if contentType == "image/png" {
		return png.DecodeConfig(bytes.NewReader(data))
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	return cfg, err
}

// maxValidateBytes bounds the memory of validating one catalogue image by
// decoding it whole; validations run one at a time (fullDecodes), so the
// edge's memory for them stays below this.
const maxValidateBytes = 128 << 20

var fullDecodes = make(chan struct{}, 1)

// bytesPerPixel is what the decoder allocates per pixel for a colour model.
func bytesPerPixel(m color.Model) int64 {
	switch m {
	case color.RGBA64Model, color.NRGBA64Model:
		return 8
	case color.Gray16Model:
		return 2
	case color.GrayModel, color.AlphaModel:
		return 1
	}
	if _, ok := m.(color.Palette); ok {
		return 1
	}
	return 4 // RGBA, NRGBA, CMYK; YCbCr needs less
}

// validateWholeImage decodes the whole image, so a truncated or corrupt
// file is refused (422) instead of entering the catalogue with a valid
// header; images whose decoding would need more than maxValidateBytes are
// refused first (413), naming the limit.
func validateWholeImage(ctx context.Context, up *upload) error {
	// The header was decoded and its dimensions bounded once, by readUpload.
	if need := int64(up.Width) * int64(up.Height) * bytesPerPixel(up.colorModel); need > maxValidateBytes {
		return &apiError{Status: http.StatusRequestEntityTooLarge, Message: "image too large to catalogue",
			Details: []string{fmt.Sprintf("image: %dx%d decodes to %d MiB, more than the limit of %d MiB", up.Width, up.Height, need>>20, maxValidateBytes>>20)}}
	}
	select {
	case fullDecodes <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-fullDecodes }()
	if _, _, err := image.Decode(bytes.NewReader(up.Data)); err != nil {
		return &apiError{Status: http.StatusUnprocessableEntity, Message: "invalid image",
			Details: []string{fmt.Sprintf("image: the %s data is truncated or corrupt", up.ContentType)}, Cause: err}
	}
	return nil
}

// cleanFilename keeps the base name, printable and bounded: it is metadata
// shown back to the owner, never a path.
func cleanFilename(name string) string {
	name = filepath.Base(strings.ReplaceAll(name, `\`, "/"))
	if name == "." || name == "/" {
		return ""
	}
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, name)
	if len(name) > 255 {
		name = name[:255]
	}
	return name
}

// storeImage puts the bytes in the object store under name (the claim
// check every event refers to).
func (s *Server) storeImage(ctx context.Context, name string, up *upload) (bus.ImageRef, error) {
	// A full disk refuses at once; a put would wait out its timeout.
	if p := s.storageProblemText(); p != "" {
		return bus.ImageRef{}, &apiError{Status: http.StatusServiceUnavailable, Message: "the image was not stored: " + p}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if s.storageProblem.Load() != nil {
		// A write that fails for want of space is never acknowledged: stop
		// waiting as soon as the disk is known to be full.
		go func() {
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if s.storageProblemText() != "" {
						cancel()
						return
					}
				}
			}
		}()
	}
	start := time.Now()
	_, err := s.images.Put(ctx, jetstream.ObjectMeta{
		Name:    name,
		Headers: nats.Header{"Content-Type": []string{up.ContentType}, "X-Sha256": []string{up.SHA256}},
	}, bytes.NewReader(up.Data))
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	s.metrics.objectPut.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	if err != nil {
		msg := "the object store (NATS JetStream) did not store the image"
		if p := s.storageProblemText(); p != "" {
			msg = "the image was not stored: " + p
		}
		return bus.ImageRef{}, &apiError{Status: http.StatusServiceUnavailable, Message: msg, Details: []string{err.Error()}}
	}
	return bus.ImageRef{Object: name, SHA256: up.SHA256, ContentType: up.ContentType, Size: int64(len(up.Data))}, nil
}
