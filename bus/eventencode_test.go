package bus

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// checkAppendEvent asserts that AppendJSON (appendEvent for an event) writes exactly json.Marshal's
// bytes for ev, declines exactly where json.Marshal fails, keeps what dst
// held, and that json.Marshal's bytes are what Publish's encoder writes
// today (so switching Publish changes nothing on the wire).
func checkAppendEvent(t *testing.T, name string, ev any) {
	t.Helper()
	want, err := json.Marshal(ev)
	got, ok := AppendJSON(nil, ev)
	switch {
	case err != nil && ok:
		t.Errorf("%s: appendEvent wrote %s, json.Marshal fails: %v", name, got, err)
		return
	case err != nil:
		if got != nil {
			t.Errorf("%s: declined but returned %q", name, got)
		}
		// The fallback fails the same way.
		var buf bytes.Buffer
		if json.NewEncoder(&buf).Encode(ev) == nil {
			t.Errorf("%s: json.Marshal fails but json.Encoder does not", name)
		}
	case !ok:
		t.Errorf("%s: declined; json.Marshal writes %s", name, want)
		return
	case !bytes.Equal(got, want):
		t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		return
	default:
		var buf bytes.Buffer
		if err := json.NewEncoder(&buf).Encode(ev); err != nil || !bytes.Equal(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), want) {
			t.Errorf("%s: json.Encoder writes %q (%v), json.Marshal %q", name, buf.Bytes(), err, want)
		}
	}

	// Appending after bytes already in dst keeps them, and a refusal
	// leaves dst as it was.
	prefix := make([]byte, 3, 8)
	copy(prefix, "abc")
	got2, ok2 := AppendJSON(prefix, ev)
	if ok2 != ok || string(got2[:3]) != "abc" {
		t.Errorf("%s: after a prefix: ok %v, %q", name, ok2, got2)
	}
	if ok && !bytes.Equal(got2[3:], want) {
		t.Errorf("%s: after a prefix:\n got %s\nwant %s", name, got2[3:], want)
	}
	if !ok && len(got2) != 3 {
		t.Errorf("%s: declined but returned %q", name, got2)
	}
}

var encodeStrings = []string{
	"",
	"plain",
	"0190a4c2-7f3e-7b6a-9c1d-2e4f6a8b0c1d",
	"<script>alert('x') && 1 > 0</script>",
	"quote \" backslash \\ slash / done",
	"\x00\x01\x07\b\f\n\r\t\v\x1b\x1f\x20\x7f",
	"héllo wörld ✓ 日本語 🙂 ∑",
	"line\u2028separator\u2029paragraph",
	"\xe2\x80\xa8\xe2\x80\xa9\xe2\x80\xaa",
	"bad \xff\xfe utf8",
	"truncated \xc3",
	"surrogate \xed\xa0\x80 half",
	"short \xe2\x80",
	"beyond \xf4\x90\x80\x80 max",
	"overlong \xc0\xaf",
	"\ufffd replacement itself",
	"T-shirt/top",
	"https://example.com/cb?a=1&b=<2>",
	strings.Repeat("long string with <html> & \"quotes\" ", 40),
}

var encodeFloats = []float64{
	0, math.Copysign(0, -1), 1, -1, 42, -7, 0.93, 1.0 / 3, 3.217,
	1e20, 1e21, -1e21, 999999999999999900000, 1e21 - 65536, 1.5e300,
	1e-6, -1e-6, 1e-7, -1e-7, 9.99e-7, 1.0000000000000002e-6, 0.000001234,
	123456789e-15, 1e100, 1e-100, 1e-10, 5e-324, math.SmallestNonzeroFloat64,
	math.MaxFloat64, -math.MaxFloat64, float64(1 << 53), float64(1<<53) + 2,
	math.NaN(), math.Inf(1), math.Inf(-1),
}

func encodeTimes(t *testing.T) []time.Time {
	ts := []time.Time{
		{},
		time.Unix(0, 0).UTC(),
		time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC),
		time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC),
		time.Date(2025, 3, 14, 15, 9, 26, 120000000, time.UTC),
		time.Date(2025, 3, 14, 15, 9, 26, 1, time.UTC),
		time.Date(2025, 3, 14, 15, 9, 26, 999999999, time.UTC),
		time.Date(2025, 3, 14, 15, 9, 26, 5e8, time.FixedZone("IST", 5*3600+1800)),
		time.Date(2025, 3, 14, 15, 9, 26, 0, time.FixedZone("PST", -8*3600)),
		time.Date(2025, 3, 14, 15, 9, 26, 7, time.FixedZone("", 3661)),
		time.Date(2025, 3, 14, 15, 9, 26, 0, time.FixedZone("", 59)),
		time.Date(2025, 3, 14, 15, 9, 26, 0, time.FixedZone("", -(23*3600+59*60))),
		time.Date(2025, 3, 14, 15, 9, 26, 0, time.FixedZone("", 24*3600)),   // zone hour 24: refused
		time.Date(2025, 3, 14, 15, 9, 26, 0, time.FixedZone("", -100*3600)), // 3-digit hour: refused
		time.Date(2025, 3, 14, 15, 9, 26, 0, time.FixedZone("zero", 0)),     // named, offset 0: Z
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),                            // year 0
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),            // last
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),                        // refused
		time.Date(-1, 12, 31, 0, 0, 0, 0, time.UTC),                         // refused
		time.Date(9999, 12, 31, 23, 0, 0, 0, time.FixedZone("", -2*3600)),   // 10000 in UTC, 9999 here
		time.Date(1, 1, 1, 0, 0, 0, 0, time.FixedZone("", -3600)),           // an hour after the zero instant
		time.Time{}.In(time.FixedZone("", -5*3600)),                         // zero instant, year 0 shown
		time.Time{}.In(time.FixedZone("", 5*3600)),                          // zero instant with a zone
		time.Now(), // monotonic reading
		time.Now().In(time.FixedZone("", 2*3600)),  // local-ish
		time.Unix(1<<40, 0).UTC(),                  // far future: refused
		time.Unix(-62135596800-86400*366, 0).UTC(), // before year 1
	}
	if loc, err := time.LoadLocation("America/New_York"); err == nil {
		ts = append(ts, time.Date(2025, 7, 1, 12, 0, 0, 0, loc), time.Date(2025, 1, 1, 12, 0, 0, 0, loc))
	} else {
		t.Logf("no tz database: %v", err)
	}
	return ts
}

var encodeRaws = []json.RawMessage{
	nil,
	{},
	json.RawMessage(`{}`),
	json.RawMessage(`null`),
	json.RawMessage(`true`),
	json.RawMessage(`"str"`),
	json.RawMessage(`-1.5e+10`),
	json.RawMessage(`[1, 2 ,3]`),
	json.RawMessage("  { \"a\" : [ 1 , 2 ] ,\n\t\"b\" :\r\n {} }\n"),
	json.RawMessage(`{"s":"<b>&amp;</b>"}`),
	json.RawMessage("{\"s\":\"sep \u2028 and \u2029 kept raw\"}"),
	json.RawMessage(`{"s":"escaped \" quote \\ back \u003c \u2028 \/ \n"}`),
	json.RawMessage(`{"s":"\\"}`),
	json.RawMessage(`{"s":"\\\"", "t" : "x"}`),
	json.RawMessage("{\"s\":\"bad \xff utf8 \xe2\x80\"}"),
	json.RawMessage("{\"k \xe2\x80\xa9\":\"spaces inside  strings stay\"}"),
	json.RawMessage(`{"label":"cat","box":[12,40,128,96],"confidence":0.93,"notes":"left ear partly hidden","by":"xxxxxxxx"}`),
	json.RawMessage(strings.Repeat("[", 10000) + strings.Repeat("]", 10000)),
	// refused by json.Marshal
	json.RawMessage(strings.Repeat("[", 10001) + strings.Repeat("]", 10001)),
	json.RawMessage(`   `),
	json.RawMessage(`{`),
	json.RawMessage(`{"a":}`),
	json.RawMessage(`nul`),
	json.RawMessage(`{"a":1}x`),
	json.RawMessage(`{"a":1} {}`),
	json.RawMessage("\"ctl \x01\""),
	json.RawMessage(`{'a':1}`),
	json.RawMessage(`01`),
	json.RawMessage(`"\x"`),
	json.RawMessage("<>"),
}

var fashionLabels = []string{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}

func encodeScores() []map[string]float64 {
	ten := map[string]float64{}
	for i, l := range fashionLabels {
		ten[l] = float64(i) / 37
	}
	many := map[string]float64{}
	for i := range 40 {
		many[fmt.Sprintf("class-%02d", 39-i)] = float64(i) * 1e-7
	}
	return []map[string]float64{
		nil,
		{},
		{"cat": 1},
		ten,
		many,
		{"<b>": 0.5, "&": 0.25, "ü": 1, "\x00": 2, "\xff": 3, "\xfe": 4, "\u2028": 5, "": 6, "a\"b": 7, "B": 8, "a": 9},
		{"ok": 1, "bad": math.NaN()},
		{"inf": math.Inf(1)},
	}
}

func encodeMeta(typ, s string, tm time.Time) Meta {
	return Meta{ID: s, Type: typ, SchemaVersion: 1, Time: tm}
}

func TestAppendEventMatchesMarshal(t *testing.T) {
	now := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	img := bytes.Repeat([]byte{0x89, 'P', 'N', 'G', 0, 0xff, '<', '>'}, 40)

	// Every string field set to each sample.
	for i, s := range encodeStrings {
		m := encodeMeta(s, s, now)
		checkAppendEvent(t, fmt.Sprintf("strings[%d] grade.completed", i), &GradeCompleted{Meta: m, GradeID: s, ImageID: s, Owner: s,
			Model: s, ModelVersion: s, Label: s, Score: 0.5, Scores: map[string]float64{s: 0.5, s + "x": 0.1}, CallbackURL: s, SubmittedAt: now})
		checkAppendEvent(t, fmt.Sprintf("strings[%d] grade.failed", i), &GradeFailed{Meta: m, GradeID: s, ImageID: s, Owner: s,
			Model: s, Reason: s, CallbackURL: s, SubmittedAt: now})
		checkAppendEvent(t, fmt.Sprintf("strings[%d] grade.pending", i), &GradePending{Meta: m, GradeID: s, ImageID: s, Owner: s,
			Model: s, ModelVersion: s, SubmittedAt: now})
		checkAppendEvent(t, fmt.Sprintf("strings[%d] image.submitted", i), &ImageSubmitted{Meta: m, ImageID: s, Owner: s, Model: s,
			ModelVersion: s, Image: ImageRef{Object: s, SHA256: s, ContentType: s, Size: 3, Data: []byte(s)}, CallbackURL: s})
		checkAppendEvent(t, fmt.Sprintf("strings[%d] annotation.created", i), &AnnotationCreated{Meta: m, ImageID: s, Author: s,
			Annotation: json.RawMessage(`{"a":1}`)})
	}

	// Floats in every float field and as a score.
	for i, f := range encodeFloats {
		checkAppendEvent(t, fmt.Sprintf("floats[%d] %g score", i, f), &GradeCompleted{Meta: encodeMeta(TypeGradeCompleted, "id", now),
			Score: f, Scores: map[string]float64{"x": 0.5}})
		checkAppendEvent(t, fmt.Sprintf("floats[%d] %g inference_ms", i, f), &GradeCompleted{Meta: encodeMeta(TypeGradeCompleted, "id", now),
			InferenceMS: f})
		checkAppendEvent(t, fmt.Sprintf("floats[%d] %g scores", i, f), &GradeCompleted{Meta: encodeMeta(TypeGradeCompleted, "id", now),
			Scores: map[string]float64{"a": 1, "b": f}})
	}

	// Times in Meta and in submitted_at (omitzero in two types, not in
	// GradePending).
	for i, tm := range encodeTimes(t) {
		name := fmt.Sprintf("times[%d] %s", i, tm.Format(time.RFC3339Nano))
		m := encodeMeta("type", "id", tm)
		checkAppendEvent(t, name+" meta", &GradeFailed{Meta: m})
		checkAppendEvent(t, name+" grade.completed", &GradeCompleted{Meta: encodeMeta("t", "id", now), SubmittedAt: tm})
		checkAppendEvent(t, name+" grade.failed", &GradeFailed{Meta: encodeMeta("t", "id", now), SubmittedAt: tm})
		checkAppendEvent(t, name+" grade.pending", &GradePending{Meta: encodeMeta("t", "id", now), SubmittedAt: tm})
		checkAppendEvent(t, name+" image.submitted", &ImageSubmitted{Meta: m})
		checkAppendEvent(t, name+" annotation.created", &AnnotationCreated{Meta: m, Annotation: json.RawMessage(`{}`)})
	}

	for i, raw := range encodeRaws {
		name := fmt.Sprintf("raws[%d] %.40q", i, raw)
		checkAppendEvent(t, name, &AnnotationCreated{Meta: encodeMeta(TypeAnnotationCreated, "id", now), Author: "ann", Annotation: raw})
		checkAppendEvent(t, name+" with image", &AnnotationCreated{Meta: encodeMeta(TypeAnnotationCreated, "id", now), ImageID: "img", Author: "ann", Annotation: raw})
	}

	for i, sc := range encodeScores() {
		checkAppendEvent(t, fmt.Sprintf("scores[%d] len %d", i, len(sc)), &GradeCompleted{Meta: encodeMeta(TypeGradeCompleted, "id", now),
			Label: "cat", Scores: sc})
	}

	// Image data: nil and empty are omitted; base64 padding of 0, 1 and 2.
	for _, data := range [][]byte{nil, {}, {0}, {0, 1}, {0, 1, 2}, {0xff, 0xfe, 0xfd, 0xfc}, img} {
		checkAppendEvent(t, fmt.Sprintf("data of %d", len(data)), &ImageSubmitted{Meta: encodeMeta(TypeImageSubmitted, "id", now),
			ImageID: "i", Owner: "o", Model: "m", Image: ImageRef{Object: "o", Size: int64(len(data)), Data: data}})
	}

	// Every omitempty and omitzero, set and unset; integers at their ends.
	for _, set := range []bool{false, true} {
		var (
			s  string
			tm time.Time
		)
		if set {
			s, tm = "set", now
		}
		checkAppendEvent(t, fmt.Sprintf("optional %v grade.completed", set), &GradeCompleted{Meta: encodeMeta(TypeGradeCompleted, "id", now),
			Catalogued: set, CallbackURL: s, SubmittedAt: tm, BatchSize: math.MinInt})
		checkAppendEvent(t, fmt.Sprintf("optional %v grade.failed", set), &GradeFailed{Meta: encodeMeta(TypeGradeFailed, "id", now),
			CallbackURL: s, SubmittedAt: tm})
		checkAppendEvent(t, fmt.Sprintf("optional %v grade.pending", set), &GradePending{Meta: encodeMeta(TypeGradePending, "id", now),
			ModelVersion: s, SubmittedAt: tm})
		checkAppendEvent(t, fmt.Sprintf("optional %v image.submitted", set), &ImageSubmitted{Meta: encodeMeta(TypeImageSubmitted, "id", now),
			ModelVersion: s, Catalogued: set, CallbackURL: s, Image: ImageRef{Size: math.MaxInt64}})
		checkAppendEvent(t, fmt.Sprintf("optional %v annotation.created", set), &AnnotationCreated{Meta: encodeMeta(TypeAnnotationCreated, "id", now),
			ImageID: s, Annotation: json.RawMessage(`{}`)})
	}
	checkAppendEvent(t, "schema_version", &GradeFailed{Meta: Meta{SchemaVersion: math.MaxInt}})
	checkAppendEvent(t, "negative schema_version", &GradeFailed{Meta: Meta{SchemaVersion: -3}})

	// Zero values and nil pointers of each type.
	for _, ev := range []Event{&GradeCompleted{}, &GradeFailed{}, &GradePending{}, &ImageSubmitted{}, &AnnotationCreated{},
		(*GradeCompleted)(nil), (*GradeFailed)(nil), (*GradePending)(nil), (*ImageSubmitted)(nil), (*AnnotationCreated)(nil)} {
		checkAppendEvent(t, fmt.Sprintf("zero %T", ev), ev)
	}

	// The events the services publish, and the benchmarks' ones.
	sub := &ImageSubmitted{Meta: NewMeta(TypeImageSubmitted), ImageID: NewID(), Owner: "alice", Model: "fashion-mnist",
		Image: ImageRef{Object: "sha256/ab", SHA256: strings.Repeat("ab", 32), ContentType: "image/png", Size: int64(len(img)), Data: img}}
	checkAppendEvent(t, "submitted", sub)
	checkAppendEvent(t, "pending", PendingOf(sub))
	for _, ev := range benchEvents() {
		checkAppendEvent(t, "bench "+ev.EventMeta().Type, ev)
	}
}

// TestAppendJSONGrade: the edge's answer to a grade, by value and by
// pointer, with each optional field set and unset, matches json.Marshal;
// a grade with callback attempts and values of other types are declined.
func TestAppendJSONGrade(t *testing.T) {
	now := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	full := Grade{ID: "g1", Status: GradeStatusCompleted, ImageID: "i1", Owner: "alice", Model: "fashion",
		ModelVersion: "2", Label: "Ankle boot", Score: 0.93, Scores: map[string]float64{"Ankle boot": 0.93, "Bag": 0.07},
		InferenceMS: 0.41, BatchSize: 32, Reason: "r", SubmittedAt: now, CompletedAt: now.Add(time.Millisecond), Catalogued: true}
	cases := map[string]Grade{
		"zero":              {},
		"full":              full,
		"pending":           {ID: "g", Status: GradeStatusPending, ImageID: "i", Owner: "o", Model: "m", SubmittedAt: now},
		"failed":            {ID: "g", Status: GradeStatusFailed, Model: "m", Reason: "bad <image> & \u2028\x00", CompletedAt: now},
		"empty scores":      {Scores: map[string]float64{}},
		"negative score":    {Score: -1e-7, InferenceMS: 1e21, BatchSize: -1},
		"zoned times":       {SubmittedAt: now.In(time.FixedZone("x", 19800)), CompletedAt: now.In(time.FixedZone("y", -3600))},
		"nan score":         {Score: math.NaN()},
		"inf in scores":     {Scores: map[string]float64{"a": math.Inf(1)}},
		"year beyond 9999":  {CompletedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		"html in every key": {ID: "<", Status: ">", ImageID: "&", Owner: "\u2029", Model: "\xff", Label: "\"", ModelVersion: "\n"},
	}
	for name, g := range cases {
		checkAppendEvent(t, name, g)
		checkAppendEvent(t, name+" pointer", &g)
	}
	checkAppendEvent(t, "nil pointer", (*Grade)(nil))

	for _, v := range []any{
		Grade{ID: "g", Callbacks: []CallbackAttempt{{Attempt: 1, At: now, URL: "https://x", Outcome: "delivered"}}},
		List[Grade]{}, "text", 1, nil,
	} {
		if got, ok := AppendJSON([]byte("p"), v); ok || string(got) != "p" {
			t.Errorf("%T: ok %v, %q", v, ok, got)
		}
	}
}

func TestAppendEventDeclinesOtherTypes(t *testing.T) {
	for _, ev := range []Event{
		&IrisMeasured{Meta: NewMeta(TypeIrisMeasured), Rows: []IrisRow{{SepalLength: 5.1, Species: "setosa"}}},
		&AnnotationUpdated{Meta: NewMeta(TypeAnnotationUpdated), Annotation: json.RawMessage(`{}`)},
		&DeadLetter{Meta: NewMeta(TypeDeadLetter)},
		&ImageCatalogued{},
		&TensorSubmitted{},
		nil,
	} {
		dst := []byte("prefix")
		got, ok := appendEvent(dst, ev)
		if ok || string(got) != "prefix" || len(got) != len(dst) {
			t.Errorf("%T: ok %v, %q", ev, ok, got)
		}
	}
}

// TestAppendEventDoesNotAllocate: with room in dst, encoding is free of
// allocations.
func TestAppendEventDoesNotAllocate(t *testing.T) {
	dst := make([]byte, 0, 8<<10)
	for _, ev := range benchEvents() {
		allocs := testing.AllocsPerRun(100, func() {
			if _, ok := appendEvent(dst[:0], ev); !ok {
				t.Fatal("declined")
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations", ev.EventMeta().Type, allocs)
		}
	}
}

// benchEvents are typical events of the hot types: a grade with the ten
// Fashion-MNIST scores, a submission with a 300-byte inline image and an
// annotation of 140 bytes.
func benchEvents() []Event {
	at := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	meta := func(typ string) Meta {
		return Meta{ID: "0195962a-1f3e-7b6a-9c1d-2e4f6a8b0c1d", Type: typ, SchemaVersion: 1, Time: at}
	}
	scores := map[string]float64{}
	for i, l := range fashionLabels {
		scores[l] = 0.0123456789 * float64(i+1)
	}
	img := make([]byte, 300)
	for i := range img {
		img[i] = byte(i * 7)
	}
	ann := json.RawMessage(`{"label":"cat","box":[12,40,128,96],"confidence":0.93,"notes":"left ear partly hidden behind the sofa cushion","by":"xxxxxxxx"}`)
	for len(ann) < 140 {
		ann = append(ann[:len(ann)-2:len(ann)-2], 'x', '"', '}')
	}
	return []Event{
		&GradeCompleted{Meta: meta(TypeGradeCompleted), GradeID: "0195962a-1f3e-7b6a-9c1d-2e4f6a8b0c1e", ImageID: "0195962a-1f3e-7b6a-9c1d-2e4f6a8b0c1f",
			Owner: "alice", Model: "fashion-mnist", ModelVersion: "3", Label: "Ankle boot", Score: 0.123456789, Scores: scores,
			InferenceMS: 3.217, BatchSize: 8, SubmittedAt: at.Add(-40 * time.Millisecond)},
		&ImageSubmitted{Meta: meta(TypeImageSubmitted), ImageID: "0195962a-1f3e-7b6a-9c1d-2e4f6a8b0c1f", Owner: "alice", Model: "fashion-mnist",
			Image: ImageRef{Object: "images/0195962a-1f3e-7b6a-9c1d-2e4f6a8b0c1f", SHA256: strings.Repeat("5e", 32), ContentType: "image/png",
				Size: int64(len(img)), Data: img}},
		&AnnotationCreated{Meta: meta(TypeAnnotationCreated), ImageID: "0195962a-1f3e-7b6a-9c1d-2e4f6a8b0c1f", Author: "alice", Annotation: ann},
	}
}

// BenchmarkEncodeJSONEvent is how Publish encodes an event today.
func BenchmarkEncodeJSONEvent(b *testing.B) {
	for _, ev := range benchEvents() {
		b.Run(ev.EventMeta().Type, func(b *testing.B) {
			var buf bytes.Buffer
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				if err := json.NewEncoder(&buf).Encode(ev); err != nil {
					b.Fatal(err)
				}
				_ = bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
			}
		})
	}
}

// BenchmarkAppendEvent is appendEvent into a reused buffer.
func BenchmarkAppendEvent(b *testing.B) {
	for _, ev := range benchEvents() {
		b.Run(ev.EventMeta().Type, func(b *testing.B) {
			var dst []byte
			b.ReportAllocs()
			for b.Loop() {
				var ok bool
				if dst, ok = appendEvent(dst[:0], ev); !ok {
					b.Fatal("declined")
				}
			}
		})
	}
}

func TestAppendBase64MatchesStdEncoding(t *testing.T) {
	src := make([]byte, 200)
	for i := range src {
		src[i] = byte(i*131 + i>>3)
	}
	for n := 0; n <= len(src); n++ {
		for _, dst := range [][]byte{nil, []byte("xy"), make([]byte, 1, 1000)} {
			want := base64.StdEncoding.AppendEncode(slices.Clone(dst), src[:n])
			if got := appendBase64(slices.Clone(dst), src[:n]); !bytes.Equal(got, want) {
				t.Fatalf("%d bytes after %q:\n got %s\nwant %s", n, dst, got, want)
			}
		}
	}
}

// TestSpecial8 checks the word-at-a-time tests against the byte tables:
// a word is passed over only when no byte needs a look, and otherwise the
// lowest flagged byte is the first that does. Every pair of byte values
// is tried at every pair of positions, amid plain bytes.
func TestSpecial8(t *testing.T) {
	stringNeeds := func(c byte) bool { return c >= utf8.RuneSelf || !jsonPlain[c] }
	rawNeeds := func(c byte) bool {
		return c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&'
	}
	for _, tc := range []struct {
		name  string
		f     func(uint64) uint64
		needs func(byte) bool
	}{{"stringSpecial8", stringSpecial8, stringNeeds}, {"rawSpecial8", rawSpecial8, rawNeeds}} {
		for p := 0; p < 8; p++ {
			for q := p; q < 8; q++ {
				for x := 0; x < 256; x++ {
					for y := 0; y < 256; y++ {
						w := []byte("a0Z ~/\x7fz")
						w[p], w[q] = byte(x), byte(y)
						want := 8
						for i, c := range w {
							if tc.needs(c) {
								want = i
								break
							}
						}
						got := 8
						if m := tc.f(load8(w, 0)); m != 0 {
							got = bits.TrailingZeros64(m) >> 3
						}
						if got != want {
							t.Fatalf("%s(%q): first flagged byte %d, want %d", tc.name, w, got, want)
						}
					}
				}
			}
		}
	}
}
