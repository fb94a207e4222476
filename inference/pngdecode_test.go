package inference

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/gradeline/gradeline/inference/internal/testenv"
)

// rawPNG is a PNG written field by field, so that a test chooses what
// image/png's encoder chooses itself: each row's filter, the IDAT split,
// colour types it never writes (gray+alpha), colour keys, interlacing.
type rawPNG struct {
	w, h      int
	depth, ct byte
	interlace bool
	plte      []byte
	trns      []byte
	// pix holds the unfiltered rows (rowBytes(w) each); random if nil.
	pix []byte
	// filter is the filter type of row y (of each pass when interlaced).
	filter func(y int) byte
	// idatSize is the most bytes per IDAT chunk (0: one chunk).
	idatSize int
	// trailing is written after the zlib stream, inside the IDAT data.
	trailing []byte
	// before and after are chunks written before the first and after the
	// last IDAT chunk.
	before, after []byte
}

func (p *rawPNG) bitsPerPixel() int {
	ch := map[byte]int{pngGray: 1, pngRGB: 3, pngPaletted: 1, pngGrayAlpha: 2, pngRGBA: 4}[p.ct]
	return ch * int(p.depth)
}

func (p *rawPNG) rowBytes(w int) int { return (p.bitsPerPixel()*w + 7) / 8 }

// pngChunk frames body as a chunk of type typ, with its CRC.
func pngChunk(typ string, body []byte) []byte {
	c := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	c = append(append(c, typ...), body...)
	return binary.BigEndian.AppendUint32(c, crc32.ChecksumIEEE(c[4:]))
}

func (p *rawPNG) ihdr() []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(p.w))
	b = binary.BigEndian.AppendUint32(b, uint32(p.h))
	il := byte(0)
	if p.interlace {
		il = 1
	}
	return append(b, p.depth, p.ct, 0, 0, il)
}

// zdata is the zlib stream of the filtered scanlines.
func (p *rawPNG) zdata(t testing.TB, rng *rand.Rand) []byte {
	t.Helper()
	n := p.rowBytes(p.w)
	if p.pix == nil {
		p.pix = make([]byte, n*p.h)
		for i := range p.pix {
			// A gradient with noise, so that the filters differ.
			p.pix[i] = byte(i/3) + byte(rng.IntN(8))
		}
	}
	var lines bytes.Buffer
	if !p.interlace {
		p.filterRows(&lines, p.pix, p.w, p.h)
	} else {
		if p.bitsPerPixel()%8 != 0 {
			t.Fatal("rawPNG interlaces whole bytes only")
		}
		bpp := p.bitsPerPixel() / 8
		for _, s := range [][4]int{{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}} {
			x0, y0, dx, dy := s[0], s[1], s[2], s[3]
			pw, ph := (p.w-x0+dx-1)/dx, (p.h-y0+dy-1)/dy
			if pw <= 0 || ph <= 0 {
				continue
			}
			var pass []byte
			for y := y0; y < p.h; y += dy {
				for x := x0; x < p.w; x += dx {
					pass = append(pass, p.pix[y*n+x*bpp:y*n+(x+1)*bpp]...)
				}
			}
			p.filterRows(&lines, pass, pw, ph)
		}
	}
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	if _, err := zw.Write(lines.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return append(z.Bytes(), p.trailing...)
}

// filterRows writes h rows of w pixels from pix, each filtered as p.filter
// says, with the spec's predictors written out plainly.
func (p *rawPNG) filterRows(dst *bytes.Buffer, pix []byte, w, h int) {
	n := p.rowBytes(w)
	bpp := max(1, p.bitsPerPixel()/8)
	prev := make([]byte, n)
	for y := range h {
		row := pix[y*n : (y+1)*n]
		ft := byte(0)
		if p.filter != nil {
			ft = p.filter(y)
		}
		dst.WriteByte(ft)
		for i, v := range row {
			var a, b, c byte // left, up, up-left
			if i >= bpp {
				a, c = row[i-bpp], prev[i-bpp]
			}
			b = prev[i]
			switch ft {
			case 1:
				v -= a
			case 2:
				v -= b
			case 3:
				v -= byte((int(a) + int(b)) / 2)
			case 4:
				pr := int(a) + int(b) - int(c)
				da, db, dc := absInt(pr-int(a)), absInt(pr-int(b)), absInt(pr-int(c))
				if da <= db && da <= dc {
					v -= a
				} else if db <= dc {
					v -= b
				} else {
					v -= c
				}
			}
			dst.WriteByte(v)
		}
		prev = row
	}
}

func (p rawPNG) encode(t testing.TB, seed uint64) []byte {
	t.Helper()
	z := p.zdata(t, rand.New(rand.NewPCG(seed, 1)))
	out := append([]byte(pngSignature), pngChunk("IHDR", p.ihdr())...)
	if p.plte != nil {
		out = append(out, pngChunk("PLTE", p.plte)...)
	}
	if p.trns != nil {
		out = append(out, pngChunk("tRNS", p.trns)...)
	}
	out = append(out, p.before...)
	size := p.idatSize
	if size <= 0 {
		size = len(z)
	}
	for len(z) > 0 {
		k := min(size, len(z))
		out = append(out, pngChunk("IDAT", z[:k])...)
		z = z[k:]
	}
	out = append(out, p.after...)
	return append(out, pngChunk("IEND", nil)...)
}

// namedPNG is a test file.
type namedPNG struct {
	name string
	data []byte
	// path is where decodeImage should take it: pathFast or pathFallback
	// (image/png decodes it).
	path string
}

const (
	pathFast     = "fast"
	pathFallback = "fallback"
	pathError    = "error"
)

// palette returns n RGB entries.
func testPalette(n int) []byte {
	b := make([]byte, 3*n)
	for i := range b {
		b[i] = byte(i * 37)
	}
	return b
}

// craftedPNGs are files written by rawPNG: every fast colour type, size
// and filter, IDAT split in several ways, colour keys and palettes with
// transparency, and files outside the fast path.
func craftedPNGs(t testing.TB) []namedPNG {
	var out []namedPNG
	add := func(name, path string, p rawPNG) {
		out = append(out, namedPNG{name, p.encode(t, uint64(len(out))), path})
	}
	sizes := [][2]int{{1, 1}, {3, 2}, {28, 28}, {33, 17}, {1, 40}, {40, 1}, {224, 224}}
	filters := []struct {
		name string
		f    func(y int) byte
	}{
		{"none", func(int) byte { return 0 }},
		{"sub", func(int) byte { return 1 }},
		{"up", func(int) byte { return 2 }},
		{"average", func(int) byte { return 3 }},
		{"paeth", func(int) byte { return 4 }},
		{"mixed", func(y int) byte { return byte(y % 5) }},
	}
	for _, ct := range []byte{pngGray, pngRGB, pngPaletted, pngGrayAlpha, pngRGBA} {
		for _, s := range sizes {
			for i, f := range filters {
				p := rawPNG{w: s[0], h: s[1], depth: 8, ct: ct, filter: f.f, idatSize: []int{0, 1, 7, 100, 4096, 0}[i]}
				if ct == pngPaletted {
					p.plte = testPalette(256)
				}
				add(fmt.Sprintf("ct%d-%dx%d-%s-idat%d", ct, s[0], s[1], f.name, p.idatSize), pathFast, p)
			}
		}
	}
	mixed := filters[5].f
	grayPix := []byte{0, 7, 7, 255, 9, 7, 1, 2, 7}
	rgbPix := []byte{1, 2, 3, 1, 2, 4, 1, 2, 3, 0, 2, 3, 9, 9, 9, 1, 2, 3}
	indices := []byte{0, 1, 2, 3, 4, 5, 6, 200, 255, 2, 2, 2}
	text := pngChunk("tEXt", []byte("Comment\x00made by a test"))
	for _, tc := range []struct {
		name, path string
		p          rawPNG
	}{
		{"gray-key", pathFast, rawPNG{w: 3, h: 3, depth: 8, ct: pngGray, trns: []byte{0, 7}, pix: grayPix, filter: mixed}},
		{"gray-key-high-byte", pathFast, rawPNG{w: 3, h: 3, depth: 8, ct: pngGray, trns: []byte{1, 7}, pix: grayPix}},
		{"gray-key-random", pathFast, rawPNG{w: 33, h: 17, depth: 8, ct: pngGray, trns: []byte{0, 20}, filter: mixed}},
		{"rgb-key", pathFast, rawPNG{w: 3, h: 2, depth: 8, ct: pngRGB, trns: []byte{0, 1, 0, 2, 0, 3}, pix: rgbPix, filter: mixed}},
		{"rgb-key-after-plte", pathFast, rawPNG{w: 3, h: 2, depth: 8, ct: pngRGB, plte: testPalette(4), trns: []byte{9, 1, 9, 2, 9, 3}, pix: rgbPix}},
		{"rgb-plte-ignored", pathFast, rawPNG{w: 3, h: 2, depth: 8, ct: pngRGB, plte: testPalette(16), pix: rgbPix}},
		{"rgba-plte-ignored", pathFast, rawPNG{w: 5, h: 5, depth: 8, ct: pngRGBA, plte: testPalette(1)}},
		{"paletted-short-trns", pathFast, rawPNG{w: 4, h: 3, depth: 8, ct: pngPaletted, plte: testPalette(10), trns: []byte{0, 128, 255}, pix: indices}},
		{"paletted-long-trns", pathFast, rawPNG{w: 4, h: 3, depth: 8, ct: pngPaletted, plte: testPalette(3), trns: bytes.Repeat([]byte{9}, 20), pix: indices}},
		{"paletted-empty-trns", pathFast, rawPNG{w: 4, h: 3, depth: 8, ct: pngPaletted, plte: testPalette(3), trns: []byte{}, pix: indices}},
		{"paletted-out-of-range", pathFast, rawPNG{w: 4, h: 3, depth: 8, ct: pngPaletted, plte: testPalette(5), pix: indices, filter: mixed}},
		{"paletted-trns-256", pathFast, rawPNG{w: 4, h: 3, depth: 8, ct: pngPaletted, plte: testPalette(7), trns: testPalette(86)[:256], pix: indices}},
		{"paletted-full", pathFast, rawPNG{w: 4, h: 3, depth: 8, ct: pngPaletted, plte: testPalette(256), trns: []byte{1, 2}, pix: indices}},
		{"text-before-and-after", pathFast, rawPNG{w: 9, h: 9, depth: 8, ct: pngRGB, before: text, after: text, idatSize: 50}},
		{"empty-idat-inside-and-after", pathFast, rawPNG{w: 9, h: 9, depth: 8, ct: pngGray, idatSize: 20,
			before: pngChunk("IDAT", nil), after: append(pngChunk("IDAT", nil), pngChunk("IDAT", nil)...)}},
		{"ignored-idat-after-text", pathFast, rawPNG{w: 9, h: 9, depth: 8, ct: pngGray, after: append(text, pngChunk("IDAT", []byte("junk"))...)}},
		{"interlaced", pathFallback, rawPNG{w: 33, h: 17, depth: 8, ct: pngRGB, interlace: true, filter: mixed}},
		{"interlaced-1x1", pathFallback, rawPNG{w: 1, h: 1, depth: 8, ct: pngGray, interlace: true}},
		{"gray-4-bit", pathFallback, rawPNG{w: 9, h: 5, depth: 4, ct: pngGray, filter: mixed}},
		{"gray-16-bit", pathFallback, rawPNG{w: 9, h: 5, depth: 16, ct: pngGray, filter: mixed}},
		{"rgba-16-bit", pathFallback, rawPNG{w: 9, h: 5, depth: 16, ct: pngRGBA, filter: mixed}},
		{"paletted-2-bit", pathFallback, rawPNG{w: 9, h: 5, depth: 2, ct: pngPaletted, plte: testPalette(4), filter: mixed}},
		{"critical-chunk", pathFallback, rawPNG{w: 4, h: 4, depth: 8, ct: pngGray, before: pngChunk("ABCD", []byte("x"))}},
		{"bytes-after-zlib-stream", pathFallback, rawPNG{w: 4, h: 4, depth: 8, ct: pngGray, trailing: []byte{1, 2, 3}}},
		{"idat-after-zlib-stream", pathFallback, rawPNG{w: 4, h: 4, depth: 8, ct: pngGray, after: pngChunk("IDAT", []byte("junk"))}},
	} {
		add(tc.name, tc.path, tc.p)
	}
	return out
}

// encodedPNGs are files written by image/png, which picks filters itself
// (none at NoCompression, and for paletted images).
func encodedPNGs(t testing.TB) []namedPNG {
	var out []namedPNG
	rng := rand.New(rand.NewPCG(7, 7))
	for _, s := range [][2]int{{1, 1}, {2, 3}, {28, 28}, {31, 9}, {224, 224}} {
		r := image.Rect(0, 0, s[0], s[1])
		fill := func(set func(x, y int, v [4]byte)) {
			for y := range s[1] {
				for x := range s[0] {
					// Smooth areas and noise, so every filter pays somewhere.
					g := byte(x*5 + y*3)
					if (x/4+y/4)%2 == 0 {
						g = byte(rng.IntN(256))
					}
					set(x, y, [4]byte{g, g ^ byte(x), byte(y * 9), byte(255 - x*7)})
				}
			}
		}
		gray, rgba, nrgba := image.NewGray(r), image.NewRGBA(r), image.NewNRGBA(r)
		pal := image.NewPaletted(r, nil)
		pal16 := image.NewPaletted(r, color.Palette{color.Black, color.White, color.NRGBA{9, 8, 7, 100}})
		gray16 := image.NewGray16(r)
		for i := range 200 {
			pal.Palette = append(pal.Palette, color.NRGBA{byte(i), byte(i * 3), 7, byte(255 - i%3)})
		}
		fill(func(x, y int, v [4]byte) {
			gray.SetGray(x, y, color.Gray{v[0]})
			rgba.SetRGBA(x, y, color.RGBA{v[0], v[1], v[2], 255})
			nrgba.SetNRGBA(x, y, color.NRGBA{v[0], v[1], v[2], v[3]})
			pal.SetColorIndex(x, y, v[0]%200)
			pal16.SetColorIndex(x, y, v[0]%3)
			gray16.SetGray16(x, y, color.Gray16{uint16(v[0]) << 7})
		})
		for _, level := range []png.CompressionLevel{png.DefaultCompression, png.NoCompression, png.BestSpeed, png.BestCompression} {
			for _, m := range []struct {
				name, path string
				img        image.Image
			}{
				{"gray", pathFast, gray},
				{"rgb", pathFast, rgba},
				{"rgba", pathFast, nrgba},
				{"paletted", pathFast, pal},
				{"paletted-2-bit", pathFallback, pal16},
				{"gray16", pathFallback, gray16},
			} {
				var b bytes.Buffer
				if err := (&png.Encoder{CompressionLevel: level}).Encode(&b, m.img); err != nil {
					t.Fatal(err)
				}
				out = append(out, namedPNG{fmt.Sprintf("%s-%dx%d-level%d", m.name, s[0], s[1], -level), b.Bytes(), m.path})
			}
		}
	}
	return out
}

// fuzzLimit is the most pixels the agreement check decodes, so that a
// fuzzed header cannot make image/png allocate gigabytes.
const fuzzLimit = 1 << 18

// checkPNGAgrees decodes data with decodePNG, image/png and decodeImage
// and fails t unless they agree: decodePNG returns image/png's image or
// declines, claims a broken file only when image/png refuses it too, and
// decodeImage returns image/png's image or ErrUndecodable when it fails.
// It returns the path decodeImage took.
func checkPNGAgrees(t testing.TB, data []byte) string {
	t.Helper()
	cfg, cfgErr := png.DecodeConfig(bytes.NewReader(data))
	if cfgErr != nil {
		// decodeImage stops here; decodePNG must refuse as well, whatever
		// size it is told.
		if len(data) >= 24 {
			w, h := int(binary.BigEndian.Uint32(data[16:])), int(binary.BigEndian.Uint32(data[20:]))
			if w > 0 && h > 0 && int64(w)*int64(h) <= fuzzLimit {
				if _, err := decodePNG(data, w, h); err == nil {
					t.Fatalf("decodePNG decoded a file image/png's header check refuses: %v", cfgErr)
				}
			}
		}
		if _, _, err := decodeImage(data, fuzzLimit, 0, 0); !errors.Is(err, ErrUndecodable) {
			t.Fatalf("decodeImage: %v, want ErrUndecodable", err)
		}
		return pathError
	}
	if int64(cfg.Width)*int64(cfg.Height) > fuzzLimit {
		return pathError
	}
	want, wantErr := png.Decode(bytes.NewReader(data))
	got, err := decodePNG(data, cfg.Width, cfg.Height)
	path := pathFast
	switch {
	case err == nil:
		if wantErr != nil {
			t.Fatalf("decodePNG decoded a file image/png refuses: %v", wantErr)
		}
		if msg := imageDiff(got, want); msg != "" {
			t.Fatalf("decodePNG and image/png differ: %s", msg)
		}
	case errors.Is(err, errPNGFormat):
		if wantErr == nil {
			t.Fatalf("decodePNG: %v, but image/png decodes the file", err)
		}
		path = pathError
	case errors.Is(err, errPNGUnsupported):
		path = pathFallback
		if wantErr != nil {
			path = pathError
		}
	default:
		t.Fatalf("decodePNG: %v, neither errPNGFormat nor errPNGUnsupported", err)
	}
	img, format, err := decodeImage(data, fuzzLimit, 0, 0)
	if wantErr != nil {
		if !errors.Is(err, ErrUndecodable) || !strings.HasSuffix(err.Error(), wantErr.Error()) {
			t.Fatalf("decodeImage: %v, want ErrUndecodable with image/png's %q", err, wantErr)
		}
		return path
	}
	if err != nil || format != "png" {
		t.Fatalf("decodeImage: %q, %v; image/png decodes the file", format, err)
	}
	if msg := imageDiff(img, want); msg != "" {
		t.Fatalf("decodeImage and image/png differ: %s", msg)
	}
	return path
}

// imageDiff describes how got differs from want (type, bounds, palette,
// pixels), or is empty if they are identical.
func imageDiff(got, want image.Image) string {
	if reflect.TypeOf(got) != reflect.TypeOf(want) {
		return fmt.Sprintf("type %T, want %T", got, want)
	}
	if got.Bounds() != want.Bounds() {
		return fmt.Sprintf("bounds %v, want %v", got.Bounds(), want.Bounds())
	}
	if reflect.DeepEqual(got, want) {
		return ""
	}
	if p, ok := got.(*image.Paletted); ok {
		gp, wp := p.Palette, want.(*image.Paletted).Palette
		if len(gp) != len(wp) {
			return fmt.Sprintf("%d palette entries, want %d", len(gp), len(wp))
		}
		for i := range gp {
			if !reflect.DeepEqual(gp[i], wp[i]) {
				return fmt.Sprintf("palette entry %d is %T%v, want %T%v", i, gp[i], gp[i], wp[i], wp[i])
			}
		}
	}
	b := got.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if g, w := got.At(x, y), want.At(x, y); g != w {
				return fmt.Sprintf("pixel (%d,%d) %v, want %v", x, y, g, w)
			}
		}
	}
	return "same pixels, different layout (stride or Pix)"
}

// The fast decoder returns exactly what image/png returns, for files of
// every colour type, size and filter written by image/png and by rawPNG,
// and leaves the rest to image/png.
func TestDecodePNGMatchesImagePNG(t *testing.T) {
	files := append(craftedPNGs(t), encodedPNGs(t)...)
	for _, f := range files {
		t.Run(f.name, func(t *testing.T) {
			if got := checkPNGAgrees(t, f.data); got != f.path {
				t.Errorf("decoded by the %s path, want %s", got, f.path)
			}
		})
	}
}

// Photographs as they are shipped: larger 8-bit RGB PNGs of several IDAT
// chunks.
func TestDecodePNGPhotographs(t *testing.T) {
	for _, name := range []string{"astronaut.png", "chelsea.png", "coffee.png"} {
		t.Run(name, func(t *testing.T) {
			data := readFile(t, testenv.Dataset(t, filepath.Join("images", name)))
			cfg, err := png.DecodeConfig(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodePNG(data, cfg.Width, cfg.Height)
			if err != nil {
				t.Fatalf("decodePNG: %v", err)
			}
			want, err := png.Decode(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if msg := imageDiff(got, want); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}

// Broken files fail: the fast decoder says so (or declines), image/png
// refuses them too, decodeImage returns image/png's error as
// ErrUndecodable, and nothing inflates beyond the declared size.
func TestDecodePNGBadInputs(t *testing.T) {
	good := rawPNG{w: 28, h: 28, depth: 8, ct: pngGray, idatSize: 200}.encode(t, 1)
	idat := bytes.Index(good, []byte("IDAT")) - 4
	iend := bytes.LastIndex(good, []byte("IEND")) - 4
	withByte := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	// withIHDR is good with IHDR byte i set to v, its CRC still valid.
	withIHDR := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[16+i] = v
		binary.BigEndian.PutUint32(b[29:], crc32.ChecksumIEEE(b[12:29]))
		return b
	}
	// zstream is a 28×28 gray file whose zlib stream is z.
	zstream := func(z []byte) []byte {
		return append(append(append([]byte(pngSignature), pngChunk("IHDR", (&rawPNG{w: 28, h: 28, depth: 8, ct: pngGray}).ihdr())...),
			pngChunk("IDAT", z)...), pngChunk("IEND", nil)...)
	}
	deflate := func(raw []byte) []byte {
		var z bytes.Buffer
		zw, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
		zw.Write(raw)
		zw.Close()
		return z.Bytes()
	}
	// 64 MiB of zeros in about 64 KiB: far more than 28×28 pixels need.
	bomb := deflate(make([]byte, 64<<20))
	short := deflate(make([]byte, 28*29-1))
	badFilter := make([]byte, 28*29)
	badFilter[29*5] = 5
	goodZ := deflate(make([]byte, 28*29))
	badAdler := bytes.Clone(goodZ)
	badAdler[len(badAdler)-1] ^= 1
	withDict := bytes.Clone(goodZ)
	// FDICT set, FCHECK recomputed so that the header check still passes.
	withDict[1] = withDict[1]&0xc0 | 0x20
	withDict[1] |= byte((31 - (uint16(withDict[0])<<8|uint16(withDict[1]))%31) % 31)
	paletted := rawPNG{w: 2, h: 2, depth: 8, ct: pngPaletted, plte: testPalette(2)}.encode(t, 1)
	plteAt := bytes.Index(paletted, []byte("PLTE")) - 4
	plteEnd := plteAt + 12 + 6
	ihdrChunk := good[8:33]

	tests := []struct {
		name string
		data []byte
		// unsupported: the fast decoder may decline rather than refuse.
		unsupported bool
	}{
		{"truncated-idat", good[:idat+100], false},
		{"truncated-chunk-header", good[:idat+5], false},
		{"iend-missing", good[:iend], false},
		{"iend-truncated", good[:len(good)-2], false},
		{"idat-crc", withByte(idat+8+200, good[idat+8+200]^0x80), false},
		{"ihdr-crc", withByte(29, good[29]^1), false},
		{"idat-data-changed", withByte(idat+20, good[idat+20]^0x10), false},
		{"zlib-bomb", zstream(bomb), false},
		{"not-enough-pixel-data", zstream(short), false},
		{"bad-filter-type", zstream(deflate(badFilter)), false},
		{"bad-adler32", zstream(badAdler), false},
		{"zlib-preset-dictionary", zstream(withDict), false},
		{"zlib-bad-header", zstream([]byte{0x78, 0x00, 1, 2, 3}), false},
		{"empty-idat", zstream(nil), false},
		{"ihdr-compression-method", withIHDR(10, 1), false},
		{"ihdr-filter-method", withIHDR(11, 1), false},
		{"ihdr-interlace-method", withIHDR(12, 2), false},
		{"ihdr-colour-type", withIHDR(9, 1), true},
		{"ihdr-zero-width", withIHDR(3, 0), false},
		{"ihdr-negative-height", withIHDR(4, 0x80), false},
		{"second-ihdr", slicesConcat(good[:33], ihdrChunk, good[33:]), false},
		{"idat-before-ihdr", slicesConcat(good[:8], good[idat:iend], good[8:33], good[iend:]), false},
		{"paletted-without-plte", slicesConcat(paletted[:plteAt], paletted[plteEnd:]), false},
		{"plte-on-gray", slicesConcat(good[:33], pngChunk("PLTE", testPalette(2)), good[33:]), false},
		{"trns-on-gray-alpha", rawPNG{w: 2, h: 2, depth: 8, ct: pngGrayAlpha, trns: []byte{0, 0}}.encode(t, 1), false},
		{"trns-after-idat", slicesConcat(good[:iend], pngChunk("tRNS", []byte{0, 1}), good[iend:]), false},
		{"iend-with-data", slicesConcat(good[:iend], pngChunk("IEND", []byte{1})), false},
		{"bad-plte-length", rawPNG{w: 2, h: 2, depth: 8, ct: pngPaletted, plte: []byte{1, 2}}.encode(t, 1), false},
		{"paletted-trns-257", rawPNG{w: 2, h: 2, depth: 8, ct: pngPaletted, plte: testPalette(256), trns: testPalette(86)[:257]}.encode(t, 1), false},
		{"bad-trns-length", rawPNG{w: 2, h: 2, depth: 8, ct: pngRGB, trns: []byte{1, 2}}.encode(t, 1), false},
		{"huge-chunk-length", slicesConcat(good[:33], []byte{0xff, 0xff, 0xff, 0xf0, 't', 'E', 'X', 't'}, good[33:]), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			_, err := decodePNG(tc.data, 28, 28)
			runtime.ReadMemStats(&ms1)
			if err == nil || !(errors.Is(err, errPNGFormat) || tc.unsupported && errors.Is(err, errPNGUnsupported)) {
				t.Errorf("decodePNG: %v, want errPNGFormat", err)
			}
			if grew := ms1.TotalAlloc - ms0.TotalAlloc; grew > 1<<20 {
				t.Errorf("decodePNG allocated %d bytes to refuse it", grew)
			}
			if _, perr := png.Decode(bytes.NewReader(tc.data)); perr == nil {
				t.Fatal("image/png decodes it: not a bad input")
			}
			if got := checkPNGAgrees(t, tc.data); got != pathError {
				t.Errorf("took the %s path", got)
			}
		})
	}
}

func slicesConcat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// A header larger than the budget is refused before anything is
// allocated, and decodePNG never allocates for a size other than the one
// the caller checked.
func TestDecodePNGHugeDeclaredSize(t *testing.T) {
	huge := rawPNG{w: 1, h: 1, depth: 8, ct: pngGray}.encode(t, 1)
	binary.BigEndian.PutUint32(huge[16:], 100000)
	binary.BigEndian.PutUint32(huge[20:], 100000)
	binary.BigEndian.PutUint32(huge[29:], crc32.ChecksumIEEE(huge[12:29]))
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	_, _, err := decodeImage(huge, 1<<20, 0, 0)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("decodeImage: %v, want ErrTooLarge", err)
	}
	_, err = decodePNG(huge, 1, 1)
	if !errors.Is(err, errPNGUnsupported) {
		t.Errorf("decodePNG told 1x1: %v, want errPNGUnsupported", err)
	}
	runtime.ReadMemStats(&ms1)
	if grew := ms1.TotalAlloc - ms0.TotalAlloc; grew > 1<<20 {
		t.Errorf("allocated %d bytes", grew)
	}
	// Within the budget but with almost no data: refused once the data
	// runs out, after allocating the declared (checked) size only.
	big := rawPNG{w: 1, h: 1, depth: 8, ct: pngGray}.encode(t, 1)
	binary.BigEndian.PutUint32(big[16:], 512)
	binary.BigEndian.PutUint32(big[20:], 512)
	binary.BigEndian.PutUint32(big[29:], crc32.ChecksumIEEE(big[12:29]))
	if _, err := decodePNG(big, 512, 512); !errors.Is(err, errPNGFormat) {
		t.Errorf("decodePNG: %v, want errPNGFormat", err)
	}
	if got := checkPNGAgrees(t, big); got != pathError {
		t.Errorf("took the %s path", got)
	}
}

// Pooled inflaters and scanlines are shared safely between goroutines
// decoding files of different types and sizes (run with -race).
func TestDecodePNGConcurrent(t *testing.T) {
	var files []namedPNG
	for _, f := range append(craftedPNGs(t), encodedPNGs(t)...) {
		if f.path == pathFast && len(f.data) < 64<<10 {
			files = append(files, f)
		}
	}
	want := make([]image.Image, len(files))
	for i, f := range files {
		var err error
		if want[i], err = png.Decode(bytes.NewReader(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for g := range 4 {
		wg.Go(func() {
			for k := range 3 * len(files) {
				i := (k*7 + g*13) % len(files)
				cfg := want[i].Bounds()
				got, err := decodePNG(files[i].data, cfg.Dx(), cfg.Dy())
				if err != nil {
					errs <- fmt.Sprintf("%s: %v", files[i].name, err)
					return
				}
				if msg := imageDiff(got, want[i]); msg != "" {
					errs <- files[i].name + ": " + msg
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
}
