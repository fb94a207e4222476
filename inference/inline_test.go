package inference

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"math"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

// paddedPNG is data (a PNG) grown to exactly size bytes by a tEXt chunk
// before its IEND chunk, which decoders skip: the same image at any size
// from len(data)+14 up.
func paddedPNG(t testing.TB, data []byte, size int) []byte {
	t.Helper()
	pad := size - len(data) - 12 // a chunk: length, type, data, CRC
	if pad < 2 {
		t.Fatalf("a PNG of %d bytes cannot be padded to %d", len(data), size)
	}
	body := append([]byte("k\x00"), bytes.Repeat([]byte{'x'}, pad-2)...)
	chunk := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	typed := append([]byte("tEXt"), body...)
	chunk = append(chunk, typed...)
	chunk = binary.BigEndian.AppendUint32(chunk, crc32.ChecksumIEEE(typed))
	iend := len(data) - 12
	out := append(append(append([]byte(nil), data[:iend]...), chunk...), data[iend:]...)
	if len(out) != size {
		t.Fatalf("padded PNG has %d bytes, want %d", len(out), size)
	}
	return out
}

// inlineRef is the reference of data carried in the event itself, named
// object (which the store never holds).
func inlineRef(object string, data []byte) bus.ImageRef {
	sum := sha256.Sum256(data)
	return bus.ImageRef{Object: object, SHA256: hex.EncodeToString(sum[:]), ContentType: "image/png", Size: int64(len(data)), Data: data}
}

// An image carried in its event is graded from the event alone (its
// object name is in no store), exactly as the same bytes from the object
// store are; its digest is checked as a stored object's is.
func TestGradeInlineImages(t *testing.T) {
	s := getStack(t)
	four := encodePNG(t, heldOutDigits(t).Image(0))
	stored := s.completed(t, s.submit(t, "digits", s.put(t, four)))
	wrongSum := inlineRef("images/never-stored", four)
	wrongSum.SHA256 = strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name      string
		ref       bus.ImageRef
		wantLabel string
		wantFail  []string
	}{
		{"inline", inlineRef("images/never-stored", four), "4", nil},
		{"inline at the bound", inlineRef("images/never-stored", paddedPNG(t, four, bus.MaxInlineImageBytes)), "4", nil},
		{"inline with a wrong digest", wrongSum, "", []string{"inline image", "sha256"}},
		{"inline, not an image", inlineRef("images/never-stored", []byte("this is not an image")), "", []string{"cannot be decoded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := s.submit(t, "digits", tc.ref)
			if tc.wantFail != nil {
				f := s.failed(t, id)
				for _, w := range tc.wantFail {
					if !strings.Contains(f.Reason, w) {
						t.Errorf("reason %q does not mention %q", f.Reason, w)
					}
				}
				return
			}
			g := s.completed(t, id)
			if g.Label != tc.wantLabel {
				t.Fatalf("graded %s (%v), want %s", g.Label, g.Scores, tc.wantLabel)
			}
			for l, p := range stored.Scores {
				if math.Abs(g.Scores[l]-p) > 1e-5 {
					t.Errorf("score of %s: %v inline, %v from the object store", l, g.Scores[l], p)
				}
			}
		})
	}
}

// A submission with its image inline is whole in the IMAGES stream: read
// back from the stream (as a replay reads it) and submitted again, it is
// graded again with nothing in the object store.
func TestInlineImageReplayedFromTheStream(t *testing.T) {
	s := getStack(t)
	img := encodePNG(t, heldOutDigits(t).Image(1))
	ev := &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: bus.NewID(), Owner: "tester", Model: "digits",
		Image: inlineRef("images/"+bus.NewID(), img)}
	ack, err := bus.Publish(t.Context(), s.js, ev)
	if err != nil {
		t.Fatal(err)
	}
	first := s.completed(t, ev.ID)

	stream, err := s.js.Stream(t.Context(), bus.StreamImages)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetMsg(t.Context(), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	got, err := bus.Decode(msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	replayed := got.(*bus.ImageSubmitted)
	if !bytes.Equal(replayed.Image.Data, img) {
		t.Fatalf("the stream holds %d inline bytes, the image has %d", len(replayed.Image.Data), len(img))
	}
	replayed.Meta = bus.NewMeta(bus.TypeImageSubmitted)
	if _, err := bus.Publish(t.Context(), s.js, replayed); err != nil {
		t.Fatal(err)
	}
	again := s.completed(t, replayed.ID)
	if again.Label != first.Label || again.ImageID != ev.ImageID {
		t.Errorf("replay graded %s of %s, first %s of %s", again.Label, again.ImageID, first.Label, ev.ImageID)
	}
}
