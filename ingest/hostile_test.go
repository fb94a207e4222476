package ingest_test

import (
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

// deepJSON nests n objects: {"a":{"a":...{}...}}.
func deepJSON(n int) string {
	return strings.Repeat(`{"a":`, n-1) + "{}" + strings.Repeat("}", n-1)
}

// Annotations are bounded by one rule (bus.ValidateAnnotation): depth,
// size, duplicate keys, UTF-8; the edge answers with the limit named.
func TestAnnotationBounds(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	for _, tc := range []struct {
		name   string
		body   string
		ct     string
		status int
		detail string
	}{
		{"depth 64 accepted", `{"annotation":` + deepJSON(bus.MaxAnnotationDepth) + `}`, "", 202, ""},
		{"depth 65", `{"annotation":` + deepJSON(bus.MaxAnnotationDepth+1) + `}`, "", 422, "deeper than 64 levels"},
		{"depth 10000", `{"annotation":` + deepJSON(10_000) + `}`, "", 422, "deeper than 64 levels"},
		{"depth 10000 of arrays", `{"annotation":{"a":` + strings.Repeat("[", 10_000) + strings.Repeat("]", 10_000) + `}}`, "", 422, "deeper than 64 levels"},
		{"duplicate key in the annotation", `{"annotation":{"label":"cat","label":"dog"}}`, "", 422, `duplicate key "label"`},
		{"duplicate escaped key", `{"annotation":{"label":"cat","\u006cabel":"dog"}}`, "", 422, `duplicate key "label"`},
		{"duplicate key in the body", `{"annotation":{"a":1},"annotation":{"b":2}}`, "", 422, `duplicate key "annotation"`},
		{"same key in sibling objects is fine", `{"annotation":{"a":{"x":1},"b":{"x":2}}}`, "", 202, ""},
		{"invalid UTF-8", "{\"annotation\":{\"a\":\"\xff\xfe\"}}", "", 400, "UTF-8"},
		{"charset utf-16", `{"annotation":{"a":1}}`, "application/json; charset=utf-16", 415, "UTF-8"},
		{"charset latin1", `{"annotation":{"a":1}}`, "application/json;charset=ISO-8859-1", 415, "UTF-8"},
		{"charset utf-8 accepted", `{"annotation":{"a":1}}`, "application/json; charset=UTF-8", 202, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct := tc.ct
			if ct == "" {
				ct = "application/json"
			}
			r := c.do("POST", "/api/v1/annotations", strings.NewReader(tc.body), map[string]string{"Content-Type": ct})
			if tc.status == 202 {
				if r.Status != 202 {
					t.Fatalf("status %d: %s", r.Status, truncate(r.Body))
				}
				return
			}
			got := expectError(t, r, tc.status)
			if !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
	// Other JSON bodies follow the same rules.
	r := c.do("PUT", "/api/v1/images/x/tags", strings.NewReader(`{"tags":["a"],"tags":["b"]}`), map[string]string{"Content-Type": "application/json"})
	expectError(t, r, 422)
	r = c.do("POST", "/api/v1/auth/login", strings.NewReader(`{"username":"a","password":"b"}`), map[string]string{"Content-Type": "application/json; charset=utf-16"})
	expectError(t, r, 415)
	r = c.do("POST", "/api/v1/iris/range", strings.NewReader(deepJSON(10_000)), map[string]string{"Content-Type": "application/json"})
	expectError(t, r, 422)
}
