package store

import (
	"bytes"
	"encoding/json"
	"github.com/gradeline/gradeline/bus"
	"strconv"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
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
func jsonToDoc(raw []byte) (bson.Raw, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, false
	}
	d, ok := readObject(dec, 1)
	if !ok {
		return nil, false
	}
	if _, err := dec.Token(); err == nil { // trailing data
		return nil, false
	}
	out, err := bson.Marshal(d)
	if err != nil {
		return nil, false
	}
	return out, true
}

func readObject(dec *json.Decoder, depth int) (bson.D, bool) {
	if depth > maxDepth {
		return nil, false
	}
	d := bson.D{}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, false
		}
		key, ok := tok.(string)
		if !ok || strings.HasPrefix(key, "$") || strings.ContainsAny(key, ".\x00") || seen[key] {
			return nil, false
		}
		seen[key] = true
		v, ok := readValue(dec, depth, false)
		if !ok {
			return nil, false
		}
		d = append(d, bson.E{Key: key, Value: v})
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, false
	}
	return d, true
}

func readValue(dec *json.Decoder, depth int, inArray bool) (any, bool) {
	tok, err := dec.Token()
	if err != nil {
		return nil, false
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			return readObject(dec, depth+1)
		case '[':
			if inArray || depth+1 > maxDepth {
				return nil, false
			}
			a := bson.A{}
			for dec.More() {
				v, ok := readValue(dec, depth+1, true)
				if !ok {
					return nil, false
				}
				a = append(a, v)
			}
			if tok, err := dec.Token(); err != nil || tok != json.Delim(']') {
				return nil, false
			}
			return a, true
		}
		return nil, false
	case json.Number:
		s := t.String()
		if strings.ContainsAny(s, ".eE") {
			f, err := strconv.ParseFloat(s, 64)
			return f, err == nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil
	case string:
		if strings.ContainsRune(t, 0) {
			return nil, false
		}
		return t, true
	case bool, nil:
		return t, true
	}
	return nil, false
}

// docToJSON renders a stored annotation document as JSON (relaxed
// extended JSON is plain JSON for the types jsonToDoc produces).
func docToJSON(d bson.Raw) (json.RawMessage, error) {
	return bson.MarshalExtJSON(d, false, false)
}
