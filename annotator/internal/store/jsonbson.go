package store

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/gradeline/gradeline/bus"
)

// maxDepth bounds the nesting of an annotation stored as a document
// (MongoDB allows 100 levels including the enclosing ones): the contract's
// own limit, which every accepted annotation already meets.
const maxDepth = bus.MaxAnnotationDepth

// jsonToDoc converts a JSON object into a BSON document when MongoDB and
// FerretDB can store it faithfully. It reports false for what they reject
// or would alter: keys starting with '$' or containing '.', duplicate keys,
// arrays nested directly in arrays (FerretDB), integers beyond int64, and
// deep nesting. Such annotations are stored as their JSON text instead.
//
// It writes the BSON straight from the JSON text in one pass (what
// bson.Marshal makes of the equivalent bson.D: int64 for integers, double
// otherwise): every stored annotation goes through here, and decoding
// token by token with encoding/json cost more than the rest of preparing
// the insert.
func jsonToDoc(raw []byte) (bson.Raw, bool) {
	p := docParser{data: raw, out: make([]byte, 0, len(raw)+len(raw)/2+16)}
	p.space()
	if p.i >= len(p.data) || p.data[p.i] != '{' {
		return nil, false
	}
	p.i++
	if !p.object(1) {
		return nil, false
	}
	if p.space(); p.i != len(p.data) { // trailing data
		return nil, false
	}
	return bson.Raw(p.out), true
}

// docParser appends the BSON of the JSON value at data[i:] to out.
type docParser struct {
	data []byte
	i    int
	out  []byte
}

func (p *docParser) space() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// object writes the members of an object whose '{' was read, as a
// document, and reads its '}'.
func (p *docParser) object(depth int) bool {
	if depth > maxDepth {
		return false
	}
	at, out := bsoncore.ReserveLength(p.out)
	p.out = out
	var keys []string // few: a linear search beats a map
	p.space()
	if p.i < len(p.data) && p.data[p.i] == '}' {
		p.i++
		return p.end(at)
	}
	for {
		p.space()
		key, ok := p.str()
		if !ok || strings.HasPrefix(key, "$") || strings.ContainsAny(key, ".\x00") || slices.Contains(keys, key) {
			return false
		}
		keys = append(keys, key)
		if p.space(); p.i >= len(p.data) || p.data[p.i] != ':' {
			return false
		}
		p.i++
		if !p.value(key, depth, false) {
			return false
		}
		if more, ok := p.next('}'); !more {
			return ok && p.end(at)
		}
	}
}

// next reads what follows a member or an element: a comma (more) or the
// closing bracket of its object or array (ok, not more).
func (p *docParser) next(closing byte) (more, ok bool) {
	p.space()
	if p.i >= len(p.data) {
		return false, false
	}
	c := p.data[p.i]
	p.i++
	return c == ',', c == closing
}

// end closes the document or array begun at at.
func (p *docParser) end(at int32) bool {
	p.out = append(p.out, 0)
	p.out = bsoncore.UpdateLength(p.out, at, int32(len(p.out))-at)
	return true
}

// value writes the element key holding the next JSON value.
func (p *docParser) value(key string, depth int, inArray bool) bool {
	p.space()
	if p.i >= len(p.data) {
		return false
	}
	switch c := p.data[p.i]; {
	case c == '{':
		p.i++
		p.out = bsoncore.AppendHeader(p.out, bsoncore.TypeEmbeddedDocument, key)
		return p.object(depth + 1)
	case c == '[':
		if inArray || depth+1 > maxDepth {
			return false
		}
		p.i++
		p.out = bsoncore.AppendHeader(p.out, bsoncore.TypeArray, key)
		at, out := bsoncore.ReserveLength(p.out)
		p.out = out
		p.space()
		if p.i < len(p.data) && p.data[p.i] == ']' {
			p.i++
			return p.end(at)
		}
		for n := 0; ; n++ {
			if !p.value(strconv.Itoa(n), depth+1, true) {
				return false
			}
			if more, ok := p.next(']'); !more {
				return ok && p.end(at)
			}
		}
	case c == '"':
		s, ok := p.str()
		if !ok || strings.IndexByte(s, 0) >= 0 {
			return false
		}
		p.out = bsoncore.AppendStringElement(p.out, key, s)
		return true
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number(key)
	case p.literal("true"):
		p.out = bsoncore.AppendBooleanElement(p.out, key, true)
		return true
	case p.literal("false"):
		p.out = bsoncore.AppendBooleanElement(p.out, key, false)
		return true
	case p.literal("null"):
		p.out = bsoncore.AppendNullElement(p.out, key)
		return true
	}
	return false
}

// literal reads word when it comes next.
func (p *docParser) literal(word string) bool {
	if !bytes.HasPrefix(p.data[p.i:], []byte(word)) {
		return false
	}
	p.i += len(word)
	return true
}

// number writes a JSON number: an int64 when it has no fraction or
// exponent, else a double; false for what neither holds exactly enough
// (an integer beyond int64, a double out of range) or for a number that
// is not JSON.
func (p *docParser) number(key string) bool {
	start := p.i
	for p.i < len(p.data) {
		c := p.data[p.i]
		if (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' {
			p.i++
			continue
		}
		break
	}
	text := p.data[start:p.i]
	if !json.Valid(text) {
		return false
	}
	if bytes.ContainsAny(text, ".eE") {
		f, err := strconv.ParseFloat(string(text), 64)
		if err != nil {
			return false
		}
		p.out = bsoncore.AppendDoubleElement(p.out, key, f)
		return true
	}
	n, err := strconv.ParseInt(string(text), 10, 64)
	if err != nil {
		return false
	}
	p.out = bsoncore.AppendInt64Element(p.out, key, n)
	return true
}

// str reads a JSON string. One without escapes that is valid UTF-8 (the
// usual case) is taken as it is; any other is decoded by encoding/json,
// as before.
func (p *docParser) str() (string, bool) {
	if p.i >= len(p.data) || p.data[p.i] != '"' {
		return "", false
	}
	start := p.i
	escaped := false
	for j := start + 1; j < len(p.data); j++ {
		switch c := p.data[j]; {
		case c == '\\':
			escaped = true
			j++
		case c < 0x20:
			return "", false
		case c == '"':
			p.i = j + 1
			body := p.data[start+1 : j]
			if !escaped && utf8.Valid(body) {
				return string(body), true
			}
			var s string
			if err := json.Unmarshal(p.data[start:j+1], &s); err != nil {
				return "", false
			}
			return s, true
		}
	}
	return "", false
}

// docToJSON renders a stored annotation document as JSON (relaxed
// extended JSON is plain JSON for the types jsonToDoc produces).
func docToJSON(d bson.Raw) (json.RawMessage, error) {
	return bson.MarshalExtJSON(d, false, false)
}
