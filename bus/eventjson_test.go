package bus

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateAnnotation(t *testing.T) {
	deep := func(n int) string { return strings.Repeat(`{"a":`, n-1) + "{}" + strings.Repeat("}", n-1) }
	for _, tc := range []struct {
		name string
		raw  string
		want error
	}{
		{"plain", `{"label":"cat","box":[1,2,3,4]}`, nil},
		{"depth 64", deep(MaxAnnotationDepth), nil},
		{"depth 65", deep(MaxAnnotationDepth + 1), ErrJSONTooDeep},
		{"depth 10000", deep(10_000), ErrJSONTooDeep},
		{"arrays count as levels", `{"a":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`, ErrJSONTooDeep},
		{"duplicate key", `{"a":1,"b":2,"a":3}`, ErrJSONDuplicateKey},
		{"duplicate key escaped", `{"a":1,"\u0061":3}`, ErrJSONDuplicateKey},
		{"duplicate key in a wide object", `{` + wide(40) + `,"k7a":0}`, ErrJSONDuplicateKey},
		{"wide object without duplicates", `{` + wide(40) + `}`, nil},
		{"keys equal to values elsewhere", `{"a":"b","b":"a","c":{"a":"a"}}`, nil},
		{"string with braces and quotes", `{"a":"{\"a\":1,\"a\":2}","b":"]]]"}`, nil},
		{"not an object", `[1]`, ErrJSONNotObject},
		{"empty", ``, ErrJSONNotObject},
		{"too large", `{"a":"` + strings.Repeat("x", MaxAnnotationBytes) + `"}`, ErrJSONTooLarge},
		{"invalid UTF-8", "{\"a\":\"\xc3\x28\"}", ErrJSONNotUTF8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateAnnotation([]byte(tc.raw))
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
	// The consumer side applies the same rule: an event breaking it is poison.
	ev := &AnnotationCreated{Meta: NewMeta(TypeAnnotationCreated), Author: "ada", Annotation: []byte(deep(65))}
	if err := ev.Validate(); !errors.Is(err, ErrJSONTooDeep) {
		t.Fatalf("Validate: %v", err)
	}
}

func wide(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"k` + string(rune('0'+i%10)) + string(rune('a'+i/10)) + `":0`)
	}
	return b.String()
}
