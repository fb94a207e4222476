package bus

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestPeekType(t *testing.T) {
	cases := []struct {
		name, data, want string
		ok               bool
	}{
		{"first member", `{"type":"annotation.created","id":"x"}`, "annotation.created", true},
		{"after nested values", `{"id":"a,}\"b","n":[1,{"type":"no"}],"o":{"k":"]"},"x":-1.5e3,"t":true,"type":"grade.completed"}`, "grade.completed", true},
		{"spaces", " \n{ \"id\" : 1 ,\t\"type\" :\r\"iris.measured\" } ", "iris.measured", true},
		{"no type", `{"id":"x","n":1}`, "", false},
		{"escaped value", `{"type":"annotation\u002ecreated"}`, "", false},
		{"escaped key", `{"typ\u0065":"annotation.created"}`, "", false},
		{"other case", `{"TYPE":"annotation.created"}`, "", false},
		{"type not a string", `{"type":7}`, "", false},
		{"array", `["type","x"]`, "", false},
		{"empty", ``, "", false},
		{"unterminated", `{"id":"x`, "", false},
		{"truncated after key", `{"type"`, "", false},
		{"garbage", `{"a" 1, "type":"x"}`, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := peekType([]byte(tc.data))
			if got != tc.want || ok != tc.ok {
				t.Fatalf("peekType(%s) = %q, %v; want %q, %v", tc.data, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestPeekGradeID reads a result's grade id where the text is plain and
// gives up otherwise; a real result's id always reads.
func TestPeekGradeID(t *testing.T) {
	res, err := json.Marshal(&GradeCompleted{Meta: NewMeta(TypeGradeCompleted), GradeID: "01a2-g", ImageID: "img",
		Model: "m", Label: "Bag", Scores: map[string]float64{"Bag": 1, "grade_id": 2}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, data, want string
		ok               bool
	}{
		{"published result", string(res), "01a2-g", true},
		{"nested member of that name", `{"scores":{"grade_id":"no"},"grade_id":"yes"}`, "yes", true},
		{"none", `{"type":"grade.completed"}`, "", false},
		{"escaped", `{"grade_id":"a\u0062"}`, "", false},
		{"not a string", `{"grade_id":1}`, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := PeekGradeID([]byte(tc.data))
			if got != tc.want || ok != tc.ok {
				t.Fatalf("PeekGradeID(%s) = %q, %v; want %q, %v", tc.data, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestDecodeOnePassAgreesWithTheCarefulPath: the fast path never decides
// differently from the member-by-member reading encoding/json does.
func TestDecodeOnePassAgreesWithTheCarefulPath(t *testing.T) {
	ev := &AnnotationCreated{Meta: NewMeta(TypeAnnotationCreated), Author: "ann", Annotation: json.RawMessage(`{"label":"cat"}`)}
	good, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.TrimSuffix(string(good), "}")
	cases := []struct {
		name, data string
		poison     string // "" for a valid event
	}{
		{"as published", string(good), ""},
		{"type again, last wins", body + `,"type":"no.such"}`, "unknown event type"},
		{"type again in other case, last wins", body + `,"Type":"no.such"}`, "unknown event type"},
		{"other schema version", body + `,"schema_version":99}`, "unsupported schema version"},
		{"no id", strings.Replace(string(good), `"id":"`+ev.ID+`"`, `"id":""`, 1), "without id"},
		{"invalid annotation", strings.Replace(string(good), `{"label":"cat"}`, `[1]`, 1), "invalid annotation.created"},
		{"payload of the wrong shape", body + `,"author":7}`, "payload"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode([]byte(tc.data))
			if tc.poison == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				a, ok := got.(*AnnotationCreated)
				if !ok || a.ID != ev.ID || a.Author != "ann" || string(a.Annotation) != `{"label":"cat"}` {
					t.Fatalf("Decode = %#v", got)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrPoison) || !strings.Contains(err.Error(), tc.poison) {
				t.Fatalf("Decode error %v; want poison naming %q", err, tc.poison)
			}
		})
	}
}
