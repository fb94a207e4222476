package bus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Limits of an annotation object, the same at the edge (which answers
// 413/422 naming them) and in every consumer (which dead-letters what
// breaks them): one rule, defined here.
const (
	// MaxAnnotationBytes bounds the compacted annotation object of one event.
	MaxAnnotationBytes = 64 << 10
	// MaxAnnotationDepth bounds the nesting of the annotation object (the
	// object itself is level 1). MongoDB stores 100 levels including the
	// enclosing document, and JSON decoders elsewhere stop at their own
	// limits, so a deeper annotation could be accepted but never read back.
	MaxAnnotationDepth = 64
)

// Sentinel errors of CheckJSON and ValidateAnnotation; a *JSONError
// wraps one of them.
var (
	ErrJSONTooDeep      = errors.New("JSON nests too deep")
	ErrJSONDuplicateKey = errors.New("JSON object has a duplicate key")
	ErrJSONNotUTF8      = errors.New("JSON is not valid UTF-8")
	ErrJSONTooLarge     = errors.New("JSON is too large")
	ErrJSONNotObject    = errors.New("must be a JSON object")
)

// JSONError says what a JSON text breaks and where.
type JSONError struct {
	Err error
	// Offset is the byte offset where the problem was found.
	Offset int
	// Limit is the depth or size limit that was exceeded (0 when none).
	Limit int
	// Key is the duplicated key.
	Key string
}

// Error says what the JSON text breaks, with the offset and limit.
func (e *JSONError) Error() string {
	switch e.Err {
	case ErrJSONTooDeep:
		return fmt.Sprintf("nested deeper than %d levels (at offset %d)", e.Limit, e.Offset)
	case ErrJSONDuplicateKey:
		return fmt.Sprintf("duplicate key %q (at offset %d)", e.Key, e.Offset)
	case ErrJSONTooLarge:
		return fmt.Sprintf("%d bytes, more than the limit of %d", e.Offset, e.Limit)
	case ErrJSONNotUTF8:
		return fmt.Sprintf("invalid UTF-8 at offset %d", e.Offset)
	}
	return e.Err.Error()
}

// Unwrap returns the sentinel (ErrJSONTooDeep, ...), for errors.Is.
func (e *JSONError) Unwrap() error { return e.Err }

// CheckJSON reports what encoding/json accepts silently but gradeline
// refuses: nesting deeper than maxDepth, duplicate keys in an object (which
// value wins differs between decoders), and invalid UTF-8 (which decoders
// replace). It walks the text once, without recursion, so a 10,000-deep
// document costs one pass. Syntax errors are left to the decoder: on text
// that is not JSON it reports nothing it cannot be sure of.
func CheckJSON(data []byte, maxDepth int) error {
	if !utf8.Valid(data) {
		off := 0
		for off < len(data) {
			r, n := utf8.DecodeRune(data[off:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			off += n
		}
		return &JSONError{Err: ErrJSONNotUTF8, Offset: off}
	}
	// frames[i] is one open container. keys is a stack of the keys seen so
	// far in the open objects (slices of data unless escaped): an object's
	// are keys[keyStart:], as only the innermost open object adds keys.
	// Both start in arrays on the stack, so a usual document (every edge
	// request, every consumed event) costs no allocation.
	type frame struct {
		object    bool
		expectKey bool
		keyStart  int
		set       map[string]struct{}
	}
	var frameBuf [16]frame
	var keyBuf [64][]byte
	frames, keys := frameBuf[:0], keyBuf[:0]
	for i := 0; i < len(data); i++ {
		switch data[i] {
		case '{', '[':
			if len(frames) >= maxDepth {
				return &JSONError{Err: ErrJSONTooDeep, Offset: i, Limit: maxDepth}
			}
			if n := len(frames); n > 0 && frames[n-1].object {
				frames[n-1].expectKey = false
			}
			frames = append(frames, frame{object: data[i] == '{', expectKey: data[i] == '{', keyStart: len(keys)})
		case '}', ']':
			if len(frames) == 0 {
				return nil // unbalanced: a syntax error for the decoder
			}
			keys = keys[:frames[len(frames)-1].keyStart]
			frames = frames[:len(frames)-1]
		case ',':
			if n := len(frames); n > 0 && frames[n-1].object {
				frames[n-1].expectKey = true
			}
		case '"':
			start := i
			escaped := false
			for i++; i < len(data) && data[i] != '"'; i++ {
				if data[i] == '\\' {
					escaped = true
					i++
				}
			}
			if i >= len(data) {
				return nil // unterminated string: a syntax error for the decoder
			}
			n := len(frames)
			if n == 0 || !frames[n-1].object || !frames[n-1].expectKey {
				continue
			}
			f := &frames[n-1]
			f.expectKey = false
			key := data[start+1 : i]
			if escaped {
				var s string
				if json.Unmarshal(data[start:i+1], &s) != nil {
					return nil
				}
				key = []byte(s)
			}
			if f.set != nil {
				if _, dup := f.set[string(key)]; dup {
					return &JSONError{Err: ErrJSONDuplicateKey, Offset: start, Key: string(key)}
				}
				f.set[string(key)] = struct{}{}
				continue
			}
			for _, k := range keys[f.keyStart:] {
				if bytes.Equal(k, key) {
					return &JSONError{Err: ErrJSONDuplicateKey, Offset: start, Key: string(key)}
				}
			}
			keys = append(keys, key)
			// Linear search is cheapest for the few keys objects usually
			// have; a wide object switches to a set.
			if len(keys)-f.keyStart > 16 {
				f.set = make(map[string]struct{}, 2*(len(keys)-f.keyStart))
				for _, k := range keys[f.keyStart:] {
					f.set[string(k)] = struct{}{}
				}
				keys = keys[:f.keyStart]
			}
		}
	}
	return nil
}

// ValidateAnnotation is the one rule for an annotation object: a JSON
// object, compacted, at most MaxAnnotationBytes, nested at most
// MaxAnnotationDepth levels, without duplicate keys, valid UTF-8.
func ValidateAnnotation(raw []byte) error {
	if len(raw) == 0 || raw[0] != '{' {
		return &JSONError{Err: ErrJSONNotObject}
	}
	if len(raw) > MaxAnnotationBytes {
		return &JSONError{Err: ErrJSONTooLarge, Offset: len(raw), Limit: MaxAnnotationBytes}
	}
	if err := CheckJSON(raw, MaxAnnotationDepth); err != nil {
		return err
	}
	if !json.Valid(raw) {
		return errors.New("annotation is not valid JSON")
	}
	return nil
}
