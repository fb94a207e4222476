package bus_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

func TestParseStructure(t *testing.T) {
	for _, tc := range []struct {
		name, ann string
		labels    []string
		problems  []string // each a substring of one detail, in order
	}{
		{"free-form", `{"note":"blurry","box":[1,2,3,4]}`, nil, nil},
		{"image label", `{"label":"cat"}`, []string{"cat"}, nil},
		{"boxes", `{"label":"pets","boxes":[{"label":"cat","x":0,"y":1.5,"width":30,"height":40},{"label":"dog","x":5,"y":5,"width":1,"height":1}]}`, []string{"pets", "cat", "dog"}, nil},
		{"null fields", `{"label":null,"boxes":null}`, nil, nil},
		{"score and from_grade of any type", `{"score":"high","from_grade":7}`, nil, nil},
		{"label not a string", `{"label":5}`, nil, []string{"annotation.label"}},
		{"empty label", `{"label":""}`, nil, []string{"annotation.label"}},
		{"long label", `{"label":"` + strings.Repeat("a", bus.MaxLabelLen+1) + `"}`, nil, []string{"annotation.label"}},
		{"boxes not a list", `{"boxes":{"x":1}}`, nil, []string{"annotation.boxes: a list"}},
		{"box not an object", `{"boxes":[null]}`, nil, []string{"boxes[0]: an object"}},
		{"box missing fields", `{"boxes":[{"label":"cat"}]}`, nil, []string{"boxes[0].x", "boxes[0].y", "boxes[0].width", "boxes[0].height"}},
		{"negative corner", `{"boxes":[{"label":"cat","x":-1,"y":0,"width":1,"height":1}]}`, nil, []string{"boxes[0].x: must be >= 0"}},
		{"zero size", `{"boxes":[{"label":"cat","x":0,"y":0,"width":0,"height":1}]}`, nil, []string{"boxes[0].width: must be > 0"}},
		{"string number", `{"boxes":[{"label":"cat","x":"1","y":0,"width":1,"height":1}]}`, nil, []string{"boxes[0].x: a number"}},
		{"box label missing", `{"boxes":[{"x":0,"y":0,"width":1,"height":1}]}`, nil, []string{"boxes[0].label"}},
		{"too many boxes", `{"boxes":[` + strings.Repeat(`{"label":"a","x":0,"y":0,"width":1,"height":1},`, bus.MaxBoxes) + `{"label":"a","x":0,"y":0,"width":1,"height":1}]}`, nil, []string{"at most 1000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, details := bus.ParseStructure(json.RawMessage(tc.ann))
			if len(details) != len(tc.problems) {
				t.Fatalf("details %q, want %d like %q", details, len(tc.problems), tc.problems)
			}
			for i, p := range tc.problems {
				if !strings.Contains(details[i], p) {
					t.Fatalf("detail %d %q lacks %q", i, details[i], p)
				}
			}
			if len(tc.problems) == 0 && strings.Join(st.Labels(), ",") != strings.Join(tc.labels, ",") {
				t.Fatalf("labels %q, want %q", st.Labels(), tc.labels)
			}
		})
	}
}

func TestStructureOutside(t *testing.T) {
	st, _ := bus.ParseStructure(json.RawMessage(`{"boxes":[{"label":"in","x":0,"y":0,"width":28,"height":28},{"label":"out","x":20,"y":0,"width":9,"height":1}]}`))
	out := st.Outside(28, 28)
	if len(out) != 1 || !strings.Contains(out[0], "boxes[1]") {
		t.Fatalf("outside %q, want boxes[1] only", out)
	}
}
