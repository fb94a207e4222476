package bus_test

import (
	"encoding/json"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

// BenchmarkDecodeAnnotation is what every consumer of the annotations
// stream pays per event: decode, validate (bus.Decode).
//
//	go test -run '^$' -bench DecodeAnnotation -benchmem ./bus/
func BenchmarkDecodeAnnotation(b *testing.B) {
	ev := &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), Author: "bench",
		Annotation: json.RawMessage(`{"label":"cat","box":[12,40,128,96],"confidence":0.93,"notes":"left ear partly hidden","by":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)}
	data, err := json.Marshal(ev)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bus.Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
