package bus_test

import (
	"encoding/json"
	"strings"
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

// A row over MaxTensorBytes travels in the image bucket: the event holds
// its object's name, digest and size, which must match the shape.
func TestTensorSubmittedObject(t *testing.T) {
	const side = 512 // 3x512x512 FP32: 3 MiB, far over MaxTensorBytes
	size := int64(4 * 3 * side * side)
	ref := bus.ImageRef{Object: "tensors/x", SHA256: strings.Repeat("a", 64), ContentType: "application/octet-stream", Size: size}
	ok := bus.TensorSubmitted{Owner: "u", Model: "m", Input: "x", Datatype: "FP32", Shape: []int64{3, side, side}, Object: ref}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		mut        func(*bus.TensorSubmitted)
	}{
		{"data and object", "both", func(e *bus.TensorSubmitted) { e.Data = make([]byte, size) }},
		{"no digest", "sha256", func(e *bus.TensorSubmitted) { e.Object.SHA256 = "" }},
		{"no name", "object", func(e *bus.TensorSubmitted) { e.Object.Object = "" }},
		{"size off the shape", "needs", func(e *bus.TensorSubmitted) { e.Object.Size = size - 4 }},
		{"bytes inline", "bucket", func(e *bus.TensorSubmitted) { e.Object.Data = make([]byte, 8); e.Object.Size = 8; e.Shape = []int64{2} }},
		{"over the object bound", "exceeds", func(e *bus.TensorSubmitted) {
			e.Shape, e.Object.Size = []int64{bus.MaxTensorObjectBytes/4 + 1}, bus.MaxTensorObjectBytes+4
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ok
			e.Shape = append([]int64(nil), ok.Shape...)
			tc.mut(&e)
			if err := e.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%+v: %v, want an error naming %q", e.Object, err, tc.want)
			}
		})
	}
	// The reference survives the event's JSON; an inline row has none.
	ok.Meta = bus.NewMeta(bus.TypeTensorSubmitted)
	data, err := json.Marshal(&ok)
	if err != nil {
		t.Fatal(err)
	}
	back, err := bus.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if got := back.(*bus.TensorSubmitted); got.Object.Object != ref.Object || got.Object.Size != size || len(got.Data) != 0 {
		t.Fatalf("decoded %+v", got)
	}
	small := bus.TensorSubmitted{Owner: "u", Model: "m", Input: "x", Datatype: "FP32", Shape: []int64{2}, Data: make([]byte, 8)}
	if data, err := json.Marshal(&small); err != nil || strings.Contains(string(data), `"object"`) {
		t.Fatalf("inline row: %s %v", data, err)
	}
}
