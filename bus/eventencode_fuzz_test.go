package bus

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"testing"
	"time"
)

// FuzzAppendEventMatchesMarshal builds each event type appendEvent covers
// from the fuzzed values and checks that it writes json.Marshal's bytes,
// and declines exactly where json.Marshal fails: it declines nothing
// json.Marshal can encode.
func FuzzAppendEventMatchesMarshal(f *testing.F) {
	f.Add("cat", "Ankle boot", 0.93, 3.217, []byte(`{"label":"cat"}`), int64(1741964966), int64(535897932), int32(0), uint16(0))
	f.Add("<b>&\u2028", "\x00\xff\n", 1e21, 1e-7, []byte(" [ 1 , \"<\" ]\n"), int64(-62135596800), int64(0), int32(19800), uint16(0xffff))
	f.Add("", "", math.Copysign(0, -1), math.Inf(1), []byte{}, int64(253402300800), int64(-1), int32(86400), uint16(1))
	f.Add("x", "y", math.NaN(), 5e-324, []byte(nil), int64(1<<40), int64(999999999), int32(-3599), uint16(2))
	f.Fuzz(func(t *testing.T, s1, s2 string, f1, f2 float64, b []byte, sec, nsec int64, zone int32, flags uint16) {
		if flags&1 != 0 {
			// Mostly within the years json can write.
			sec %= 253402300800
		}
		loc := time.UTC
		if zone != 0 {
			loc = time.FixedZone(s2, int(zone))
		}
		t1 := time.Unix(sec, nsec).In(loc)
		var t2 time.Time
		if flags&2 != 0 {
			t2 = t1.Add(time.Duration(nsec))
		}
		var data []byte
		if flags&4 != 0 {
			data = b
		}
		var scores map[string]float64
		if flags&8 != 0 {
			scores = map[string]float64{s1: f1, s2: f2, s1 + s2: f1 * f2}
		}
		m := Meta{ID: s1, Type: s2, SchemaVersion: int(sec), Time: t1}
		evs := []any{
			&GradeCompleted{Meta: m, GradeID: s1, ImageID: s2, Owner: s1, Model: s2, ModelVersion: s1, Label: s2,
				Score: f1, Scores: scores, InferenceMS: f2, BatchSize: int(nsec), Catalogued: flags&16 != 0, CallbackURL: s2, SubmittedAt: t2},
			&GradeFailed{Meta: m, GradeID: s2, ImageID: s1, Owner: s2, Model: s1, Reason: s2, CallbackURL: s1, SubmittedAt: t2},
			&GradePending{Meta: m, GradeID: s1, ImageID: s2, Owner: s1, Model: s2, ModelVersion: s2, SubmittedAt: t2},
			&ImageSubmitted{Meta: m, ImageID: s1, Owner: s2, Model: s1, ModelVersion: s1,
				Image: ImageRef{Object: s2, SHA256: s1, ContentType: s2, Size: nsec, Data: data}, Catalogued: flags&16 != 0, CallbackURL: s1},
		}
		for _, raw := range fuzzAnnotations(s1, s2, f1, b, flags) {
			evs = append(evs, &AnnotationCreated{Meta: m, ImageID: s2, Author: s1, Annotation: raw})
		}
		// The edge's answer, by value as it is handed to Fiber.
		evs = append(evs, Grade{ID: s1, Status: s2, ImageID: s1, Owner: s2, Model: s1, ModelVersion: s2, Label: s1,
			Score: f1, Scores: scores, InferenceMS: f2, BatchSize: int(nsec), Reason: s2, SubmittedAt: t1, CompletedAt: t2,
			Catalogued: flags&16 != 0})
		for _, ev := range evs {
			want, err := json.Marshal(ev)
			got, ok := AppendJSON(nil, ev)
			switch {
			case err != nil && ok:
				t.Fatalf("%T: wrote %s; json.Marshal fails: %v", ev, got, err)
			case err == nil && !ok:
				t.Fatalf("%T: declined; json.Marshal writes %s", ev, want)
			case ok && !bytes.Equal(got, want):
				t.Fatalf("%T:\n got %s\nwant %s", ev, got, want)
			}
		}
	})
}

// fuzzAnnotations are annotation texts from the fuzzed values: the bytes
// as they are (mostly invalid), and valid JSON around the strings with
// optional whitespace, raw HTML characters, U+2028/9 and invalid UTF-8 in
// strings, which encoding/json compacts and escapes.
func fuzzAnnotations(s1, s2 string, f float64, b []byte, flags uint16) []json.RawMessage {
	ws := ""
	if flags&32 != 0 {
		ws = " \n\t\r"
	}
	// A JSON string's body with the bytes JSON forbids dropped, the rest
	// (invalid UTF-8 included) left raw.
	body := func(s string) []byte {
		out := make([]byte, 0, len(s))
		for i := 0; i < len(s); i++ {
			if c := s[i]; c >= 0x20 && c != '"' && c != '\\' {
				out = append(out, c)
			}
		}
		return out
	}
	var v []byte
	v = append(v, ws+"{"+ws+`"`...)
	v = append(v, body(s1)...)
	v = append(v, `"`+ws+":"+ws+"["+ws+`"`...)
	v = append(v, body(s2)...)
	v = append(v, `\"\\\u2028"`+ws+","+ws...)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		v = append(v, "null"...)
	} else {
		v = strconv.AppendFloat(v, f, 'g', -1, 64)
	}
	v = append(v, ws+"]"+ws+"}"+ws...)

	out := []json.RawMessage{b, v}
	// encoding/json's own output of the strings, re-indented: valid, with
	// escapes of every kind.
	if m, err := json.MarshalIndent(map[string]any{s1: s2, "n": []any{f, nil, true}}, ws, "  "); err == nil {
		out = append(out, m)
	}
	return out
}
