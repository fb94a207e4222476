package bus

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// appendEvent appends the JSON encoding of ev to dst, byte for byte what
// encoding/json.Marshal(ev) writes, for the hot event types; ok is false
// (dst unchanged) for any other type or any value it does not handle, and
// the caller then uses encoding/json.
//
// It covers *AnnotationCreated, *ImageSubmitted, *GradeCompleted,
// *GradeFailed and *GradePending (a nil pointer of these is "null"). It
// declines only where json.Marshal fails: a NaN or infinite float, a time
// json cannot write (year outside [0,9999], zone hour outside [0,23]), and
// an annotation that is not valid JSON (an empty non-nil one included).
// It exists because every published event is encoded: encoding/json's
// reflection and time.Time.MarshalJSON's allocation cost about 5% of the
// stack's CPU. TestAppendEventMatchesMarshal and
// FuzzAppendEventMatchesMarshal hold the bytes equal.
//
// On failure the bytes of dst's spare capacity may have been written;
// dst[:len(dst)] is untouched.
func appendEvent(dst []byte, ev Event) (out []byte, ok bool) {
	w := eventWriter{b: dst, ok: true}
	switch e := ev.(type) {
	case *GradeCompleted:
		if e == nil {
			return append(dst, "null"...), true
		}
		w.gradeCompleted(e)
	case *ImageSubmitted:
		if e == nil {
			return append(dst, "null"...), true
		}
		w.imageSubmitted(e)
	case *AnnotationCreated:
		if e == nil {
			return append(dst, "null"...), true
		}
		w.annotationCreated(e)
	case *GradeFailed:
		if e == nil {
			return append(dst, "null"...), true
		}
		w.gradeFailed(e)
	case *GradePending:
		if e == nil {
			return append(dst, "null"...), true
		}
		w.gradePending(e)
	default:
		return dst, false
	}
	if !w.ok {
		return dst, false
	}
	return w.b, true
}

// AppendJSON appends encoding/json.Marshal(v) to dst for the values this
// package encodes without reflection: the hot events (appendEvent) and a
// Grade (or *Grade) without callback attempts, which the edge answers
// for every graded image. ok is false, dst unchanged, for anything else
// or anything encoding/json would refuse; the caller then uses
// encoding/json. TestAppendJSONGrade, TestAppendEventMatchesMarshal and
// FuzzAppendEventMatchesMarshal hold the bytes equal.
func AppendJSON(dst []byte, v any) (out []byte, ok bool) {
	switch g := v.(type) {
	case Grade:
		return appendGrade(dst, &g)
	case *Grade:
		if g == nil {
			return append(dst, "null"...), true
		}
		return appendGrade(dst, g)
	case Event:
		return appendEvent(dst, g)
	}
	return dst, false
}

// appendGrade writes a Grade as encoding/json does, its omitempty and
// omitzero fields left out when empty; callbacks are declined.
func appendGrade(dst []byte, g *Grade) ([]byte, bool) {
	if len(g.Callbacks) > 0 {
		return dst, false
	}
	w := eventWriter{b: dst, ok: true}
	w.str(`{"id":`, g.ID)
	w.str(`,"status":`, g.Status)
	w.str(`,"image_id":`, g.ImageID)
	w.str(`,"owner":`, g.Owner)
	w.str(`,"model":`, g.Model)
	if g.ModelVersion != "" {
		w.str(`,"model_version":`, g.ModelVersion)
	}
	if g.Label != "" {
		w.str(`,"label":`, g.Label)
	}
	if g.Score != 0 {
		w.float(`,"score":`, g.Score)
	}
	if len(g.Scores) > 0 {
		w.scores(`,"scores":`, g.Scores)
	}
	if g.InferenceMS != 0 {
		w.float(`,"inference_ms":`, g.InferenceMS)
	}
	if g.BatchSize != 0 {
		w.integer(`,"batch_size":`, int64(g.BatchSize))
	}
	if g.Reason != "" {
		w.str(`,"reason":`, g.Reason)
	}
	if !g.SubmittedAt.IsZero() {
		w.timestamp(`,"submitted_at":`, g.SubmittedAt)
	}
	if !g.CompletedAt.IsZero() {
		w.timestamp(`,"completed_at":`, g.CompletedAt)
	}
	if g.Catalogued {
		w.b = append(w.b, `,"catalogued":true`...)
	}
	w.b = append(w.b, '}')
	if !w.ok {
		return dst, false
	}
	return w.b, true
}

// eventWriter appends one event; ok turns false at the first value
// encoding/json would refuse, and the result is then dropped. Keys are
// constants with the punctuation before them ("{" or ",") and the colon.
type eventWriter struct {
	b  []byte
	ok bool
}

func (w *eventWriter) meta(m *Meta) {
	w.str(`{"id":`, m.ID)
	w.str(`,"type":`, m.Type)
	w.integer(`,"schema_version":`, int64(m.SchemaVersion))
	w.timestamp(`,"time":`, m.Time)
}

func (w *eventWriter) gradeCompleted(e *GradeCompleted) {
	w.meta(&e.Meta)
	w.str(`,"grade_id":`, e.GradeID)
	w.str(`,"image_id":`, e.ImageID)
	w.str(`,"owner":`, e.Owner)
	w.str(`,"model":`, e.Model)
	w.str(`,"model_version":`, e.ModelVersion)
	w.str(`,"label":`, e.Label)
	w.float(`,"score":`, e.Score)
	w.scores(`,"scores":`, e.Scores)
	w.float(`,"inference_ms":`, e.InferenceMS)
	w.integer(`,"batch_size":`, int64(e.BatchSize))
	if e.Catalogued {
		w.b = append(w.b, `,"catalogued":true`...)
	}
	if e.CallbackURL != "" {
		w.str(`,"callback_url":`, e.CallbackURL)
	}
	if !e.SubmittedAt.IsZero() {
		w.timestamp(`,"submitted_at":`, e.SubmittedAt)
	}
	w.b = append(w.b, '}')
}

func (w *eventWriter) gradeFailed(e *GradeFailed) {
	w.meta(&e.Meta)
	w.str(`,"grade_id":`, e.GradeID)
	w.str(`,"image_id":`, e.ImageID)
	w.str(`,"owner":`, e.Owner)
	w.str(`,"model":`, e.Model)
	w.str(`,"reason":`, e.Reason)
	if e.CallbackURL != "" {
		w.str(`,"callback_url":`, e.CallbackURL)
	}
	if !e.SubmittedAt.IsZero() {
		w.timestamp(`,"submitted_at":`, e.SubmittedAt)
	}
	w.b = append(w.b, '}')
}

func (w *eventWriter) gradePending(e *GradePending) {
	w.meta(&e.Meta)
	w.str(`,"grade_id":`, e.GradeID)
	w.str(`,"image_id":`, e.ImageID)
	w.str(`,"owner":`, e.Owner)
	w.str(`,"model":`, e.Model)
	if e.ModelVersion != "" {
		w.str(`,"model_version":`, e.ModelVersion)
	}
	// No omitzero here: a zero time is written as such.
	w.timestamp(`,"submitted_at":`, e.SubmittedAt)
	w.b = append(w.b, '}')
}

func (w *eventWriter) imageSubmitted(e *ImageSubmitted) {
	w.meta(&e.Meta)
	w.str(`,"image_id":`, e.ImageID)
	w.str(`,"owner":`, e.Owner)
	w.str(`,"model":`, e.Model)
	if e.ModelVersion != "" {
		w.str(`,"model_version":`, e.ModelVersion)
	}
	r := &e.Image
	w.str(`,"image":{"object":`, r.Object)
	w.str(`,"sha256":`, r.SHA256)
	w.str(`,"content_type":`, r.ContentType)
	w.integer(`,"size":`, r.Size)
	if len(r.Data) > 0 { // omitempty: nil and empty alike
		w.b = append(w.b, `,"data":"`...)
		w.b = appendBase64(w.b, r.Data)
		w.b = append(w.b, '"')
	}
	w.b = append(w.b, '}')
	if e.Catalogued {
		w.b = append(w.b, `,"catalogued":true`...)
	}
	if e.CallbackURL != "" {
		w.str(`,"callback_url":`, e.CallbackURL)
	}
	w.b = append(w.b, '}')
}

func (w *eventWriter) annotationCreated(e *AnnotationCreated) {
	w.meta(&e.Meta)
	if e.ImageID != "" {
		w.str(`,"image_id":`, e.ImageID)
	}
	w.str(`,"author":`, e.Author)
	w.b = append(w.b, `,"annotation":`...)
	w.b, w.ok = appendCompactJSON(w.b, e.Annotation, w.ok)
	w.b = append(w.b, '}')
}

func (w *eventWriter) str(key, s string) {
	w.b = append(w.b, key...)
	w.b = appendJSONString(w.b, s)
}

func (w *eventWriter) integer(key string, n int64) {
	w.b = append(w.b, key...)
	w.b = strconv.AppendInt(w.b, n, 10)
}

func (w *eventWriter) float(key string, f float64) {
	w.b = append(w.b, key...)
	w.b, w.ok = appendJSONFloat(w.b, f, w.ok)
}

// timestamp writes what time.Time.MarshalJSON does. A time in UTC, as
// every event's own is (NewMeta), is written here; any other through
// AppendText, which shares MarshalJSON's formatting and its refusals
// (year beyond four digits, zone hour beyond 23). RFC 3339 text needs no
// JSON escaping.
func (w *eventWriter) timestamp(key string, t time.Time) {
	w.b = append(w.b, key...)
	if t.Location() == time.UTC {
		w.b, w.ok = appendUTCTime(w.b, t, w.ok)
		return
	}
	w.b = append(w.b, '"')
	b, err := t.AppendText(w.b)
	if err != nil {
		w.ok = false
		return
	}
	w.b = append(b, '"')
}

// appendUTCTime writes a time in UTC, quoted, at half the cost of
// AppendText: RFC 3339 with the nanoseconds' trailing zeros trimmed, then
// Z; ok becomes false for a year outside [0,9999], which
// time.Time.MarshalJSON refuses.
func appendUTCTime(b []byte, t time.Time, ok bool) ([]byte, bool) {
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return b, false
	}
	hour, minute, sec := t.Clock()
	b = append(b, '"',
		byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10), '-',
		byte('0'+month/10), byte('0'+month%10), '-',
		byte('0'+day/10), byte('0'+day%10), 'T',
		byte('0'+hour/10), byte('0'+hour%10), ':',
		byte('0'+minute/10), byte('0'+minute%10), ':',
		byte('0'+sec/10), byte('0'+sec%10))
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := len(frac)
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z', '"'), ok
}

// scorePair is one member of a scores map, gathered for sorting.
type scorePair struct {
	key   string
	score float64
}

// scores writes a map[string]float64 as encoding/json does: null when
// nil, members sorted by key (strings.Compare on the unescaped keys).
func (w *eventWriter) scores(key string, m map[string]float64) {
	w.b = append(w.b, key...)
	if m == nil {
		w.b = append(w.b, "null"...)
		return
	}
	// Room for the usual label sets (10 classes) on the stack.
	var buf [16]scorePair
	pairs := buf[:0]
	for k, v := range m {
		pairs = append(pairs, scorePair{k, v})
	}
	if len(pairs) <= len(buf) {
		// Insertion sort: for a handful of keys, twice as fast as
		// slices.SortFunc with its comparison function.
		for i := 1; i < len(pairs); i++ {
			p, j := pairs[i], i
			for ; j > 0 && keyBefore(p.key, pairs[j-1].key); j-- {
				pairs[j] = pairs[j-1]
			}
			pairs[j] = p
		}
	} else {
		slices.SortFunc(pairs, func(a, b scorePair) int { return strings.Compare(a.key, b.key) })
	}
	w.b = append(w.b, '{')
	for i, p := range pairs {
		if i > 0 {
			w.b = append(w.b, ',')
		}
		w.b = appendJSONString(w.b, p.key)
		w.b = append(w.b, ':')
		w.b, w.ok = appendJSONFloat(w.b, p.score, w.ok)
	}
	w.b = append(w.b, '}')
}

// keyBefore is a < b, deciding on the first byte without a call when the
// keys differ there, as labels mostly do.
func keyBefore(a, b string) bool {
	if a != "" && b != "" && a[0] != b[0] {
		return a[0] < b[0]
	}
	return a < b
}

// appendJSONFloat writes f as encoding/json's float64 encoder does (ES6
// number formatting: 'e' below 1e-6 and from 1e21 on, exponent without
// a leading zero); ok becomes false for NaN and infinities, which
// encoding/json refuses.
func appendJSONFloat(b []byte, f float64, ok bool) ([]byte, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, false
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-07 → e-7
		if n := len(b); b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, ok
}

// base64Pairs holds the two standard-alphabet characters of every 12-bit
// value, first in the low byte: appendBase64 writes two per lookup.
var base64Pairs = func() (t [1 << 12]uint16) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for v := range t {
		t[v] = uint16(alphabet[v>>6]) | uint16(alphabet[v&63])<<8
	}
	return t
}()

// appendBase64 is base64.StdEncoding.AppendEncode, byte for byte, about
// four times as fast on inline images: it takes six bytes per step (eight
// characters, one store) where the standard encoder takes three. Groups
// of three bytes encode independently, so the last one or two bytes,
// with the padding, are left to the standard encoder.
func appendBase64(b, src []byte) []byte {
	n := base64.StdEncoding.EncodedLen(len(src))
	b = slices.Grow(b, n)
	out := b[len(b) : len(b)+n]
	for len(src) >= 8 {
		x := binary.BigEndian.Uint64(src) // the top 48 bits are used
		binary.LittleEndian.PutUint64(out, uint64(base64Pairs[x>>52])|
			uint64(base64Pairs[x>>40&0xFFF])<<16|
			uint64(base64Pairs[x>>28&0xFFF])<<32|
			uint64(base64Pairs[x>>16&0xFFF])<<48)
		src, out = src[6:], out[8:]
	}
	for len(src) >= 3 {
		x := uint(src[0])<<16 | uint(src[1])<<8 | uint(src[2])
		binary.LittleEndian.PutUint32(out, uint32(base64Pairs[x>>12])|uint32(base64Pairs[x&0xFFF])<<16)
		src, out = src[3:], out[4:]
	}
	base64.StdEncoding.Encode(out, src)
	return b[:len(b)+n]
}

const jsonHex = "0123456789abcdef"

// load8 reads eight bytes little-endian (one load on amd64 and arm64).
func load8[T string | []byte](s T, i int) uint64 {
	_ = s[i+7]
	return uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
}

// Word-at-a-time byte tests: for bytes below 0x80, byte - n borrows
// (sets its top bit) exactly when byte < n, and (byte ^ c) - 1 exactly
// when byte == c. A borrow may flag a byte above a true hit, never one
// below it, so the lowest flagged byte is the first that needs a look.
const (
	ones = 0x0101010101010101
	tops = 0x8080808080808080
)

// stringSpecial8 flags (top bit of its byte) the bytes of x that
// appendJSONString cannot copy as they are: non-ASCII, control, '"',
// '\\', '<', '>', '&'.
func stringSpecial8(x uint64) uint64 {
	return (x | (x - 0x20*ones) | ((x ^ '"'*ones) - ones) | ((x ^ '\\'*ones) - ones) |
		((x ^ '<'*ones) - ones) | ((x ^ '>'*ones) - ones) | ((x ^ '&'*ones) - ones)) & tops
}

// rawSpecial8 flags the bytes of x, inside a string of valid JSON, that
// appendCompactJSON must look at: non-ASCII (U+2028/9 start with 0xE2),
// '"', '\\', '<', '>', '&'.
func rawSpecial8(x uint64) uint64 {
	return (x | ((x ^ '"'*ones) - ones) | ((x ^ '\\'*ones) - ones) |
		((x ^ '<'*ones) - ones) | ((x ^ '>'*ones) - ones) | ((x ^ '&'*ones) - ones)) & tops
}

// jsonPlain marks the ASCII bytes encoding/json, HTML escaping on, copies
// into a string as they are: not control characters, '"', '\\', '<', '>'
// or '&'.
var jsonPlain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendJSONString writes s quoted as encoding/json does with HTML
// escaping: short escapes for '"', '\\', \b \f \n \r \t; \u00XX for other
// control characters and <, >, &; \u2028 and \u2029 escaped; each byte of
// invalid UTF-8 as \ufffd.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		// Eight bytes at a time while none needs a look.
		if i+8 <= len(s) {
			m := stringSpecial8(load8(s, i))
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) >> 3
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if jsonPlain[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', jsonHex[c>>4], jsonHex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', jsonHex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendCompactJSON writes a json.RawMessage as encoding/json does: null
// when nil, else the text compacted (whitespace between tokens dropped)
// with <, >, &, U+2028 and U+2029 escaped; ok becomes false for text that
// is not valid JSON (an empty one included), which encoding/json refuses.
// Invalid UTF-8 inside strings is copied, as encoding/json copies it.
func appendCompactJSON(b, raw []byte, ok bool) ([]byte, bool) {
	if raw == nil {
		return append(b, "null"...), ok
	}
	if !validJSON(raw) {
		return b, false
	}
	// The text is valid, so a string is a '"', then bytes in which a '\\'
	// escapes the next, then a '"'; and <, >, & and U+2028/9 occur only
	// inside strings.
	start, inString := 0, false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !inString {
			switch c {
			case ' ', '\t', '\n', '\r':
				b = append(b, raw[start:i]...)
				start = i + 1
			case '"':
				inString = true
			}
			continue
		}
		if i+8 <= len(raw) {
			// Eight bytes of the string at a time while none needs a look.
			m := rawSpecial8(load8(raw, i))
			if m == 0 {
				i += 7 // and the loop's one
				continue
			}
			i += bits.TrailingZeros64(m) >> 3
			c = raw[i]
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			i++
		case '<', '>', '&':
			b = append(b, raw[start:i]...)
			b = append(b, '\\', 'u', '0', '0', jsonHex[c>>4], jsonHex[c&0xF])
			start = i + 1
		case 0xE2:
			if i+2 < len(raw) && raw[i+1] == 0x80 && raw[i+2]&^1 == 0xA8 {
				b = append(b, raw[start:i]...)
				b = append(b, '\\', 'u', '2', '0', '2', jsonHex[raw[i+2]&0xF])
				i += 2
				start = i + 1
			}
		}
	}
	return append(b, raw[start:]...), ok
}
