package bus

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// agreeSeeds are events as published and bent in the ways the two JSON
// decoders might read differently.
func agreeSeeds(t testing.TB) []string {
	sha := strings.Repeat("a", 64)
	evs := []Event{
		&AnnotationCreated{Meta: NewMeta(TypeAnnotationCreated), Author: "ann", ImageID: "img",
			Annotation: json.RawMessage(`{"label":"cat","box":[12,40,128,96],"notes":"é \u2028 \"q\""}`)},
		&ImageSubmitted{Meta: NewMeta(TypeImageSubmitted), ImageID: "img", Owner: "ann", Model: "fashion",
			Image: ImageRef{Object: "o", SHA256: sha, ContentType: "image/png", Size: 5, Data: []byte("\x89PNG\x00")}},
		&GradeCompleted{Meta: NewMeta(TypeGradeCompleted), GradeID: NewID(), ImageID: "img", Owner: "ann", Model: "fashion",
			ModelVersion: "1", Label: "Bag", Score: 0.93, Scores: map[string]float64{"Bag": 0.93, "T-shirt/top": 0.07, "a.b": 0},
			InferenceMS: 0.12, BatchSize: 7, Catalogued: true},
		&GradeFailed{Meta: NewMeta(TypeGradeFailed), GradeID: NewID(), Model: "fashion", Reason: "undecodable"},
	}
	var out []string
	for _, ev := range evs {
		data, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		s := string(data)
		body := strings.TrimSuffix(s, "}")
		out = append(out, s,
			body+`,"score":1e400}`,                  // out of range for float64
			body+`,"scores":{"Bag":"0.9"}}`,         // a string for a number
			body+`,"Owner":"mallory"}`,              // another case, last wins
			body+`,"owner":"\ud800x"}`,              // a lone surrogate
			body+`,"owner":"a\u0000b"}`,             // NUL
			body+`,"unknown":[[[{"a":[1,2,{}]}]]]}`, // an unknown member, nested
			body+`,"batch_size":7.5}`,               // a fraction for an int
			body+`,"batch_size":99999999999999999999}`,
			body+`,"catalogued":"true"}`,
			body+`,"annotation":{"label":"dog"}  }`,
			body+`,"image":{"object":"o","sha256":"`+sha+`","size":3,"data":"YWJj"}}`,
			body+`,"image":{"object":"o","sha256":"`+sha+`","size":3,"data":"YWJ"}}`, // bad base64
			body+`,"image":{"object":"o","sha256":"`+sha+`","size":3,"data":"YW\nJj"}}`,
			body+`,"scores":null,"label":null}`,
			body+`} `,    // trailing space
			body+`}}`,    // trailing garbage
			s[:len(s)/2], // torn
			strings.Replace(s, `"id":`, `"\u0069d":`, 1),
			"\xef\xbb\xbf"+s,                             // a byte-order mark
			strings.Replace(s, `"ann"`, "\"a\xffn\"", 1), // invalid UTF-8
		)
	}
	return out
}

// FuzzDecodeAgrees: Decode (goccy/go-json behind encoding/json's checks)
// accepts exactly what encoding/json alone accepts, as the same event, and
// refuses the rest in the same words.
//
//	go test -run '^$' -fuzz FuzzDecodeAgrees -fuzztime 2m ./bus/
func FuzzDecodeAgrees(f *testing.F) {
	for _, s := range agreeSeeds(f) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, gerr := Decode(data)
		want, werr := decode(data, stdUnmarshal)
		if (gerr == nil) != (werr == nil) || (gerr != nil && gerr.Error() != werr.Error()) {
			t.Fatalf("Decode(%q): error %v; encoding/json alone: %v", data, gerr, werr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Decode(%q) = %#v; encoding/json alone: %#v", data, got, want)
		}
	})
}

// BenchmarkDecodeGrade is what each of the four readers of a grade result
// (the edge's waiter, annotator, analytics, callbacks) pays per event.
//
//	go test -run '^$' -bench 'Decode(Grade|Annotation)' -benchmem ./bus/
func BenchmarkDecodeGrade(b *testing.B) {
	g := &GradeCompleted{Meta: NewMeta(TypeGradeCompleted), GradeID: NewID(), ImageID: "img-123", Owner: "bench-user",
		Model: "fashion", ModelVersion: "1", Label: "Bag", Score: 0.93, InferenceMS: 0.12, BatchSize: 7, Scores: map[string]float64{}}
	for i, l := range []string{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"} {
		g.Scores[l] = float64(i) / 45.123456
	}
	data, err := json.Marshal(g)
	if err != nil {
		b.Fatal(err)
	}
	for _, path := range []struct {
		name      string
		unmarshal func([]byte, any) bool
	}{{"Decode", fastUnmarshal}, {"encoding-json", stdUnmarshal}} {
		b.Run(path.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decode(data, path.unmarshal); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzValidJSON: validJSON is encoding/json.Valid.
//
//	go test -run '^$' -fuzz FuzzValidJSON -fuzztime 2m ./bus/
func FuzzValidJSON(f *testing.F) {
	for _, s := range agreeSeeds(f) {
		f.Add([]byte(s))
	}
	for _, s := range []string{``, ` `, `0`, `-0`, `01`, `-`, `1.`, `.5`, `1e`, `1e+`, `1E-7`, `2.5e+10`, `-12.0e3x`,
		`true`, `tru`, `truex`, `null `, `nul`, `"\u12"`, `"\u12G4"`, `"\uABCD"`, `"\x"`, "\"a\tb\"", "\"\x7f\xff\"",
		`[]`, `[,]`, `[1,]`, `[1 2]`, `{}`, `{,}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1 "b":2}`, `{1:2}`,
		` [ { "a" : [ ] } ] `, `[] []`, "\ufeff{}", strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001), strings.Repeat(`{"a":`, 10000) + "1" + strings.Repeat("}", 10000)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := validJSON(data), json.Valid(data); got != want {
			t.Fatalf("validJSON(%q) = %v, encoding/json.Valid %v", data, got, want)
		}
	})
}

func BenchmarkValidJSON(b *testing.B) {
	data, err := json.Marshal(&GradeCompleted{Meta: NewMeta(TypeGradeCompleted), GradeID: NewID(), Model: "fashion", Label: "Bag",
		Scores: map[string]float64{"T-shirt/top": 0.01, "Trouser": 0.02, "Pullover": 0.03, "Dress": 0.04, "Coat": 0.05,
			"Sandal": 0.06, "Shirt": 0.07, "Sneaker": 0.08, "Bag": 0.6, "Ankle boot": 0.04}})
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range []struct {
		name  string
		valid func([]byte) bool
	}{{"validJSON", validJSON}, {"encoding-json", json.Valid}} {
		b.Run(v.name, func(b *testing.B) {
			for b.Loop() {
				if !v.valid(data) {
					b.Fatal("invalid")
				}
			}
		})
	}
}
