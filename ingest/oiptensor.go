package ingest

// Tensors of the Open Inference Protocol: datatypes, the JSON "data" of a
// request input (nested or flat, row-major), the binary tensor data
// extension (Inference-Header-Content-Length, binary_data_size) and the
// encoding of response outputs.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// oipElemSize is the size in bytes of one element of each datatype the
// protocol names; BYTES elements have a variable size (0 here).
var oipElemSize = map[string]int{
	"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
	"INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
	"FP16": 2, "FP32": 4, "FP64": 8, "BYTES": 0,
}

// oipDatatypes lists them in the order the specification's table does,
// for messages.
const oipDatatypes = "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES"

// oipTensor is one decoded input tensor. Fixed-size elements are kept as
// the binary extension carries them (little-endian, row-major, in raw);
// BYTES elements one by one (elems).
type oipTensor struct {
	Name     string
	Datatype string
	Shape    []int64
	raw      []byte
	elems    [][]byte
}

// badRequest is the 400 every malformed inference request gets.
func badRequest(format string, args ...any) *apiError {
	return errorf(400, format, args...)
}

// elementCount checks a shape (every dimension at least 0) and returns the
// number of elements it holds, refusing more than limit.
func elementCount(name string, shape []int64, limit int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, badRequest("input %s: shape %v has a negative dimension", name, shape)
		}
		if d > 0 && n > limit/d {
			return 0, badRequest("input %s: shape %v holds more than %d elements", name, shape, limit)
		}
		n *= d
	}
	if n > limit {
		return 0, badRequest("input %s: shape %v holds more than %d elements", name, shape, limit)
	}
	return n, nil
}

// parseJSONData decodes the "data" of an input into t: a JSON array,
// either flat (row-major) or nested exactly as the shape, holding count
// elements of t.Datatype (numbers in range, booleans for BOOL, strings
// for BYTES).
func parseJSONData(t *oipTensor, data json.RawMessage, count int64) error {
	// A shape may claim more than the data holds: every element takes at
	// least one byte of it, which bounds what is allocated up front.
	n := min(count, int64(len(data)))
	if size := oipElemSize[t.Datatype]; size > 0 {
		t.raw = make([]byte, 0, n*int64(size))
	} else {
		t.elems = make([][]byte, 0, n)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	p := &dataParser{t: t, dec: dec, count: count, leafDepth: -1}
	tok, err := dec.Token()
	if err != nil {
		return badRequest("input %s: data: %v", t.Name, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return badRequest("input %s: data must be a JSON array", t.Name)
	}
	if err := p.array(1); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("input %s: data: unexpected content after the array", t.Name)
	}
	if p.n != count {
		return badRequest("input %s: data holds %d elements; shape %v needs %d", t.Name, p.n, t.Shape, count)
	}
	return nil
}

// dataParser walks the tokens of one input's data.
type dataParser struct {
	t     *oipTensor
	dec   *json.Decoder
	count int64
	n     int64
	// leafDepth is the depth of the elements (1 = flat), -1 until the
	// first element.
	leafDepth int
}

// array reads the elements of an array whose '[' was read, at depth d.
func (p *dataParser) array(d int) error {
	name := p.t.Name
	var children int64
	for {
		tok, err := p.dec.Token()
		if err != nil {
			return badRequest("input %s: data: %v", name, err)
		}
		if delim, ok := tok.(json.Delim); ok {
			switch delim {
			case ']':
				// A nested array must have the shape's length at its depth.
				if p.leafDepth > 1 && p.leafDepth == len(p.t.Shape) && children != p.t.Shape[d-1] {
					return badRequest("input %s: data has %d elements at depth %d; shape %v wants %d", name, children, d, p.t.Shape, p.t.Shape[d-1])
				}
				return nil
			case '[':
				if d >= max(len(p.t.Shape), 1) {
					return badRequest("input %s: data is nested deeper than shape %v", name, p.t.Shape)
				}
				if err := p.array(d + 1); err != nil {
					return err
				}
				children++
				continue
			default:
				return badRequest("input %s: data elements must be %s values, not objects", name, p.t.Datatype)
			}
		}
		if p.leafDepth == -1 {
			p.leafDepth = d
			if d != 1 && d != len(p.t.Shape) {
				return badRequest("input %s: data nested %d deep; shape %v wants a flat array or %d levels", name, d, p.t.Shape, len(p.t.Shape))
			}
		} else if d != p.leafDepth {
			return badRequest("input %s: data mixes elements at depths %d and %d", name, p.leafDepth, d)
		}
		if p.n >= p.count {
			return badRequest("input %s: data holds more elements than shape %v (%d)", name, p.t.Shape, p.count)
		}
		if err := p.element(tok); err != nil {
			return badRequest("input %s: data element %d: %v", name, p.n, err)
		}
		p.n++
		children++
	}
}

// element appends one JSON value as an element of the tensor's datatype.
func (p *dataParser) element(tok json.Token) error {
	t := p.t
	switch t.Datatype {
	case "BYTES":
		s, ok := tok.(string)
		if !ok {
			return fmt.Errorf("want a string for BYTES, got %v", tok)
		}
		t.elems = append(t.elems, []byte(s))
		return nil
	case "BOOL":
		b, ok := tok.(bool)
		if !ok {
			return fmt.Errorf("want true or false for BOOL, got %v", tok)
		}
		v := byte(0)
		if b {
			v = 1
		}
		t.raw = append(t.raw, v)
		return nil
	}
	num, ok := tok.(json.Number)
	if !ok {
		return fmt.Errorf("want a number for %s, got %v", t.Datatype, tok)
	}
	s := string(num)
	var err error
	switch t.Datatype {
	case "UINT8", "UINT16", "UINT32", "UINT64":
		bits := 8 * oipElemSize[t.Datatype]
		var v uint64
		if v, err = strconv.ParseUint(s, 10, bits); err == nil {
			t.raw = appendUint(t.raw, v, bits/8)
		}
	case "INT8", "INT16", "INT32", "INT64":
		bits := 8 * oipElemSize[t.Datatype]
		var v int64
		if v, err = strconv.ParseInt(s, 10, bits); err == nil {
			t.raw = appendUint(t.raw, uint64(v), bits/8)
		}
	case "FP16":
		var f float64
		if f, err = strconv.ParseFloat(s, 32); err == nil {
			h, ok := float32ToHalf(float32(f))
			if !ok {
				err = errors.New("out of the FP16 range")
			}
			t.raw = binary.LittleEndian.AppendUint16(t.raw, h)
		}
	case "FP32":
		var f float64
		if f, err = strconv.ParseFloat(s, 32); err == nil {
			t.raw = binary.LittleEndian.AppendUint32(t.raw, math.Float32bits(float32(f)))
		}
	case "FP64":
		var f float64
		if f, err = strconv.ParseFloat(s, 64); err == nil {
			t.raw = binary.LittleEndian.AppendUint64(t.raw, math.Float64bits(f))
		}
	}
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) {
			if errors.Is(ne.Err, strconv.ErrRange) {
				return fmt.Errorf("%s is out of the %s range", s, t.Datatype)
			}
			return fmt.Errorf("%s is not a valid %s", s, t.Datatype)
		}
		return fmt.Errorf("%s: %v", s, err)
	}
	return nil
}

// appendUint appends the low n bytes of v, little-endian.
func appendUint(b []byte, v uint64, n int) []byte {
	for i := range n {
		b = append(b, byte(v>>(8*i)))
	}
	return b
}

// float32ToHalf converts to IEEE 754 half precision, rounding to nearest
// even; false when the value is beyond the half range.
func float32ToHalf(f float32) (uint16, bool) {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23&0xff) - 127 + 15
	mant := b & 0x7fffff
	if b&0x7fffffff == 0 {
		return sign, true
	}
	if exp >= 31 {
		return 0, false
	}
	if exp <= 0 { // a subnormal half, or zero
		if exp < -10 {
			return sign, true
		}
		mant |= 0x800000
		shift := uint32(14 - exp)
		h := mant >> shift
		rem, halfway := mant&(1<<shift-1), uint32(1)<<(shift-1)
		if rem > halfway || (rem == halfway && h&1 == 1) {
			h++
		}
		return sign | uint16(h), true
	}
	h := uint16(exp)<<10 | uint16(mant>>13)
	if rem := mant & 0x1fff; rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // may carry into the exponent, which is right
	}
	if h&0x7c00 == 0x7c00 {
		return 0, false
	}
	return sign | h, true
}

// takeBinary fills t from the next size bytes of the binary section:
// count elements of the datatype's size, or for BYTES count elements each
// preceded by its 4-byte little-endian length.
func takeBinary(t *oipTensor, data []byte, count int64) error {
	size := oipElemSize[t.Datatype]
	if size > 0 {
		if int64(len(data)) != count*int64(size) {
			return badRequest("input %s: binary_data_size %d; shape %v of %s needs %d bytes", t.Name, len(data), t.Shape, t.Datatype, count*int64(size))
		}
		t.raw = data
		return nil
	}
	t.elems = make([][]byte, 0, min(count, int64(len(data)/4)+1))
	for len(data) > 0 {
		if len(data) < 4 {
			return badRequest("input %s: BYTES element %d: truncated length (%d bytes left)", t.Name, len(t.elems), len(data))
		}
		n := binary.LittleEndian.Uint32(data)
		if uint64(n) > uint64(len(data)-4) {
			return badRequest("input %s: BYTES element %d: length %d exceeds the %d bytes left", t.Name, len(t.elems), n, len(data)-4)
		}
		if int64(len(t.elems)) >= count {
			return badRequest("input %s: binary data holds more BYTES elements than shape %v (%d)", t.Name, t.Shape, count)
		}
		t.elems = append(t.elems, data[4:4+n])
		data = data[4+n:]
	}
	if int64(len(t.elems)) != count {
		return badRequest("input %s: binary data holds %d BYTES elements; shape %v needs %d", t.Name, len(t.elems), t.Shape, count)
	}
	return nil
}

// oipOutput is one output tensor of a response: FP32 values or BYTES
// elements, sent as JSON data or in the binary section.
type oipOutput struct {
	Name     string
	Datatype string
	Shape    []int64
	f32      []float32
	elems    [][]byte
	binary   bool
}

// jsonData encodes the elements as a flat JSON array. FP32 values use the
// shortest text that reads back as the same float32.
func (o *oipOutput) jsonData() json.RawMessage {
	b := []byte{'['}
	if o.Datatype == "BYTES" {
		for i, e := range o.elems {
			if i > 0 {
				b = append(b, ',')
			}
			s, _ := json.Marshal(string(e))
			b = append(b, s...)
		}
	} else {
		for i, v := range o.f32 {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendFloat(b, float64(v), 'g', -1, 32)
		}
	}
	return append(b, ']')
}

// binaryData encodes the elements as the binary extension carries them.
func (o *oipOutput) binaryData() []byte {
	var b []byte
	if o.Datatype == "BYTES" {
		for _, e := range o.elems {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(e)))
			b = append(b, e...)
		}
		return b
	}
	b = make([]byte, 0, 4*len(o.f32))
	for _, v := range o.f32 {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}
