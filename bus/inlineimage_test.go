package bus_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

// An image.submitted may carry a small image inline: the rule is checked
// where every event is decoded, and the bytes survive the round trip
// through JSON, so a replayed event still holds them.
func TestImageSubmittedInline(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	submitted := func(data []byte, size int64, catalogued bool) *bus.ImageSubmitted {
		ev := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: "img", Owner: "ada", Model: "fashion",
			Image: bus.ImageRef{Object: "img", SHA256: sum, ContentType: "image/png", Size: size, Data: data}, Catalogued: catalogued}
		return ev
	}
	atBound := bytes.Repeat([]byte{7}, bus.MaxInlineImageBytes)
	over := bytes.Repeat([]byte{7}, bus.MaxInlineImageBytes+1)
	for _, tc := range []struct {
		name    string
		ev      *bus.ImageSubmitted
		wantErr string
	}{
		{"in the object store (no data)", submitted(nil, 1<<20, false), ""},
		{"inline, one byte", submitted([]byte{1}, 1, false), ""},
		{"inline at the bound", submitted(atBound, int64(len(atBound)), false), ""},
		{"inline one byte over the bound", submitted(over, int64(len(over)), false), "exceeds 4096"},
		{"inline with another size", submitted([]byte{1, 2}, 3, false), "size says 3"},
		{"a catalogued image inline", submitted([]byte{1}, 1, true), "catalogued image is in the object store"},
		{"catalogued, in the store", submitted(nil, 10, true), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.ev.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.wantErr)
			case tc.wantErr != "":
				return
			}
			data, err := json.Marshal(tc.ev)
			if err != nil {
				t.Fatal(err)
			}
			if tc.ev.Image.Data == nil && bytes.Contains(data, []byte(`"data"`)) {
				t.Fatalf("an event without inline bytes names data: %s", data)
			}
			got, err := bus.Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			ref := got.(*bus.ImageSubmitted).Image
			if ref.Inline() != (tc.ev.Image.Data != nil) || !bytes.Equal(ref.Data, tc.ev.Image.Data) {
				t.Fatalf("decoded inline %v with %d bytes, want %v with %d", ref.Inline(), len(ref.Data), tc.ev.Image.Data != nil, len(tc.ev.Image.Data))
			}
		})
	}
}

// The data member is decoded as the contract says: an event from before it
// existed is in the store; an inline image larger than the bound is poison,
// whatever its producer.
func TestImageSubmittedInlineDecode(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	meta := `"id":"0190d7a8-0000-7000-8000-000000000001","type":"image.submitted","schema_version":1,"time":"2026-12-02T10:00:00Z","image_id":"img","owner":"ada","model":"fashion"`
	for _, tc := range []struct {
		name       string
		image      string
		wantInline bool
		wantErr    string
	}{
		{"before inline images", `{"object":"img","sha256":"` + sum + `","content_type":"image/png","size":3}`, false, ""},
		{"inline", `{"object":"img","sha256":"` + sum + `","content_type":"image/png","size":3,"data":"AQID"}`, true, ""},
		{"inline, not base64", `{"object":"img","sha256":"` + sum + `","content_type":"image/png","size":3,"data":"!!"}`, false, "poison"},
		{"inline over the bound", `{"object":"img","sha256":"` + sum + `","content_type":"image/png","size":4097,"data":"` +
			base64.StdEncoding.EncodeToString(make([]byte, 4097)) + `"}`, false, "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := bus.Decode([]byte(`{` + meta + `,"image":` + tc.image + `}`))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Decode = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ev.(*bus.ImageSubmitted).Image.Inline(); got != tc.wantInline {
				t.Fatalf("Inline() = %v, want %v", got, tc.wantInline)
			}
		})
	}
}

// A catalogue image is read back from the object store, so its event
// never carries the bytes.
func TestImageCataloguedNeverInline(t *testing.T) {
	ev := &bus.ImageCatalogued{Meta: bus.NewMeta(bus.TypeImageCatalogued), ImageID: "img", Owner: "ada",
		Image: bus.ImageRef{Object: "img", SHA256: strings.Repeat("ab", 32), Size: 1, Data: []byte{1}}}
	if err := ev.Validate(); err == nil || !strings.Contains(err.Error(), "not inline") {
		t.Fatalf("Validate = %v, want a refusal of inline bytes", err)
	}
	ev.Image.Data = nil
	if err := ev.Validate(); err != nil {
		t.Fatalf("Validate without inline bytes: %v", err)
	}
}
