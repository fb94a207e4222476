package bus

import (
	"encoding/base64"
	"encoding/json"
	"math/bits"
	"strconv"
	"time"
	"unicode/utf8"
)

// decodeCanonical decodes data into v when data is in the form appendEvent
// writes for v's type: keys in declaration order, an omitempty or omitzero
// member present or left out, no whitespace outside an annotation body,
// nothing after the closing brace. It covers *GradeCompleted,
// *ImageSubmitted and *AnnotationCreated, the events every consumer
// decodes, without reflection and without goccy/go-json's map lookup of
// each key (the grade result has more fields than its fast key path takes).
//
// Whatever it accepts it decodes to exactly what json.Unmarshal into a
// fresh value gives (TestDecodeCanonical, FuzzDecodeCanonicalAgrees); it
// declines (ok false) everything it is not sure of: other keys or order,
// whitespace, null (but for a nil scores map), a string with invalid
// UTF-8 or a \u escape of a surrogate, a number out of range, bad base64,
// duplicate scores. v is written only when ok is true, whole, so a decline
// leaves it as it was for the next decoder.
func decodeCanonical(data []byte, v any) (ok bool) {
	r := canonReader{data: data, ok: true}
	switch e := v.(type) {
	case *GradeCompleted:
		if e == nil {
			return false
		}
		var g GradeCompleted
		r.gradeCompleted(&g)
		if r.done() {
			*e = g
			return true
		}
	case *ImageSubmitted:
		if e == nil {
			return false
		}
		var s ImageSubmitted
		r.imageSubmitted(&s)
		if r.done() {
			*e = s
			return true
		}
	case *AnnotationCreated:
		if e == nil {
			return false
		}
		var a AnnotationCreated
		r.annotationCreated(&a)
		if r.done() {
			*e = a
			return true
		}
	}
	return false
}

// canonReader reads data from i on; ok turns false at the first thing it
// declines, and every read after that is a no-op returning a zero value.
// Keys are read with the punctuation before them and the colon, as
// eventWriter writes them.
type canonReader struct {
	data []byte
	i    int
	ok   bool
}

// done reports whether everything was read and nothing is left over.
func (r *canonReader) done() bool { return r.ok && r.i == len(r.data) }

func (r *canonReader) fail() { r.ok = false }

// key reads the text k (a key with its punctuation), or fails.
func (r *canonReader) key(k string) {
	if !r.ok {
		return
	}
	if len(r.data)-r.i < len(k) || string(r.data[r.i:r.i+len(k)]) != k {
		r.fail()
		return
	}
	r.i += len(k)
}

// has reads the text k if it comes next: an optional member's key.
func (r *canonReader) has(k string) bool {
	if !r.ok || len(r.data)-r.i < len(k) || string(r.data[r.i:r.i+len(k)]) != k {
		return false
	}
	r.i += len(k)
	return true
}

func (r *canonReader) meta(m *Meta, typ string) {
	m.ID = r.str(`{"id":`)
	r.key(`,"type":`)
	// The type is known: taking the constant saves an allocation.
	if b := r.strBytes(); string(b) == typ {
		m.Type = typ
	} else {
		m.Type = string(b)
	}
	m.SchemaVersion = int(r.integer(`,"schema_version":`, strconv.IntSize))
	m.Time = r.timestamp(`,"time":`)
}

func (r *canonReader) gradeCompleted(e *GradeCompleted) {
	r.meta(&e.Meta, TypeGradeCompleted)
	e.GradeID = r.str(`,"grade_id":`)
	e.ImageID = r.str(`,"image_id":`)
	e.Owner = r.str(`,"owner":`)
	e.Model = r.str(`,"model":`)
	e.ModelVersion = r.str(`,"model_version":`)
	e.Label = r.str(`,"label":`)
	e.Score = r.float(`,"score":`)
	e.Scores = r.scores(`,"scores":`)
	e.InferenceMS = r.float(`,"inference_ms":`)
	e.BatchSize = int(r.integer(`,"batch_size":`, strconv.IntSize))
	if r.has(`,"catalogued":`) {
		e.Catalogued = r.boolean()
	}
	if r.has(`,"callback_url":`) {
		e.CallbackURL = r.strValue()
	}
	if r.has(`,"submitted_at":`) {
		e.SubmittedAt = r.timeValue()
	}
	r.key("}")
}

func (r *canonReader) imageSubmitted(e *ImageSubmitted) {
	r.meta(&e.Meta, TypeImageSubmitted)
	e.ImageID = r.str(`,"image_id":`)
	e.Owner = r.str(`,"owner":`)
	e.Model = r.str(`,"model":`)
	if r.has(`,"model_version":`) {
		e.ModelVersion = r.strValue()
	}
	img := &e.Image
	img.Object = r.str(`,"image":{"object":`)
	img.SHA256 = r.str(`,"sha256":`)
	img.ContentType = r.str(`,"content_type":`)
	img.Size = r.integer(`,"size":`, 64)
	if r.has(`,"data":`) {
		img.Data = r.base64()
	}
	r.key("}")
	if r.has(`,"catalogued":`) {
		e.Catalogued = r.boolean()
	}
	if r.has(`,"callback_url":`) {
		e.CallbackURL = r.strValue()
	}
	r.key("}")
}

func (r *canonReader) annotationCreated(e *AnnotationCreated) {
	r.meta(&e.Meta, TypeAnnotationCreated)
	if r.has(`,"image_id":`) {
		e.ImageID = r.strValue()
	}
	e.Author = r.str(`,"author":`)
	r.key(`,"annotation":`)
	e.Annotation = r.raw()
	r.key("}")
}

// str reads a key and a string value.
func (r *canonReader) str(k string) string {
	r.key(k)
	return r.strValue()
}

func (r *canonReader) strValue() string {
	b := r.strBytes()
	if !r.ok {
		return ""
	}
	return string(b)
}

// strBytes reads a JSON string and returns its text as encoding/json
// unquotes it: a slice of data when it holds no escape, else a new slice.
// It declines invalid UTF-8 (which encoding/json replaces) and \u escapes
// of surrogates (which it pairs or replaces).
func (r *canonReader) strBytes() []byte {
	if !r.ok {
		return nil
	}
	d, i := r.data, r.i
	if i >= len(d) || d[i] != '"' {
		r.fail()
		return nil
	}
	i++
	start, ascii := i, true
	for {
		// Eight bytes at a time while none needs a look.
		if i+8 <= len(d) {
			if m := stringSpecial8(load8(d, i)); m == 0 {
				i += 8
				continue
			} else {
				i += bits.TrailingZeros64(m) >> 3
			}
		}
		if i >= len(d) {
			r.fail()
			return nil
		}
		switch c := d[i]; {
		case c == '"':
			if !ascii && !utf8.Valid(d[start:i]) {
				r.fail()
				return nil
			}
			r.i = i + 1
			return d[start:i]
		case c == '\\':
			return r.unescape(start)
		case c < 0x20:
			r.fail()
			return nil
		case c >= utf8.RuneSelf:
			ascii = false
		}
		i++ // '<', '>', '&' or non-ASCII
	}
}

// unescape reads the string whose text starts at data[start], which holds
// an escape, as encoding/json's unquote does.
func (r *canonReader) unescape(start int) []byte {
	d := r.data
	out := make([]byte, 0, len(d)-start)
	for i := start; i < len(d); {
		c := d[i]
		switch {
		case c == '"':
			// Escapes are ASCII, so the raw text is valid UTF-8 exactly
			// when every run between them is.
			if !utf8.Valid(d[start:i]) {
				r.fail()
				return nil
			}
			r.i = i + 1
			return out
		case c < 0x20:
			r.fail()
			return nil
		case c != '\\':
			out = append(out, c)
			i++
			continue
		}
		if i+1 >= len(d) {
			break
		}
		switch e := d[i+1]; e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if i+6 > len(d) {
				r.fail()
				return nil
			}
			var u rune
			for _, h := range d[i+2 : i+6] {
				switch {
				case h >= '0' && h <= '9':
					u = u<<4 | rune(h-'0')
				case h >= 'a' && h <= 'f':
					u = u<<4 | rune(h-'a'+10)
				case h >= 'A' && h <= 'F':
					u = u<<4 | rune(h-'A'+10)
				default:
					r.fail()
					return nil
				}
			}
			if u >= 0xD800 && u < 0xE000 {
				// A surrogate: encoding/json pairs it or replaces it.
				r.fail()
				return nil
			}
			out = utf8.AppendRune(out, u)
			i += 6
			continue
		default:
			r.fail()
			return nil
		}
		i += 2
	}
	r.fail()
	return nil
}

// number reads a JSON number token; whether the text after it fits is the
// next read's concern.
func (r *canonReader) number() []byte {
	if !r.ok {
		return nil
	}
	end, ok := validNumberAt(r.data, r.i)
	if !ok {
		r.fail()
		return nil
	}
	tok := r.data[r.i:end]
	r.i = end
	return tok
}

// validNumberAt is validNumber guarded against the end of data.
func validNumberAt(data []byte, i int) (int, bool) {
	if i >= len(data) {
		return i, false
	}
	return validNumber(data, i)
}

// float reads a key and a number as encoding/json reads one into a
// float64; it fails where encoding/json does (out of range).
func (r *canonReader) float(k string) float64 {
	r.key(k)
	tok := r.number()
	if !r.ok {
		return 0
	}
	f, err := strconv.ParseFloat(string(tok), 64)
	if err != nil {
		r.fail()
		return 0
	}
	return f
}

// integer reads a key and a number as encoding/json reads one into an int
// of bitSize bits: an integer token within range, or it fails.
func (r *canonReader) integer(k string, bitSize int) int64 {
	r.key(k)
	tok := r.number()
	if !r.ok {
		return 0
	}
	n, err := strconv.ParseInt(string(tok), 10, bitSize)
	if err != nil { // a fraction, an exponent or out of range
		r.fail()
		return 0
	}
	return n
}

func (r *canonReader) boolean() bool {
	switch {
	case r.has("true"):
		return true
	case r.has("false"):
		return false
	}
	r.fail()
	return false
}

func (r *canonReader) timestamp(k string) time.Time {
	r.key(k)
	return r.timeValue()
}

// timeValue reads a string into a time.Time as encoding/json does: the
// quoted text, escapes and all, goes to time.Time.UnmarshalJSON.
func (r *canonReader) timeValue() (t time.Time) {
	if !r.ok {
		return t
	}
	if r.i >= len(r.data) || r.data[r.i] != '"' {
		r.fail()
		return t
	}
	end, ok := validString(r.data, r.i)
	if !ok || t.UnmarshalJSON(r.data[r.i:end]) != nil {
		r.fail()
		return time.Time{}
	}
	r.i = end
	return t
}

// scorePairsOnStack is room for the usual label sets (10 classes).
const scorePairsOnStack = 16

// scores reads a key and a map[string]float64: null (nil, as in a fresh
// value) or an object; duplicate keys fail.
func (r *canonReader) scores(k string) map[string]float64 {
	r.key(k)
	if r.has("null") {
		return nil
	}
	r.key("{")
	if !r.ok {
		return nil
	}
	if r.has("}") {
		return map[string]float64{} // encoding/json makes an empty map
	}
	// Gathered first so that the map is made at its size.
	var buf [scorePairsOnStack]scorePair
	pairs := buf[:0]
	for r.ok {
		key := r.strValue()
		r.key(":")
		score := r.float("")
		pairs = append(pairs, scorePair{key, score})
		if !r.has(",") {
			break
		}
	}
	r.key("}")
	if !r.ok {
		return nil
	}
	m := make(map[string]float64, len(pairs))
	for _, p := range pairs {
		m[p.key] = p.score
	}
	if len(m) != len(pairs) {
		r.fail() // encoding/json keeps the last; not worth the care
		return nil
	}
	return m
}

// base64 reads a string into a []byte as encoding/json does: unquoted,
// then base64.StdEncoding.Decode into a buffer of DecodedLen (which
// skips '\r' and '\n', as encoding/json does too). A decoding error
// fails, as it fails json.Unmarshal.
func (r *canonReader) base64() []byte {
	s := r.strBytes()
	if !r.ok {
		return nil
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(b, s)
	if err != nil {
		r.fail()
		return nil
	}
	return b[:n]
}

// raw reads any JSON value as encoding/json reads one into a
// json.RawMessage: the text as it is (whitespace and invalid UTF-8
// included), copied. It lies in the event object, one level deep.
func (r *canonReader) raw() json.RawMessage {
	if !r.ok {
		return nil
	}
	end, ok := validValue(r.data, r.i, 1, nil)
	if !ok {
		r.fail()
		return nil
	}
	v := append(json.RawMessage(nil), r.data[r.i:end]...)
	r.i = end
	return v
}
