package inference

import (
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"io"
	"sync"
)

// Most graded images are small 8-bit PNGs, for which image/png's fixed
// cost dominates: every Decode builds a new zlib reader, and flate
// allocates and zeroes a 32 KiB window for it. decodePNG decodes the
// common case with pooled inflaters and scanlines and returns exactly
// the image image/png returns; anything else is left to image/png.

var (
	// errPNGUnsupported marks a PNG outside the fast path (interlaced,
	// another bit depth, an unknown critical chunk, data after the zlib
	// stream); image/png decodes it.
	errPNGUnsupported = errors.New("png: not in the fast path")
	// errPNGFormat marks a PNG that image/png refuses as well.
	errPNGFormat = errors.New("png: invalid format")
)

const pngSignature = "\x89PNG\r\n\x1a\n"

// PNG colour types (the spec's numbers).
const (
	pngGray      = 0
	pngRGB       = 2
	pngPaletted  = 3
	pngGrayAlpha = 4
	pngRGBA      = 6
)

// Chunk ordering stages, as image/png enforces them: IHDR, PLTE, tRNS,
// then IDAT.
const (
	pngStart = iota
	pngSeenIHDR
	pngSeenPLTE
	pngSeenTRNS
	pngSeenIDAT
)

// pngInfo is what the chunks around the pixel data say.
type pngInfo struct {
	width, height int
	colorType     byte
	palette       color.Palette
	// keyed is a gray or RGB tRNS colour key, in key[1] (gray) or
	// key[1], key[3], key[5] (RGB): the low bytes of 16-bit samples, which
	// is all image/png compares at depth 8.
	keyed bool
	key   [6]byte
	// idat is the offset of the first IDAT chunk.
	idat int
}

// decodePNG decodes data, a PNG that the caller found to declare w×h
// pixels and checked against its budget; a file whose header says
// otherwise is not decoded here. Errors wrap errPNGUnsupported (let
// image/png decode it) or errPNGFormat (broken).
func decodePNG(data []byte, w, h int) (image.Image, error) {
	info, err := parsePNGChunks(data)
	if err != nil {
		return nil, err
	}
	if info.width != w || info.height != h {
		return nil, fmt.Errorf("%w: header is not the checked %dx%d", errPNGUnsupported, w, h)
	}
	return inflatePNG(data, &info)
}

func pngFormatError(msg string) error { return fmt.Errorf("%w: %s", errPNGFormat, msg) }

// parsePNGChunks reads and checks every chunk up to IEND, as image/png does
// on the way to a decoded image, without inflating the pixel data.
func parsePNGChunks(data []byte) (pngInfo, error) {
	var info pngInfo
	if len(data) < len(pngSignature) || string(data[:len(pngSignature)]) != pngSignature {
		return info, pngFormatError("not a PNG file")
	}
	stage := pngStart
	for off := len(pngSignature); ; {
		if len(data)-off < 12 {
			return info, pngFormatError("truncated chunk")
		}
		length := binary.BigEndian.Uint32(data[off:])
		if uint64(length) > uint64(len(data)-off-12) {
			return info, pngFormatError("truncated chunk")
		}
		n := int(length)
		end := off + 8 + n
		// image/png checks the CRC of every chunk up to IEND.
		if crc32.ChecksumIEEE(data[off+4:end]) != binary.BigEndian.Uint32(data[end:]) {
			return info, pngFormatError("invalid checksum")
		}
		body := data[off+8 : end]
		typ := data[off+4 : off+8] // a []byte: string(typ) in the switch does not allocate
		switch string(typ) {
		case "IHDR":
			if stage != pngStart {
				return info, pngFormatError("chunk out of order")
			}
			stage = pngSeenIHDR
			if err := info.parseIHDR(body); err != nil {
				return info, err
			}
		case "PLTE":
			if stage != pngSeenIHDR {
				return info, pngFormatError("chunk out of order")
			}
			stage = pngSeenPLTE
			if err := info.parsePLTE(body); err != nil {
				return info, err
			}
		case "tRNS":
			ok := stage == pngSeenIHDR
			switch info.colorType {
			case pngPaletted:
				ok = stage == pngSeenPLTE
			case pngRGB:
				ok = stage == pngSeenIHDR || stage == pngSeenPLTE
			}
			if !ok {
				return info, pngFormatError("chunk out of order")
			}
			stage = pngSeenTRNS
			if err := info.parseTRNS(body); err != nil {
				return info, err
			}
		case "IDAT":
			if stage == pngSeenIDAT {
				break // the rest of the run, read by the inflater, or an ignored IDAT after it
			}
			if stage < pngSeenIHDR || (stage == pngSeenIHDR && info.colorType == pngPaletted) {
				return info, pngFormatError("chunk out of order")
			}
			stage = pngSeenIDAT
			info.idat = off
		case "IEND":
			if stage != pngSeenIDAT {
				return info, pngFormatError("chunk out of order")
			}
			if n != 0 {
				return info, pngFormatError("bad IEND length")
			}
			return info, nil
		default:
			// image/png skips every other chunk; an unknown critical one
			// (upper-case first letter) is left to it all the same.
			if typ[0]&0x20 == 0 {
				return info, fmt.Errorf("%w: critical chunk %q", errPNGUnsupported, string(typ))
			}
		}
		off = end + 4
	}
}

func (info *pngInfo) parseIHDR(b []byte) error {
	if len(b) != 13 {
		return pngFormatError("bad IHDR length")
	}
	if b[10] != 0 || b[11] != 0 {
		return pngFormatError("unknown compression or filter method")
	}
	switch b[12] {
	case 0:
	case 1:
		return fmt.Errorf("%w: interlaced", errPNGUnsupported)
	default:
		return pngFormatError("invalid interlace method")
	}
	w := int32(binary.BigEndian.Uint32(b[0:]))
	h := int32(binary.BigEndian.Uint32(b[4:]))
	if w <= 0 || h <= 0 {
		return pngFormatError("non-positive dimension")
	}
	depth, ct := b[8], b[9]
	if depth != 8 || (ct != pngGray && ct != pngRGB && ct != pngPaletted && ct != pngGrayAlpha && ct != pngRGBA) {
		return fmt.Errorf("%w: bit depth %d, colour type %d", errPNGUnsupported, depth, ct)
	}
	info.width, info.height, info.colorType = int(w), int(h), ct
	return nil
}

func (info *pngInfo) parsePLTE(b []byte) error {
	np := len(b) / 3
	if len(b)%3 != 0 || np == 0 || np > 256 {
		return pngFormatError("bad PLTE length")
	}
	switch info.colorType {
	case pngPaletted:
		// As image/png builds it: 256 entries of opaque black behind the
		// slice, so that tRNS and out-of-range indices can extend it.
		p := make(color.Palette, 256)
		for i := range p {
			c := color.RGBA{0, 0, 0, 0xff}
			if i < np {
				c.R, c.G, c.B = b[3*i], b[3*i+1], b[3*i+2]
			}
			p[i] = c
		}
		info.palette = p[:np]
	case pngRGB, pngRGBA:
		// Optional and ignored for true colour.
	default:
		return pngFormatError("PLTE, color type mismatch")
	}
	return nil
}

func (info *pngInfo) parseTRNS(b []byte) error {
	switch info.colorType {
	case pngGray:
		if len(b) != 2 {
			return pngFormatError("bad tRNS length")
		}
	case pngRGB:
		if len(b) != 6 {
			return pngFormatError("bad tRNS length")
		}
	case pngPaletted:
		if len(b) > 256 {
			return pngFormatError("bad tRNS length")
		}
		if len(info.palette) < len(b) {
			info.palette = info.palette[:len(b)]
		}
		for i, a := range b {
			c := info.palette[i].(color.RGBA)
			info.palette[i] = color.NRGBA{c.R, c.G, c.B, a}
		}
		return nil
	default:
		return pngFormatError("tRNS, color type mismatch")
	}
	copy(info.key[:], b)
	info.keyed = true
	return nil
}

// idatReader presents the data of consecutive IDAT chunks as one stream.
// As an io.ByteReader it lets flate read exactly the bytes it needs, with
// no bufio.Reader buffering past the end of the zlib stream.
type idatReader struct {
	data     []byte
	pos, end int // the unread data of the current chunk
	next     int // offset of the chunk after it
}

func (r *idatReader) reset(data []byte, off int) {
	*r = idatReader{data: data, pos: off, end: off, next: off}
}

// advance moves to the next non-empty IDAT chunk of the run; false at its
// end. Chunk bounds were checked by parsePNGChunks, and again here so
// that the reader cannot be led out of data.
func (r *idatReader) advance() bool {
	for r.pos == r.end {
		off := r.next
		if len(r.data)-off < 12 || string(r.data[off+4:off+8]) != "IDAT" {
			return false
		}
		n := binary.BigEndian.Uint32(r.data[off:])
		if uint64(n) > uint64(len(r.data)-off-12) {
			return false
		}
		r.pos, r.end = off+8, off+8+int(n)
		r.next = r.end + 4
	}
	return true
}

// ReadByte is flate's way of reading: the common case first.
func (r *idatReader) ReadByte() (byte, error) {
	if r.pos < r.end {
		b := r.data[r.pos]
		r.pos++
		return b, nil
	}
	if !r.advance() {
		return 0, io.EOF
	}
	b := r.data[r.pos]
	r.pos++
	return b, nil
}

func (r *idatReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.pos == r.end && !r.advance() {
		return 0, io.EOF
	}
	n := copy(p, r.data[r.pos:r.end])
	r.pos += n
	return n, nil
}

// pngInflater is the reusable state of one decode: a zlib reader reading
// from src, so that flate's window and tables are reset rather than
// allocated, and the current and previous scanline.
type pngInflater struct {
	src       idatReader
	zr        io.ReadCloser
	cur, prev []byte
}

var pngInflaters = sync.Pool{New: func() any { return new(pngInflater) }}

// maxPooledScanline bounds the scanlines kept in the pool: a rare very
// wide image should not pin its rows.
const maxPooledScanline = 64 << 10

func (st *pngInflater) reset(data []byte, idat int) error {
	st.src.reset(data, idat)
	if st.zr == nil {
		zr, err := zlib.NewReader(&st.src)
		if err != nil {
			return err
		}
		st.zr = zr
		return nil
	}
	return st.zr.(zlib.Resetter).Reset(&st.src, nil)
}

func (st *pngInflater) release() {
	st.src = idatReader{} // the pool must not keep the image bytes alive
	if cap(st.cur) > maxPooledScanline {
		st.cur, st.prev = nil, nil
	}
	pngInflaters.Put(st)
}

// inflatePNG decodes the IDAT data of a file parsePNGChunks accepted.
func inflatePNG(data []byte, info *pngInfo) (image.Image, error) {
	bpp := 1
	switch info.colorType {
	case pngGrayAlpha:
		bpp = 2
	case pngRGB:
		bpp = 3
	case pngRGBA:
		bpp = 4
	}
	w, h := info.width, info.height
	st := pngInflaters.Get().(*pngInflater)
	defer st.release()
	if err := st.reset(data, info.idat); err != nil {
		return nil, fmt.Errorf("%w: %w", errPNGFormat, err)
	}
	// One filter-type byte, then the row.
	n := 1 + w*bpp
	if cap(st.cur) < n || cap(st.prev) < n {
		st.cur, st.prev = make([]byte, n), make([]byte, n)
	}
	cur, prev := st.cur[:n], st.prev[:n]
	clear(prev)

	r := image.Rect(0, 0, w, h)
	var (
		img   image.Image
		gray  *image.Gray
		rgba  *image.RGBA
		nrgba *image.NRGBA
		pal   *image.Paletted
	)
	// The types image/png returns for each kind of file.
	switch {
	case info.colorType == pngGray && !info.keyed:
		gray = image.NewGray(r)
		img = gray
	case info.colorType == pngRGB && !info.keyed:
		rgba = image.NewRGBA(r)
		img = rgba
	case info.colorType == pngPaletted:
		pal = image.NewPaletted(r, info.palette)
		img = pal
	default: // gray or RGB with a colour key, gray+alpha, RGBA
		nrgba = image.NewNRGBA(r)
		img = nrgba
	}
	maxIndex := -1
	for y := range h {
		if _, err := io.ReadFull(st.zr, cur); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, pngFormatError("not enough pixel data")
			}
			return nil, fmt.Errorf("%w: %w", errPNGFormat, err)
		}
		row := cur[1:]
		if !unfilterPNG(cur[0], row, prev[1:], bpp) {
			return nil, pngFormatError("bad filter type")
		}
		switch {
		case gray != nil:
			copy(gray.Pix[y*gray.Stride:], row)
		case rgba != nil:
			pix := rgba.Pix[y*rgba.Stride : y*rgba.Stride+4*w]
			for x := range w {
				pix[4*x], pix[4*x+1], pix[4*x+2], pix[4*x+3] = row[3*x], row[3*x+1], row[3*x+2], 0xff
			}
		case pal != nil:
			copy(pal.Pix[y*pal.Stride:], row)
			if len(info.palette) != 256 {
				for _, i := range row {
					maxIndex = max(maxIndex, int(i))
				}
			}
		case info.colorType == pngRGBA:
			copy(nrgba.Pix[y*nrgba.Stride:], row)
		default:
			nrgbaRow(nrgba.Pix[y*nrgba.Stride:y*nrgba.Stride+4*w], row, info)
		}
		cur, prev = prev, cur
	}
	if err := checkZlibEnd(st.zr, cur[:1]); err != nil {
		return nil, err
	}
	if st.src.advance() {
		// Bytes after the zlib stream: image/png accepts or refuses them
		// depending on how much its bufio.Reader read ahead.
		return nil, fmt.Errorf("%w: data after the zlib stream", errPNGUnsupported)
	}
	if pal != nil && maxIndex >= len(pal.Palette) {
		// Out-of-range indices are opaque black, as in image/png (the
		// palette's backing array has 256 entries).
		pal.Palette = pal.Palette[:maxIndex+1]
	}
	return img, nil
}

// nrgbaRow converts one row of gray+alpha or colour-keyed gray or RGB
// samples to non-premultiplied RGBA.
func nrgbaRow(pix, row []byte, info *pngInfo) {
	switch info.colorType {
	case pngGrayAlpha:
		for x := range len(pix) / 4 {
			v := row[2*x]
			pix[4*x], pix[4*x+1], pix[4*x+2], pix[4*x+3] = v, v, v, row[2*x+1]
		}
	case pngGray:
		k := info.key[1]
		for x, v := range row[:len(pix)/4] {
			a := byte(0xff)
			if v == k {
				a = 0
			}
			pix[4*x], pix[4*x+1], pix[4*x+2], pix[4*x+3] = v, v, v, a
		}
	case pngRGB:
		kr, kg, kb := info.key[1], info.key[3], info.key[5]
		for x := range len(pix) / 4 {
			r, g, b := row[3*x], row[3*x+1], row[3*x+2]
			a := byte(0xff)
			if r == kr && g == kg && b == kb {
				a = 0
			}
			pix[4*x], pix[4*x+1], pix[4*x+2], pix[4*x+3] = r, g, b, a
		}
	}
}

// checkZlibEnd requires the zlib stream to end (with a valid checksum)
// right after the pixels, as image/png does: it reads one more byte into
// buf (a free scanline, since a local array would escape to the heap).
func checkZlibEnd(zr io.Reader, buf []byte) error {
	n, err := 0, error(nil)
	for i := 0; n == 0 && err == nil; i++ {
		if i == 100 {
			return fmt.Errorf("%w: %w", errPNGFormat, io.ErrNoProgress)
		}
		n, err = zr.Read(buf)
	}
	if err != nil && err != io.EOF {
		return fmt.Errorf("%w: %w", errPNGFormat, err)
	}
	if n != 0 {
		return pngFormatError("too much pixel data")
	}
	return nil
}

// unfilterPNG undoes the filter ft of row cur, given the previous
// (unfiltered) row prev and bpp bytes per pixel; false for an unknown
// filter type.
func unfilterPNG(ft byte, cur, prev []byte, bpp int) bool {
	prev = prev[:len(cur)]
	switch ft {
	case 0: // none
	case 1: // sub
		for i := bpp; i < len(cur); i++ {
			cur[i] += cur[i-bpp]
		}
	case 2: // up
		for i, p := range prev {
			cur[i] += p
		}
	case 3: // average; left of the first pixel counts as 0
		for i := range bpp {
			cur[i] += prev[i] / 2
		}
		for i := bpp; i < len(cur); i++ {
			cur[i] += uint8((int(cur[i-bpp]) + int(prev[i])) / 2)
		}
	case 4: // Paeth; with nothing to the left the predictor is always up
		for i := range bpp {
			cur[i] += prev[i]
		}
		for i := bpp; i < len(cur); i++ {
			a, b, c := int(cur[i-bpp]), int(prev[i]), int(prev[i-bpp])
			// p = a+b-c; the distances of p to a, b and c.
			pa, pb := b-c, a-c
			pc := pa + pb
			pa, pb, pc = absInt(pa), absInt(pb), absInt(pc)
			switch {
			case pa <= pb && pa <= pc:
				cur[i] += uint8(a)
			case pb <= pc:
				cur[i] += uint8(b)
			default:
				cur[i] += uint8(c)
			}
		}
	default:
		return false
	}
	return true
}

func absInt(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
