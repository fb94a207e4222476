package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// jsonToDocCases are bodies jsonToDoc must treat exactly as the
// encoding/json version before it did (jsonToDocReference below).
var jsonToDocCases = []string{
	`{}`, ` { } `, `{"a":1}`, `{"a":-0}`, `{"a":1.0}`, `{"a":1e3}`, `{"a":-1.5E-3}`, `{"a":9223372036854775807}`,
	`{"a":9223372036854775808}`, `{"a":-9223372036854775808}`, `{"a":-9223372036854775809}`, `{"a":1e400}`,
	`{"a":"x","b":true,"c":false,"d":null}`, `{"a":[]}`, `{"a":[1,"x",{"b":[2]},null]}`, `{"a":[[1]]}`,
	`{"$a":1}`, `{"a.b":1}`, `{"a\u0000":1}`, `{"\u0024a":1}`, `{"a":1,"a":2}`, `{"a":{"a":1},"b":{"a":2}}`,
	`{"a":"\u0000"}`, `{"a":"\n\t\"\\\u00e9\ud83d\ude00"}`, `{"é":"ü","日本":"語"}`, `{"":1}`,
	`{"label":"cat","box":[12,40,128,96],"confidence":0.93,"notes":"left ear partly hidden"}`,
	`[1]`, `"x"`, `{"a":1} x`, `{"a":1}{}`, `{"a":}`, `{"a":1,}`, `{"a" 1}`, `{"a":tru}`, `{"a":01}`, `{"a":-}`,
	`{"a":"x` + "\xff" + `"}`, `{"a":[1,]}`, `{"a":[1 2]}`, ``, `{`,
}

func TestJSONToDocAsBefore(t *testing.T) {
	cases := append([]string(nil), jsonToDocCases...)
	// Nesting around the depth limit, in objects and in arrays.
	for _, d := range []int{maxDepth - 2, maxDepth - 1, maxDepth, maxDepth + 1} {
		cases = append(cases, strings.Repeat(`{"a":`, d)+"1"+strings.Repeat("}", d))
		cases = append(cases, strings.Repeat(`{"a":`, d-1)+"[1]"+strings.Repeat("}", d-1))
		cases = append(cases, strings.Repeat(`{"a":`, d-1)+`[{"b":1}]`+strings.Repeat("}", d-1))
	}
	for _, c := range cases {
		checkAsBefore(t, []byte(c))
	}
}

func FuzzJSONToDoc(f *testing.F) {
	for _, c := range jsonToDocCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return // annotations reach the store valid (bus.ValidateAnnotation)
		}
		checkAsBefore(t, data)
	})
}

// checkAsBefore compares jsonToDoc with the reference on one input: the
// same verdict and byte for byte the same document.
func checkAsBefore(t *testing.T, data []byte) {
	t.Helper()
	got, ok := jsonToDoc(data)
	want, wantOK := jsonToDocReference(data)
	if !json.Valid(data) {
		// Only valid JSON reaches the store; on anything else the
		// verdict may differ but must never be a document.
		if ok && !wantOK {
			t.Errorf("%q: invalid JSON made a document", data)
		}
		return
	}
	if ok != wantOK || !bytes.Equal(got, want) {
		t.Errorf("%q: got %v %s, want %v %s", data, ok, fmtDoc(got), wantOK, fmtDoc(want))
	}
}

func fmtDoc(d bson.Raw) string {
	if d == nil {
		return "nil"
	}
	return fmt.Sprintf("%s", d)
}

// BenchmarkJSONToDoc: the bench's annotation turned into its document,
// in one pass and as before.
func BenchmarkJSONToDoc(b *testing.B) {
	body := []byte(benchBody)
	for name, f := range map[string]func([]byte) (bson.Raw, bool){"one-pass": jsonToDoc, "encoding-json": jsonToDocReference} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if _, ok := f(body); !ok {
					b.Fatal("not a document")
				}
			}
		})
	}
}

// jsonToDocReference is jsonToDoc as it was, on encoding/json's tokens:
// the behaviour the one-pass version keeps.
func jsonToDocReference(raw []byte) (bson.Raw, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, false
	}
	d, ok := refObject(dec, 1)
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

func refObject(dec *json.Decoder, depth int) (bson.D, bool) {
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
		v, ok := refValue(dec, depth, false)
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

func refValue(dec *json.Decoder, depth int, inArray bool) (any, bool) {
	tok, err := dec.Token()
	if err != nil {
		return nil, false
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			return refObject(dec, depth+1)
		case '[':
			if inArray || depth+1 > maxDepth {
				return nil, false
			}
			a := bson.A{}
			for dec.More() {
				v, ok := refValue(dec, depth+1, true)
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
