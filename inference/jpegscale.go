package inference

/*
#cgo LDFLAGS: -ljpeg
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <jpeglib.h>
#include <jerror.h>

struct gl_err {
	struct jpeg_error_mgr pub;
	jmp_buf jump;
	char msg[JMSG_LENGTH_MAX];
};

static void gl_error_exit(j_common_ptr cinfo) {
	struct gl_err *e = (struct gl_err *)cinfo->err;
	(*cinfo->err->format_message)(cinfo, e->msg);
	longjmp(e->jump, 1);
}

// gl_warning keeps the warning of a file that ends early (libjpeg pads it
// with grey and goes on): the decode then fails, as Go's own decoder does
// for the same bytes. Other warnings (extraneous bytes) are tolerated.
static void gl_warning(j_common_ptr cinfo, int level) {
	struct gl_err *e = (struct gl_err *)cinfo->err;
	if (level < 0 && e->msg[0] == 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
		(*cinfo->err->format_message)(cinfo, e->msg);
	}
}

// gl_decode_scaled decodes a JPEG at 1/denom of its size (libjpeg's DCT
// scaling: the skipped coefficients are never computed). It returns 0 and
// a malloc'd buffer of w*h*comps bytes, 2 for a colour space it does not
// convert (CMYK), 1 with msg set on a corrupt file.
static int gl_decode_scaled(unsigned char *data, unsigned long size, int denom,
		unsigned char **out, int *w, int *h, int *comps, char *msg) {
	struct jpeg_decompress_struct cinfo;
	struct gl_err jerr;
	unsigned char *buf = NULL;
	cinfo.err = jpeg_std_error(&jerr.pub);
	jerr.pub.error_exit = gl_error_exit;
	jerr.pub.emit_message = gl_warning;
	jerr.msg[0] = 0;
	if (setjmp(jerr.jump)) {
		strncpy(msg, jerr.msg, JMSG_LENGTH_MAX - 1);
		jpeg_destroy_decompress(&cinfo);
		free(buf);
		return 1;
	}
	jpeg_create_decompress(&cinfo);
	jpeg_mem_src(&cinfo, data, size);
	jpeg_read_header(&cinfo, TRUE);
	if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
		jpeg_destroy_decompress(&cinfo);
		return 2;
	}
	cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
	cinfo.scale_num = 1;
	cinfo.scale_denom = denom;
	cinfo.dct_method = JDCT_ISLOW;
	jpeg_start_decompress(&cinfo);
	*w = cinfo.output_width;
	*h = cinfo.output_height;
	*comps = cinfo.output_components;
	size_t stride = (size_t)(*w) * (size_t)(*comps);
	buf = malloc(stride * (size_t)(*h));
	if (buf == NULL) {
		strcpy(msg, "out of memory");
		jpeg_destroy_decompress(&cinfo);
		return 1;
	}
	while (cinfo.output_scanline < cinfo.output_height) {
		JSAMPROW row = buf + stride * cinfo.output_scanline;
		jpeg_read_scanlines(&cinfo, &row, 1);
	}
	jpeg_finish_decompress(&cinfo);
	jpeg_destroy_decompress(&cinfo);
	if (jerr.msg[0] != 0) {
		strncpy(msg, jerr.msg, JMSG_LENGTH_MAX - 1);
		free(buf);
		return 1;
	}
	*out = buf;
	return 0;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"image"
	"unsafe"
)

// errJPEGColorSpace is a JPEG whose colour space the scaled decoder does
// not convert (CMYK, YCCK): those take Go's full-size decoder.
var errJPEGColorSpace = errors.New("jpeg: colour space not converted by the scaled decoder")

// jpegScale is the DCT scaling denominator (1, 2, 4 or 8) for a w×h JPEG
// read into a model of input tw×th: the largest that still leaves at least
// twice the input's larger side in both directions, so the resize that
// follows keeps its anti-aliasing headroom whatever the EXIF orientation.
func jpegScale(w, h, tw, th int) int {
	if tw <= 0 || th <= 0 {
		return 1
	}
	need := 2 * max(tw, th)
	d := 8
	for d > 1 && ((w+d-1)/d < need || (h+d-1)/d < need) {
		d /= 2
	}
	return d
}

// decodeJPEGScaled decodes data at 1/denom of its size with libjpeg.
func decodeJPEGScaled(data []byte, denom int) (image.Image, error) {
	var (
		out         *C.uchar
		w, h, comps C.int
		msg         [C.JMSG_LENGTH_MAX]C.char
	)
	cdata := C.CBytes(data)
	defer C.free(cdata)
	switch C.gl_decode_scaled((*C.uchar)(cdata), C.ulong(len(data)), C.int(denom), &out, &w, &h, &comps, &msg[0]) {
	case 0:
	case 2:
		return nil, errJPEGColorSpace
	default:
		return nil, fmt.Errorf("%w: jpeg: %s", ErrUndecodable, C.GoString(&msg[0]))
	}
	defer C.free(unsafe.Pointer(out))
	n := int(w) * int(h) * int(comps)
	px := unsafe.Slice((*byte)(unsafe.Pointer(out)), n)
	r := image.Rect(0, 0, int(w), int(h))
	if comps == 1 {
		g := image.NewGray(r)
		copy(g.Pix, px)
		return g, nil
	}
	m := image.NewRGBA(r)
	for i, j := 0, 0; i < n; i, j = i+3, j+4 {
		m.Pix[j], m.Pix[j+1], m.Pix[j+2], m.Pix[j+3] = px[i], px[i+1], px[i+2], 0xff
	}
	return m, nil
}
