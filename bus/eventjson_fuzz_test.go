package bus

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzValidateAnnotation: the validator never panics, never accepts what
// is not a JSON object within the limits, and agrees with encoding/json on
// validity.
func FuzzValidateAnnotation(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":{"b":[1,2,{"c":null}]}}`, `{"a":1,"a":2}`, `{"\u0061":1,"a":2}`,
		`{"a":"\"}"}`, `{"a":[[[[[]]]]]}`, "{\"a\":\"\xff\"}", `{"a":1}}`, `{"a":`, `[]`, `"x"`, `{"a":"\\"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		err := ValidateAnnotation(raw)
		if err != nil {
			return
		}
		if !json.Valid(raw) {
			t.Fatalf("accepted invalid JSON %q", raw)
		}
		var m map[string]any
		if json.Unmarshal(raw, &m) != nil {
			t.Fatalf("accepted a non-object %q", raw)
		}
		if errors.Is(CheckJSON(raw, MaxAnnotationDepth), ErrJSONTooDeep) {
			t.Fatal("inconsistent depth check")
		}
	})
}
