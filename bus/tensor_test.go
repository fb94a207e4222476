package bus_test

import (
	"testing"

	"github.com/gradeline/gradeline/bus"
)

func TestTensorSubmittedValidate(t *testing.T) {
	ok := bus.TensorSubmitted{Owner: "u", Model: "m", Input: "x", Datatype: "FP32", Shape: []int64{2, 1}, Data: make([]byte, 8)}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mut  func(*bus.TensorSubmitted)
	}{
		{"no owner", func(e *bus.TensorSubmitted) { e.Owner = "" }},
		{"no input", func(e *bus.TensorSubmitted) { e.Input = "" }},
		{"other datatype", func(e *bus.TensorSubmitted) { e.Datatype = "FP16" }},
		{"no shape", func(e *bus.TensorSubmitted) { e.Shape = nil }},
		{"zero dimension", func(e *bus.TensorSubmitted) { e.Shape = []int64{0, 2} }},
		{"data shorter than the shape", func(e *bus.TensorSubmitted) { e.Data = e.Data[:4] }},
		{"too large", func(e *bus.TensorSubmitted) {
			e.Shape, e.Data = []int64{bus.MaxTensorBytes/4 + 1}, make([]byte, bus.MaxTensorBytes+4)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ok
			e.Shape = append([]int64(nil), ok.Shape...)
			tc.mut(&e)
			if err := e.Validate(); err == nil {
				t.Fatalf("%+v is valid", e)
			}
		})
	}
}
