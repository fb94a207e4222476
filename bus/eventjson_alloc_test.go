package bus_test

import (
	"testing"

	"github.com/gradeline/gradeline/bus"
)

// TestCheckJSONUsualDocumentsDoNotAllocate: the check runs on every edge
// request and every consumed annotation, so its bookkeeping stays on the
// stack for documents of usual size (wider or deeper ones may allocate).
func TestCheckJSONUsualDocumentsDoNotAllocate(t *testing.T) {
	docs := []string{
		`{"label":"cat","box":[12,40,128,96],"confidence":0.93,"notes":"left ear partly hidden"}`,
		`{"annotation":{"label":"cat","boxes":[{"label":"cat","x":10,"y":12,"width":30,"height":40}]},"image_id":"img-1"}`,
	}
	for _, d := range docs {
		data := []byte(d)
		if n := testing.AllocsPerRun(100, func() {
			if err := bus.CheckJSON(data, 32); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("CheckJSON(%s): %.0f allocations", d, n)
		}
	}
}
