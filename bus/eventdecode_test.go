package bus

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// canonicalTypes are fresh values of the types decodeCanonical covers.
func canonicalTypes() []Event {
	return []Event{&GradeCompleted{}, &ImageSubmitted{}, &AnnotationCreated{}}
}

// checkCanonical decodes data into each covered type and asserts that an
// accepted decoding is exactly json.Unmarshal's into a fresh value and
// that a declined one left the value as it was. It returns the types that
// accepted.
func checkCanonical(t testing.TB, name string, data []byte) (accepted []string) {
	t.Helper()
	for _, fresh := range canonicalTypes() {
		typ := reflect.TypeOf(fresh).Elem()
		got := reflect.New(typ).Interface()
		if !decodeCanonical(data, got) {
			// Declined: a value holding something keeps it.
			held := reflect.New(typ).Interface().(Event)
			held.EventMeta().ID = "held"
			before := reflect.ValueOf(held).Elem().Interface()
			if decodeCanonical(data, held) {
				t.Fatalf("%s: %v: accepted into a used value, declined into a fresh one", name, typ)
			}
			if after := reflect.ValueOf(held).Elem().Interface(); !reflect.DeepEqual(after, before) {
				t.Fatalf("%s: %v: declined but wrote %#v", name, typ, after)
			}
			continue
		}
		want := reflect.New(typ).Interface()
		if err := json.Unmarshal(data, want); err != nil {
			t.Fatalf("%s: %v: accepted %q; json.Unmarshal fails: %v", name, typ, data, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: %v: from %q\n got %#v\nwant %#v", name, typ, data, got, want)
		}
		// A value holding something is overwritten whole.
		used := reflect.New(typ).Interface().(Event)
		used.EventMeta().ID, used.EventMeta().SchemaVersion = "used", 99
		if !decodeCanonical(data, used) || !reflect.DeepEqual(used, want) {
			t.Fatalf("%s: %v: into a used value: %#v", name, typ, used)
		}
		accepted = append(accepted, typ.Name())
	}
	return accepted
}

// checkDecodeUnchanged asserts that Decode returns for data what it
// returned before decodeCanonical, and what encoding/json alone gives.
func checkDecodeUnchanged(t testing.TB, name string, data []byte) {
	t.Helper()
	got, gerr := Decode(data)
	for _, ref := range []struct {
		name      string
		unmarshal func([]byte, any) bool
	}{{"goccy", goccyUnmarshal}, {"encoding/json", stdUnmarshal}} {
		want, werr := decode(data, ref.unmarshal)
		if (gerr == nil) != (werr == nil) || (gerr != nil && gerr.Error() != werr.Error()) {
			t.Fatalf("%s: Decode(%q): error %v; %s: %v", name, data, gerr, ref.name, werr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: Decode(%q) = %#v; %s: %#v", name, data, got, ref.name, want)
		}
	}
}

// canonicalSamples are events of the three types as the services write
// them and with every field bent: each string sample in every string
// field, floats, times, annotation bodies, score maps, image data, the
// optional members set and not.
func canonicalSamples(t *testing.T) map[string]Event {
	now := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	img := bytes.Repeat([]byte{0x89, 'P', 'N', 'G', 0, 0xff, '<', '>'}, 40)
	sha := strings.Repeat("5e", 32)
	ten := map[string]float64{}
	for i, l := range fashionLabels {
		ten[l] = float64(i+1) / 45.123456
	}
	out := map[string]Event{}
	add := func(name string, ev Event) { out[name] = ev }

	for i, s := range encodeStrings {
		m := encodeMeta(s, s, now)
		add(fmt.Sprintf("strings[%d] grade", i), &GradeCompleted{Meta: m, GradeID: s, ImageID: s, Owner: s, Model: s, ModelVersion: s,
			Label: s, Score: 0.5, Scores: map[string]float64{s: 0.5, s + "x": 0.1}, CallbackURL: s, SubmittedAt: now})
		add(fmt.Sprintf("strings[%d] submitted", i), &ImageSubmitted{Meta: m, ImageID: s, Owner: s, Model: s, ModelVersion: s,
			Image: ImageRef{Object: s, SHA256: s, ContentType: s, Size: 3, Data: []byte(s)}, CallbackURL: s})
		add(fmt.Sprintf("strings[%d] annotation", i), &AnnotationCreated{Meta: m, ImageID: s, Author: s,
			Annotation: json.RawMessage(`{"a":1}`)})
	}
	for i, f := range encodeFloats {
		add(fmt.Sprintf("floats[%d] %g", i, f), &GradeCompleted{Meta: encodeMeta(TypeGradeCompleted, "id", now),
			Score: f, InferenceMS: -f, Scores: map[string]float64{"a": 1, "b": f}})
	}
	for i, tm := range encodeTimes(t) {
		add(fmt.Sprintf("times[%d] grade", i), &GradeCompleted{Meta: encodeMeta(TypeGradeCompleted, "id", tm), SubmittedAt: tm})
		add(fmt.Sprintf("times[%d] submitted", i), &ImageSubmitted{Meta: encodeMeta(TypeImageSubmitted, "id", tm)})
		add(fmt.Sprintf("times[%d] annotation", i), &AnnotationCreated{Meta: encodeMeta(TypeAnnotationCreated, "id", tm),
			Annotation: json.RawMessage(`{}`)})
	}
	for i, raw := range encodeRaws {
		add(fmt.Sprintf("raws[%d]", i), &AnnotationCreated{Meta: encodeMeta(TypeAnnotationCreated, "id", now), Author: "ann", Annotation: raw})
		add(fmt.Sprintf("raws[%d] with image", i), &AnnotationCreated{Meta: encodeMeta(TypeAnnotationCreated, "id", now),
			ImageID: "img", Author: "ann", Annotation: raw})
	}
	for i, sc := range encodeScores() {
		add(fmt.Sprintf("scores[%d]", i), &GradeCompleted{Meta: encodeMeta(TypeGradeCompleted, "id", now), Label: "cat", Scores: sc})
	}
	for _, data := range [][]byte{nil, {}, {0}, {0, 1}, {0, 1, 2}, {0xff, 0xfe, 0xfd, 0xfc}, img} {
		add(fmt.Sprintf("data of %d", len(data)), &ImageSubmitted{Meta: encodeMeta(TypeImageSubmitted, "id", now),
			ImageID: "i", Owner: "o", Model: "m", Image: ImageRef{Object: "o", SHA256: sha, Size: int64(len(data)), Data: data}})
	}
	for _, set := range []bool{false, true} {
		var (
			s  string
			tm time.Time
		)
		if set {
			s, tm = "https://example.com/cb?a=1&b=2", now
		}
		add(fmt.Sprintf("optional %v grade", set), &GradeCompleted{Meta: encodeMeta(TypeGradeCompleted, "id", now),
			Catalogued: set, CallbackURL: s, SubmittedAt: tm, BatchSize: math.MinInt, Scores: ten})
		add(fmt.Sprintf("optional %v submitted", set), &ImageSubmitted{Meta: encodeMeta(TypeImageSubmitted, "id", now),
			ModelVersion: s, Catalogued: set, CallbackURL: s, Image: ImageRef{Size: math.MaxInt64}})
		add(fmt.Sprintf("optional %v annotation", set), &AnnotationCreated{Meta: encodeMeta(TypeAnnotationCreated, "id", now),
			ImageID: s, Annotation: json.RawMessage(`{}`)})
	}
	add("schema_version max", &GradeCompleted{Meta: Meta{SchemaVersion: math.MaxInt}})
	add("schema_version min", &ImageSubmitted{Meta: Meta{SchemaVersion: math.MinInt}})
	for _, ev := range []Event{&GradeCompleted{}, &ImageSubmitted{}, &AnnotationCreated{}} {
		add(fmt.Sprintf("zero %T", ev), ev)
	}

	// As the services write them.
	add("unicode labels", &GradeCompleted{Meta: NewMeta(TypeGradeCompleted), GradeID: NewID(), ImageID: NewID(), Owner: "zoë",
		Model: "fashion", ModelVersion: "2", Label: "Ankle boot", Score: 0.93, Scores: map[string]float64{"T-shirt/top": 0.01,
			"Ankle boot": 0.93, "Stiefelette (Knöchel)": 0.03, "靴": 0.02, "🥾": 0.01}, InferenceMS: 1.25, BatchSize: 16})
	add("annotation nested", &AnnotationCreated{Meta: NewMeta(TypeAnnotationCreated), ImageID: NewID(), Author: "Zoë",
		Annotation: json.RawMessage(`{"label":"Ankle boot","polygon":[[1,2],[3.5,-4e-3],[5,6]],"meta":{"by":{"name":"Zoë 🥾","tags":["a","<b>"]}},"ok":true,"n":null}`)})
	sub := &ImageSubmitted{Meta: NewMeta(TypeImageSubmitted), ImageID: NewID(), Owner: "alice", Model: "fashion-mnist",
		Image:       ImageRef{Object: "sha256/ab", SHA256: sha, ContentType: "image/png", Size: int64(len(img)), Data: img},
		CallbackURL: "https://example.com/hook?x=<1>&y=2"}
	add("submitted", sub)
	add("submitted catalogued", &ImageSubmitted{Meta: NewMeta(TypeImageSubmitted), ImageID: NewID(), Owner: "alice", Model: "m",
		ModelVersion: "7", Image: ImageRef{Object: "o", SHA256: sha, ContentType: "image/png", Size: 99}, Catalogued: true})
	for _, ev := range benchEvents() {
		add("bench "+ev.EventMeta().Type, ev)
	}
	return out
}

// TestDecodeCanonical: decodeCanonical reads every event appendEvent
// writes of the three types, as json.Unmarshal does, and Decode returns
// what it returned before.
func TestDecodeCanonical(t *testing.T) {
	for name, ev := range canonicalSamples(t) {
		data, ok := appendEvent(nil, ev)
		if !ok {
			continue // json.Marshal refuses it too
		}
		accepted := checkCanonical(t, name, data)
		want := reflect.TypeOf(ev).Elem().Name()
		if len(accepted) == 0 {
			// Declined only where json.Unmarshal fails too (an annotation
			// nested 10000 deep is 10001 deep in the event) or merges two
			// score keys that unquote alike (invalid UTF-8 → U+FFFD).
			fresh := reflect.New(reflect.TypeOf(ev).Elem()).Interface()
			if err := json.Unmarshal(data, fresh); err == nil {
				g, isGrade := fresh.(*GradeCompleted)
				if !isGrade || len(g.Scores) == len(ev.(*GradeCompleted).Scores) {
					t.Errorf("%s: declined %.300q", name, data)
				}
			}
		}
		for _, a := range accepted {
			if a != want {
				// The three shapes differ in their required keys.
				t.Errorf("%s: a %s was also read as a %s", name, want, a)
			}
		}
		checkDecodeUnchanged(t, name, data)
	}
}

// TestDecodeCanonicalSorted: the scores need not be in order.
func TestDecodeCanonicalUnsortedScores(t *testing.T) {
	data := []byte(`{"id":"x","type":"grade.completed","schema_version":1,"time":"2025-03-14T15:09:26Z","grade_id":"g","image_id":"i",` +
		`"owner":"o","model":"m","model_version":"1","label":"b","score":1,"scores":{"b":1,"a":0.5,"c":-0},"inference_ms":0,"batch_size":1}`)
	if got := checkCanonical(t, "unsorted", data); len(got) != 1 {
		t.Fatalf("accepted by %v", got)
	}
	checkDecodeUnchanged(t, "unsorted", data)
}

// nonCanonical bends canonical text in the ways decodeCanonical must
// decline or read exactly as encoding/json does.
func nonCanonical(s string) []string {
	body := strings.TrimSuffix(s, "}")
	out := []string{
		s + " ", s + "\n", " " + s, "\ufeff" + s, s + "}", s + "{}", s + "x", s + "\x00",
		strings.Replace(s, `":`, `": `, 1), strings.Replace(s, `,"`, `, "`, 1), strings.Replace(s, `,"`, ` ,"`, 1),
		strings.Replace(s, `{"id":`, `{ "id":`, 1),
		strings.Replace(s, `"id":`, `"ID":`, 1), strings.Replace(s, `"type":`, `"Type":`, 1),
		strings.Replace(s, `"id":`, `"\u0069d":`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":1.0`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":1e0`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":01`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":-0`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":+1`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":"1"`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":null`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":9223372036854775808`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":-9223372036854775808`, 1),
		strings.Replace(s, `"schema_version":1`, `"schema_version":99999999999999999999`, 1),
		strings.Replace(s, `"time":"`, `"time":null,"x":"`, 1),
		strings.Replace(s, `"time":"`, `"time":"\u0032`, 1),
		strings.Replace(s, `"id":"`, `"id":null,"q":"`, 1),
		strings.Replace(s, `"id":"`, `"id":"\u00e9\n\t\"\\\/\b\f\r\u0000\u2028\u003c`, 1),
		strings.Replace(s, `"id":"`, `"id":"\ud83e\udd7e`, 1), // a surrogate pair
		strings.Replace(s, `"id":"`, `"id":"\ud83e`, 1),       // a lone one
		strings.Replace(s, `"id":"`, `"id":"\udd7e\ud83e`, 1), // reversed
		strings.Replace(s, `"id":"`, `"id":"\'`, 1),
		strings.Replace(s, `"id":"`, `"id":"\x`, 1),
		strings.Replace(s, `"id":"`, `"id":"\u12G4`, 1),
		strings.Replace(s, `"id":"`, `"id":"\u12`, 1),
		strings.Replace(s, `"id":"`, `"id":"`+"\xff", 1),
		strings.Replace(s, `"id":"`, `"id":"`+"\xed\xa0\x80", 1),
		strings.Replace(s, `"id":"`, `"id":"`+"\xc3", 1),
		strings.Replace(s, `"id":"`, `"id":"`+"a\tb", 1),
		strings.Replace(s, `"id":"`, `"id":"`+"\x7f", 1),
		strings.Replace(s, `"id":"`, `"id":"\`, 1),
		strings.Replace(s, `"id":"`, `"id":"`+"\xc3\\n", 1),
		strings.Replace(s, `"type":"`, `"type":"x`, 1),
		strings.Replace(s, `Z"`, `+01:00"`, 1),
		strings.Replace(s, `Z"`, `+00:00"`, 1),
		strings.Replace(s, `Z"`, `z"`, 1),
		strings.Replace(s, `Z"`, `-24:00"`, 1),
		strings.Replace(s, `"time":"2`, `"time":"1`, 1),
		strings.Replace(s, `"time":"2025`, `"time":"10000`, 1),
		strings.Replace(s, `"time":"2025`, `"time":"+2025`, 1),
		strings.Replace(s, `"time":"2025-03-14T`, `"time":"2025-03-14t`, 1),
		strings.Replace(s, `"time":"2025-03-14T15`, `"time":"2025-03-14T24`, 1),
		strings.Replace(s, `"time":"2025-03-14T15:09:26`, `"time":"2025-03-14T15:09:26.`, 1),
		strings.Replace(s, `"time":"2025-03-14T15:09:26`, `"time":"2025-03-14T15:09:26,5`, 1),
		strings.Replace(s, `"time":"2025-03-14T15:09:26`, `"time":"2025-03-14T15:09:26.1234567891`, 1),
		strings.Replace(s, `"time":"2025-03-14`, `"time":"2025-02-30`, 1),
		strings.Replace(s, `"time":"2025-03-14`, `"time":"2025-3-14`, 1),
		strings.Replace(s, `"time":"2025-03-14`, `"time":"2025-03-14\u0054`, 1),
		strings.Replace(s, `"time":"`, `"time":1,"x":"`, 1),
		// Grade result members.
		strings.Replace(s, `"score":`, `"score":1e400,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":-1e400,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":1e-400,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":-0.0,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":1E+2,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":.5,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":1.,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":0x10,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":1_0,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":Infinity,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":"1","x":`, 1),
		strings.Replace(s, `"score":`, `"score":00.5,"x":`, 1),
		strings.Replace(s, `"score":`, `"score":`+strings.Repeat("9", 400)+`,"x":`, 1),
		strings.Replace(s, `"scores":{`, `"scores":null,"x":{`, 1),
		strings.Replace(s, `"scores":{`, `"scores":{"Bag":0.5,`, 1),
		strings.Replace(s, `"scores":{`, `"scores":{"Bag":0.5,"Bag":0.25,`, 1),
		strings.Replace(s, `"scores":{`, `"scores":{"Bag":null,`, 1),
		strings.Replace(s, `"scores":{`, `"scores":{"Bag":"1",`, 1),
		strings.Replace(s, `"scores":{`, `"scores":{"B\u0061g":1,`, 1),
		strings.Replace(s, `"scores":{`, `"scores":{ "Bag":1,`, 1),
		strings.Replace(s, `"scores":{`, `"scores":{"":1,`, 1),
		strings.Replace(s, `"scores":{`, `"scores":{,`, 1),
		strings.Replace(s, `"scores":{`, `"scores":{}, "q":{`, 1),
		strings.Replace(s, `"scores":{`, `"scores":[],"q":{`, 1),
		strings.Replace(s, `"batch_size":`, `"batch_size":7.5,"x":`, 1),
		strings.Replace(s, `"batch_size":`, `"batch_size":true,"x":`, 1),
		strings.Replace(s, `"catalogued":true`, `"catalogued":false`, 1),
		strings.Replace(s, `"catalogued":true`, `"catalogued":"true"`, 1),
		strings.Replace(s, `"catalogued":true`, `"catalogued":1`, 1),
		strings.Replace(s, `"catalogued":true`, `"catalogued":null`, 1),
		strings.Replace(s, `"catalogued":true`, `"catalogued":tru`, 1),
		strings.Replace(s, `"catalogued":true`, `"catalogued":truex`, 1),
		// Image members.
		strings.Replace(s, `"size":`, `"size":-`, 1),
		strings.Replace(s, `"size":`, `"size":1e3,"x":`, 1),
		strings.Replace(s, `"data":"`, `"data":"=`, 1),
		strings.Replace(s, `"data":"`, `"data":"A`, 1),
		strings.Replace(s, `"data":"`, `"data":"AAAA`, 1),
		strings.Replace(s, `"data":"`, `"data":"AA\r\nAA`, 1),
		strings.Replace(s, `"data":"`, `"data":"AA\nAA`, 1),
		strings.Replace(s, `"data":"`, `"data":"AA\u000aAA`, 1),
		strings.Replace(s, `"data":"`, `"data":"AA\/A`, 1),
		strings.Replace(s, `"data":"`, `"data":"AA-_`, 1),
		strings.Replace(s, `"data":"`, `"data":"",`, 1),
		strings.Replace(s, `"data":"`, `"data":null,"x":"`, 1),
		strings.Replace(s, `"data":"`, `"data":[1],"x":"`, 1),
		strings.Replace(s, `"image":{`, `"image":null,"x":{`, 1),
		strings.Replace(s, `"image":{`, `"image":{},"x":{`, 1),
		strings.Replace(s, `"image":{"object":`, `"image":{"data":"","object":`, 1),
		strings.Replace(s, `"model":`, `"model_version":"x","model":`, 1),
		strings.Replace(s, `,"image":`, `,"model_version":"","image":`, 1),
		strings.Replace(s, `,"image":`, `,"model_version":"\u003c","image":`, 1),
		// Annotation members.
		strings.Replace(s, `"annotation":`, `"annotation": `, 1),
		strings.Replace(s, `"annotation":{`, `"annotation":{ `, 1),
		strings.Replace(s, `"annotation":{`, `"annotation":{"x":1e400,`, 1),
		strings.Replace(s, `"annotation":{`, `"annotation":{"x":"`+"\xff"+`",`, 1),
		strings.Replace(s, `"annotation":{`, `"annotation":{"x":"\ud800",`, 1),
		strings.Replace(s, `"annotation":{`, `"annotation":{"x":,`, 1),
		strings.Replace(s, `"annotation":{`, `"annotation":null,"x":{`, 1),
		strings.Replace(s, `"annotation":{`, `"annotation":[{`, 1),
		strings.Replace(s, `,"author":`, `,"image_id":"","author":`, 1),
		strings.Replace(s, `,"author":`, `,"image_id":null,"author":`, 1),
		// Whole members.
		body + `,"x":1}`, body + `,"id":"again"}`, body + `,"type":"grade.failed"}`, body + `,}`, body + `,"catalogued":true}`,
		body + `,"callback_url":"https://example.com/late"}`, body + `,"submitted_at":"2025-03-14T15:09:26Z"}`,
		body + `,"submitted_at":"0001-01-01T00:00:00Z"}`, body + `,"submitted_at":null}`,
		body + `,"annotation":{"label":"dog"}}`, body, body + `,`, body + `}}`,
		"{" + s[strings.Index(s, ",")+1:len(s)-1] + "," + s[1:strings.Index(s, ",")] + "}", // id last
		"null", "{}", "[]", `""`, "", "{", strings.ToUpper(s),
	}
	// Members swapped with their neighbours.
	for i := 0; ; {
		j := strings.Index(s[i+1:], `,"`)
		if j < 0 {
			break
		}
		j += i + 1
		if k := strings.Index(s[j+1:], `,"`); k > 0 {
			k += j + 1
			out = append(out, s[:i+1]+s[j+1:k]+","+s[i+1:j]+s[k:])
		}
		i = j
	}
	return out
}

// TestDecodeCanonicalNonCanonical: text bent away from appendEvent's form
// is declined or read exactly as encoding/json reads it, and Decode's
// answer for it has not changed; likewise every truncation.
func TestDecodeCanonicalNonCanonical(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	at := time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)
	meta := func(typ string) Meta { return Meta{ID: "0195962a-1f3e", Type: typ, SchemaVersion: 1, Time: at} }
	evs := append(benchEvents(),
		&GradeCompleted{Meta: meta(TypeGradeCompleted), GradeID: "g", ImageID: "i", Owner: "o", Model: "m", ModelVersion: "1",
			Label: "Bag", Score: 0.5, Scores: map[string]float64{"Bag": 0.5, "Coat": 0.5}, InferenceMS: 1, BatchSize: 2,
			Catalogued: true, CallbackURL: "https://example.com/a?b=1&c=2", SubmittedAt: at},
		&ImageSubmitted{Meta: meta(TypeImageSubmitted), ImageID: "i", Owner: "o", Model: "m", ModelVersion: "v",
			Image:      ImageRef{Object: "o", SHA256: sha, ContentType: "image/png", Size: 4, Data: []byte("\x89PNG")},
			Catalogued: true, CallbackURL: "https://example.com/a"},
		&AnnotationCreated{Meta: meta(TypeAnnotationCreated), ImageID: "i", Author: "a",
			Annotation: json.RawMessage(`{"label":"Ankle boot","box":[1,2,3,4],"n":{"x":"é<"}}`)},
	)
	var declined, agreed int
	for _, ev := range evs {
		canon, ok := appendEvent(nil, ev)
		if !ok {
			t.Fatalf("%T: appendEvent declined", ev)
		}
		s := string(canon)
		for i, bent := range nonCanonical(s) {
			name := fmt.Sprintf("%s bent[%d]", ev.EventMeta().Type, i)
			if len(checkCanonical(t, name, []byte(bent))) == 0 {
				declined++
			} else {
				agreed++
			}
			checkDecodeUnchanged(t, name, []byte(bent))
		}
		for n := range len(s) {
			name := fmt.Sprintf("%s torn at %d", ev.EventMeta().Type, n)
			if got := checkCanonical(t, name, canon[:n]); len(got) != 0 {
				t.Fatalf("%s: accepted %q", name, canon[:n])
			}
			checkDecodeUnchanged(t, name, canon[:n])
		}
	}
	t.Logf("bent texts: %d declined, %d read as encoding/json reads them", declined, agreed)

	// Some are declined for sure: the canonical form has none of them.
	s := string(must(appendEvent(nil, evs[0])))
	for _, bent := range []string{
		s + " ", " " + s, s + "}", strings.Replace(s, `":`, `": `, 1), strings.Replace(s, `"id":`, `"ID":`, 1),
		strings.TrimSuffix(s, "}") + `,"x":1}`, strings.TrimSuffix(s, "}") + `,"id":"again"}`,
		strings.Replace(s, `"scores":{`, `"scores":{"Bag":0.5,"Bag":0.25,`, 1),
		strings.Replace(s, `"id":"`, `"id":"\ud83e\udd7e`, 1),
		strings.Replace(s, `"id":"`, `"id":"`+"\xff", 1),
		strings.Replace(s, `"score":`, `"score":1e400,"x":`, 1),
	} {
		if decodeCanonical([]byte(bent), new(GradeCompleted)) {
			t.Errorf("accepted %q", bent)
		}
	}
}

func must(b []byte, ok bool) []byte {
	if !ok {
		panic("declined")
	}
	return b
}

func TestDecodeCanonicalOtherTypes(t *testing.T) {
	data := must(appendEvent(nil, benchEvents()[0]))
	for _, v := range []any{nil, GradeCompleted{}, (*GradeCompleted)(nil), (*ImageSubmitted)(nil), (*AnnotationCreated)(nil),
		&GradeFailed{}, &GradePending{}, &Meta{}, new(any), new(map[string]any)} {
		if decodeCanonical(data, v) {
			t.Errorf("%T: accepted", v)
		}
	}
}

// FuzzDecodeCanonicalAgrees: whatever decodeCanonical accepts into any of
// its three types, json.Unmarshal reads as the same value.
//
//	go test -run '^$' -fuzz FuzzDecodeCanonicalAgrees -fuzztime 60s -fuzzminimizetime 5s ./bus/
func FuzzDecodeCanonicalAgrees(f *testing.F) {
	evs := benchEvents()
	evs = append(evs,
		&GradeCompleted{Meta: NewMeta(TypeGradeCompleted), GradeID: "g", Label: "<b>", Scores: map[string]float64{"<b>": 1e-7, "é\u2028": -0},
			Catalogued: true, CallbackURL: "https://x/?a&b", SubmittedAt: time.Now().In(time.FixedZone("", 3600))},
		&ImageSubmitted{Meta: NewMeta(TypeImageSubmitted), ModelVersion: "\x00\"\\", Image: ImageRef{Size: 2, Data: []byte{0xff, 0}},
			Catalogued: true, CallbackURL: "\xff"},
		&AnnotationCreated{Meta: NewMeta(TypeAnnotationCreated), ImageID: "i", Annotation: json.RawMessage(" [1, {\"a\":\"\xff\"} ] ")},
	)
	for _, ev := range evs {
		data := must(appendEvent(nil, ev))
		f.Add(data)
		for i, bent := range nonCanonical(string(data)) {
			if i%4 == 0 { // a sample; the fuzzer makes the rest
				f.Add([]byte(bent))
			}
		}
	}
	for _, s := range agreeSeeds(f) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkCanonical(t, "fuzz", data)
	})
}

// BenchmarkDecodeCanonical is what a consumer pays per event of each hot
// type: decodeCanonical alone, Decode (decodeCanonical, then the checks
// and Validate), Decode as it was (goccy/go-json) and encoding/json alone.
//
//	go test -run '^$' -bench DecodeCanonical -benchmem ./bus/
func BenchmarkDecodeCanonical(b *testing.B) {
	for _, ev := range benchEvents() {
		data := must(appendEvent(nil, ev))
		typ := reflect.TypeOf(ev).Elem()
		b.Run(ev.EventMeta().Type+"/canonical", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if !decodeCanonical(data, reflect.New(typ).Interface()) {
					b.Fatal("declined")
				}
			}
		})
		for _, path := range []struct {
			name      string
			unmarshal func([]byte, any) bool
		}{{"Decode", fastUnmarshal}, {"goccy", goccyUnmarshal}, {"encoding-json", stdUnmarshal}} {
			b.Run(ev.EventMeta().Type+"/"+path.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := decode(data, path.unmarshal); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
