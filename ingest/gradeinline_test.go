package ingest_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// paddedPNG is data (a PNG) grown to exactly size bytes by a tEXt chunk
// before its IEND chunk, which decoders skip.
func paddedPNG(t *testing.T, data []byte, size int) []byte {
	t.Helper()
	pad := size - len(data) - 12 // a chunk: length, type, data, CRC
	if pad < 2 {
		t.Fatalf("a PNG of %d bytes cannot be padded to %d", len(data), size)
	}
	typed := append([]byte("tEXt"), append([]byte("k\x00"), bytes.Repeat([]byte{'x'}, pad-2)...)...)
	chunk := binary.BigEndian.AppendUint32(nil, uint32(len(typed)-4))
	chunk = append(chunk, typed...)
	chunk = binary.BigEndian.AppendUint32(chunk, crc32.ChecksumIEEE(typed))
	iend := len(data) - 12
	out := append(append(append([]byte(nil), data[:iend]...), chunk...), data[iend:]...)
	if len(out) != size {
		t.Fatalf("padded PNG has %d bytes, want %d", len(out), size)
	}
	return out
}

// streamEvents decodes every event of stream on subject, as a replay or
// any downstream reader sees them.
func streamEvents(t *testing.T, js jetstream.JetStream, stream, subject string) []bus.Event {
	t.Helper()
	cons, err := js.OrderedConsumer(t.Context(), stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending == 0 {
		return nil
	}
	batch, err := cons.FetchNoWait(int(info.NumPending))
	if err != nil {
		t.Fatal(err)
	}
	var out []bus.Event
	for m := range batch.Messages() {
		ev, err := bus.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// submission reads the image.submitted event of a grade from the IMAGES
// stream.
func submission(t *testing.T, js jetstream.JetStream, gradeID string) *bus.ImageSubmitted {
	t.Helper()
	for _, ev := range streamEvents(t, js, bus.StreamImages, bus.SubjectImageSubmitted) {
		if s, ok := ev.(*bus.ImageSubmitted); ok && s.ID == gradeID {
			return s
		}
	}
	t.Fatalf("no image.submitted with id %s in the IMAGES stream", gradeID)
	return nil
}

// An upload of at most bus.MaxInlineImageBytes travels in its event and
// never enters the object store; a larger one is stored and referenced.
// Either way the grade completes, and the stream's event holds what a
// replay needs: the bytes themselves or the stored object's name.
func TestGradeSmallImagesInline(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	_, js, err := bus.Connect(context.Background(), natsURL, "grade-inline-test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	store, err := bus.ImageStore(t.Context(), js)
	if err != nil {
		t.Fatal(err)
	}
	small := pngImage(t, 28, 28)
	for _, tc := range []struct {
		name   string
		data   []byte
		inline bool
	}{
		{"28x28 PNG", small, true},
		{"at the bound", paddedPNG(t, small, bus.MaxInlineImageBytes), true},
		{"one byte over the bound", paddedPNG(t, small, bus.MaxInlineImageBytes+1), false},
		{"photograph", datasetImage(t, "retina.jpg"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "i.png", tc.data})
			if r.Status != 200 {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
			g := r.JSON(t)
			checkCompleted(t, g, "fashion")
			ev := submission(t, js, g["id"].(string))
			if ev.Image.Object != ev.ImageID || ev.Image.Size != int64(len(tc.data)) || ev.ImageID != g["image_id"] {
				t.Fatalf("image reference %+v of image %s, want the image's name and %d bytes", ev.Image, ev.ImageID, len(tc.data))
			}
			_, err := store.GetInfo(t.Context(), ev.Image.Object)
			if tc.inline {
				if !bytes.Equal(ev.Image.Data, tc.data) {
					t.Errorf("the event holds %d inline bytes, want the %d uploaded", len(ev.Image.Data), len(tc.data))
				}
				if !errors.Is(err, jetstream.ErrObjectNotFound) {
					t.Errorf("an inline image is in the object store too: %v", err)
				}
				return
			}
			if ev.Image.Inline() {
				t.Errorf("an image of %d bytes travelled inline", len(tc.data))
			}
			if err != nil {
				t.Errorf("object %s: %v", ev.Image.Object, err)
			}
		})
	}
	// A catalogue image is graded from the store, never inline, however small.
	r := c.multipart("POST", "/api/v1/images", nil, filePart{"image", "c.png", small})
	if r.Status != 201 {
		t.Fatalf("catalogue: %d %s", r.Status, r.Body)
	}
	imageID, _ := r.JSON(t)["img_id"].(string)
	r = c.json("POST", "/api/v1/grades", map[string]string{"model": "fashion", "image_id": imageID})
	if r.Status != 200 {
		t.Fatalf("grade of a catalogue image: %d %s", r.Status, r.Body)
	}
	if ev := submission(t, js, r.JSON(t)["id"].(string)); ev.Image.Inline() || !ev.Catalogued || !strings.EqualFold(ev.Image.Object, imageID) {
		t.Errorf("grade of catalogue image %s: %+v", imageID, ev.Image)
	}
}
