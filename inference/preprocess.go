package inference

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/draw"
	_ "image/gif" // registered decoders: the formats the service accepts
	_ "image/jpeg"
	_ "image/png"
	"io"

	"golang.org/x/sync/errgroup"

	_ "golang.org/x/image/bmp"
	xdraw "golang.org/x/image/draw"
	_ "golang.org/x/image/webp"
)

// ErrUndecodable wraps every reason an image cannot be graded: the same
// bytes fail the same way every time, so such images are not retried.
var ErrUndecodable = errors.New("image cannot be decoded")

// Formats are the image formats the decoder accepts.
var Formats = []string{"jpeg", "png", "gif", "webp", "bmp"}

// DecodeImage decodes JPEG, PNG, GIF (first frame), WebP or BMP bytes of
// at most MaxImagePixels and returns the image with its format name.
// Errors wrap ErrUndecodable.
func DecodeImage(data []byte) (image.Image, string, error) {
	return decodeImage(data, MaxImagePixels, 0, 0)
}

// decodeImage decodes an image of at most budget pixels. The header is
// read before any pixel is allocated, so a decompression bomb (a tiny PNG
// that declares 100000×100000) is refused without allocating it. A JPEG
// much larger than a tw×th input is decoded downscaled by DCT scaling
// (up to 1/8), and the budget applies to the pixels actually decoded.
func decodeImage(data []byte, budget int64, tw, th int) (image.Image, string, error) {
	if len(data) == 0 {
		return nil, "", fmt.Errorf("%w: empty file", ErrUndecodable)
	}
	cfg, format, err := image.DecodeConfig(newPeekReader(data))
	if err != nil {
		if errors.Is(err, image.ErrFormat) {
			return nil, "", fmt.Errorf("%w: not a JPEG, PNG, GIF, WebP or BMP image", ErrUndecodable)
		}
		return nil, "", fmt.Errorf("%w: %s header: %v", ErrUndecodable, format, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, "", fmt.Errorf("%w: %s declares an empty %dx%d image", ErrUndecodable, format, cfg.Width, cfg.Height)
	}
	if format == "jpeg" {
		if d := jpegScale(cfg.Width, cfg.Height, tw, th); d > 1 {
			sw, sh := (cfg.Width+d-1)/d, (cfg.Height+d-1)/d
			if err := checkBudget(format, sw, sh, budget); err != nil {
				return nil, "", err
			}
			release := acquireDecode(int64(sw) * int64(sh))
			img, err := decodeJPEGScaled(data, d)
			release()
			if !errors.Is(err, errJPEGColorSpace) {
				return img, format, err
			}
		}
	}
	if err := checkBudget(format, cfg.Width, cfg.Height, budget); err != nil {
		return nil, "", err
	}
	defer acquireDecode(int64(cfg.Width) * int64(cfg.Height))()
	if format == "png" {
		// The common small 8-bit PNGs without image/png's per-image zlib
		// reader; on any error image/png decides, with its own message.
		if img, err := decodePNG(data, cfg.Width, cfg.Height); err == nil {
			return img, format, nil
		}
	}
	img, _, err := image.Decode(newPeekReader(data))
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s: %v", ErrUndecodable, format, err)
	}
	return img, format, nil
}

// A peekReader reads bytes in memory and can Peek, so that image.Decode
// and image.DecodeConfig use it as it is instead of copying it through a
// new 4 KiB bufio.Reader each (two per graded image).
type peekReader struct {
	*bytes.Reader
	data []byte
}

func newPeekReader(data []byte) peekReader { return peekReader{bytes.NewReader(data), data} }

// Peek returns the next n bytes without advancing, as bufio.Reader does.
func (r peekReader) Peek(n int) ([]byte, error) {
	off := len(r.data) - r.Len()
	if n > r.Len() {
		return r.data[off:], io.EOF
	}
	return r.data[off : off+n], nil
}

// preprocessor turns an image into a model's input, per the manifest.
type preprocessor struct {
	in Input
	// budget is the most pixels an image may have (decodeBudget).
	budget int64
	// lut[c][p] = (p*scale - mean[c]) / std[c] for pixel value p: the
	// normalisation of one value costs one load.
	lut [][256]float32
}

func newPreprocessor(in Input) *preprocessor {
	p := &preprocessor{in: in, budget: decodeBudget(in), lut: make([][256]float32, in.Channels)}
	for c := range in.Channels {
		mean, std := in.Mean[0], in.Std[0]
		if len(in.Mean) > c && len(in.Mean) > 1 {
			mean = in.Mean[c]
		}
		if len(in.Std) > c && len(in.Std) > 1 {
			std = in.Std[c]
		}
		for v := range 256 {
			p.lut[c][v] = float32((float64(v)*in.Scale - mean) / std)
		}
	}
	return p
}

// size is the number of float32 values of one image.
func (p *preprocessor) size() int { return p.in.Width * p.in.Height * p.in.Channels }

// bytes decodes data, applies its EXIF orientation and writes the tensor
// of one image into dst (len p.size()).
func (p *preprocessor) bytes(data []byte, dst []float32) error {
	img, format, err := decodeImage(data, p.budget, p.in.Width, p.in.Height)
	if err != nil {
		return err
	}
	o := 1
	if format == "jpeg" {
		o = jpegOrientation(data)
	}
	p.image(img, o, dst)
	return nil
}

// image resizes img to the model's input (bilinear, anti-aliased when
// shrinking), applies EXIF orientation o and normalises into dst.
// Transparent pixels are composited over black.
func (p *preprocessor) image(img image.Image, o int, dst []float32) {
	w, h := p.in.Width, p.in.Height
	if orientSwapsAxes(o) {
		w, h = h, w // resize first, turn the few resulting pixels after
	}
	b := img.Bounds()
	var rgba *image.RGBA
	if g, ok := img.(*image.Gray); ok && o == 1 && b.Dx() == w && b.Dy() == h && p.in.Channels == 1 {
		p.gray(g, dst) // the common case of small grey inputs, without copies
		return
	}
	rgba = image.NewRGBA(image.Rect(0, 0, w, h))
	if b.Dx() == w && b.Dy() == h {
		draw.Draw(rgba, rgba.Rect, img, b.Min, draw.Src)
	} else {
		xdraw.BiLinear.Scale(rgba, rgba.Rect, img, b, xdraw.Src, nil)
	}
	rgba = orient(rgba, o)
	p.rgba(rgba, dst)
}

func (p *preprocessor) gray(g *image.Gray, dst []float32) {
	w, h := p.in.Width, p.in.Height
	lut := &p.lut[0]
	for y := range h {
		row := g.Pix[y*g.Stride : y*g.Stride+w]
		out := dst[y*w : y*w+w]
		for x, v := range row {
			out[x] = lut[v]
		}
	}
}

func (p *preprocessor) rgba(m *image.RGBA, dst []float32) {
	w, h, c := p.in.Width, p.in.Height, p.in.Channels
	plane := w * h
	nchw := p.in.Layout == "NCHW"
	for y := range h {
		row := m.Pix[y*m.Stride : y*m.Stride+4*w]
		for x := range w {
			px := row[4*x : 4*x+4 : 4*x+4]
			i := y*w + x
			if c == 1 {
				// ITU-R BT.601 luma, as image/color's GrayModel.
				l := (19595*uint32(px[0]) + 38470*uint32(px[1]) + 7471*uint32(px[2]) + 1<<15) >> 16
				dst[i] = p.lut[0][l]
				continue
			}
			if nchw {
				dst[i] = p.lut[0][px[0]]
				dst[plane+i] = p.lut[1][px[1]]
				dst[2*plane+i] = p.lut[2][px[2]]
			} else {
				dst[3*i] = p.lut[0][px[0]]
				dst[3*i+1] = p.lut[1][px[1]]
				dst[3*i+2] = p.lut[2][px[2]]
			}
		}
	}
}

// parallelN runs f(i) for i in [0, n) on up to workers goroutines. When
// ctx ends, the remaining indices are not run.
func parallelN(ctx context.Context, n, workers int, f func(i int)) {
	var g errgroup.Group
	g.SetLimit(max(1, workers))
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error { f(i); return nil })
	}
	_ = g.Wait()
}
