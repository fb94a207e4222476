package ingest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest"
)

// idemBucket opens the edge's idempotency bucket, to simulate what a crash
// leaves behind.
// testJS is a JetStream client of the tests' NATS server, closed with the test.
func testJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func idemBucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	kv, err := testJS(t).KeyValue(context.Background(), bus.IdempotencyBucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

func idemKVKey(user, key string) string {
	sum := sha256.Sum256([]byte(user + "\x00" + key))
	return hex.EncodeToString(sum[:])
}

// stored counts the annotations of imageID by author once the annotator
// has caught up with at least want of them.
func stored(t *testing.T, c *client, imageID, author string, want int) int {
	t.Helper()
	count := func() int {
		r := c.do("GET", "/api/v1/annotations?image_id="+imageID+"&author="+author+"&per_page=10", nil, nil)
		if r.Status != http.StatusOK {
			return -1
		}
		data, _ := r.JSON(t)["data"].([]any)
		return len(data)
	}
	eventually(t, "annotations stored", 20*time.Second, func() bool { return count() >= want })
	// Give a second copy, were there one, the time to arrive too.
	time.Sleep(500 * time.Millisecond)
	return count()
}

func TestIdempotencyKeyStoresOnceAndReplaysTheFirstAnswer(t *testing.T) {
	s := startIngest(t)
	ada, adaName := s.newUser(t)
	bob, bobName := s.newUser(t)
	imageID := newImage(t, ada)
	share(t, ada, imageID, bobName)
	eventually(t, "the share to be stored", 10*time.Second, func() bool {
		return bob.do("GET", "/api/v1/images/"+imageID, nil, nil).Status == http.StatusOK
	})
	key := "3f1c1a4e-retry-" + imageID
	body := fmt.Sprintf(`{"image_id":%q,"annotation":{"label":"cat","box":[1,2,3,4]}}`, imageID)
	post := func(c *client, key, body string) response {
		return c.do("POST", "/api/v1/annotations", stringsReader(body), map[string]string{
			"Content-Type": "application/json", ingest.HeaderIdempotencyKey: key})
	}

	first := post(ada, key, body)
	if first.Status != http.StatusAccepted {
		t.Fatalf("first: %d %s", first.Status, first.Body)
	}
	tests := []struct {
		name, body string
	}{
		{"same body", body},
		{"same body re-serialised", fmt.Sprintf(`{ "annotation": {"box": [1, 2, 3, 4], "label": "cat"}, "image_id": %q }`, imageID)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := post(ada, key, tt.body)
			if r.Status != first.Status || string(r.Body) != string(first.Body) ||
				r.Header.Get("Location") != first.Header.Get("Location") || r.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("retry: %d %s %v, want the first answer %d %s", r.Status, r.Body, r.Header, first.Status, first.Body)
			}
		})
	}
	t.Run("same key, other body", func(t *testing.T) {
		msg := expectError(t, post(ada, key, fmt.Sprintf(`{"image_id":%q,"annotation":{"label":"dog"}}`, imageID)), http.StatusUnprocessableEntity)
		t.Log(msg)
	})
	t.Run("answer lost at a crash after the PubAck", func(t *testing.T) {
		// The edge died before recording its answer: the retry runs again,
		// publishes the same event id, and the stream drops the duplicate.
		if err := idemBucket(t).Purge(context.Background(), idemKVKey(adaName, key)); err != nil {
			t.Fatal(err)
		}
		r := post(ada, key, body)
		if r.Status != http.StatusAccepted || r.JSON(t)["id"] != first.JSON(t)["id"] {
			t.Fatalf("re-run after a lost answer: %d %s, want id of %s", r.Status, r.Body, first.Body)
		}
	})
	t.Run("first request still running", func(t *testing.T) {
		// A request in flight leaves a pending entry: turn a recorded one
		// back into that state (same fingerprint) and retry.
		kv := idemBucket(t)
		k := idemKVKey(adaName, key)
		entry, err := kv.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		var rec map[string]any
		if err := json.Unmarshal(entry.Value(), &rec); err != nil {
			t.Fatal(err)
		}
		rec["state"], rec["since"] = "pending", time.Now()
		pending, _ := json.Marshal(rec)
		if _, err := kv.Put(context.Background(), k, pending); err != nil {
			t.Fatal(err)
		}
		r := post(ada, key, body)
		expectError(t, r, http.StatusConflict)
		if r.Header.Get("Retry-After") == "" {
			t.Fatalf("409 without Retry-After: %v", r.Header)
		}
	})
	t.Run("another user, same key", func(t *testing.T) {
		r := post(bob, key, body)
		if r.Status != http.StatusAccepted || r.Header.Get("Idempotent-Replayed") != "" || r.JSON(t)["id"] == first.JSON(t)["id"] {
			t.Fatalf("bob with ada's key: %d %s", r.Status, r.Body)
		}
	})
	if n := stored(t, ada, imageID, adaName, 1); n != 1 {
		t.Fatalf("ada's annotation stored %d times, want once", n)
	}
	if n := stored(t, bob, imageID, bobName, 1); n != 1 {
		t.Fatalf("bob's annotation stored %d times, want once", n)
	}
}

func TestIdempotencyKeyOnMultipartRetriesAndInOpenAPI(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	img := pngImage(t, 28, 28)
	// Each try encodes the body anew, with a new multipart boundary.
	try := func(path, key string, fields [][2]string) response {
		var buf bytes.Buffer
		w := multipart.NewWriter(&buf)
		for _, f := range fields {
			_ = w.WriteField(f[0], f[1])
		}
		fw, _ := w.CreateFormFile("image", "g.png")
		_, _ = fw.Write(img)
		_ = w.Close()
		return c.do("POST", path, &buf, map[string]string{"Content-Type": w.FormDataContentType(), ingest.HeaderIdempotencyKey: key})
	}
	for _, tc := range []struct {
		path   string
		fields [][2]string
		status int
	}{
		{"/api/v1/grades?wait=0", [][2]string{{"model", "fashion"}}, http.StatusAccepted},
		{"/api/v1/images", [][2]string{{"tags", "eye"}}, http.StatusCreated},
	} {
		t.Run(tc.path, func(t *testing.T) {
			key := fmt.Sprintf("k-%d", time.Now().UnixNano())
			first := try(tc.path, key, tc.fields)
			if first.Status != tc.status {
				t.Fatalf("first: %d %s", first.Status, first.Body)
			}
			again := try(tc.path, key, tc.fields)
			if again.Status != tc.status || string(again.Body) != string(first.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("retry: %d %s, want %s", again.Status, again.Body, first.Body)
			}
		})
	}

	r := c.do("GET", "/openapi.json", nil, nil)
	var doc struct {
		Paths map[string]map[string]struct {
			Parameters []struct{ Name, In string } `json:"parameters"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(r.Body, &doc); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/api/v1/annotations", "/api/annotation", "/api/v1/grades", "/api/grade", "/api/v1/images", "/api/images", "/api/v1/iris/measurements"} {
		found := false
		for _, prm := range doc.Paths[p]["post"].Parameters {
			found = found || (prm.Name == ingest.HeaderIdempotencyKey && prm.In == "header")
		}
		if !found {
			t.Errorf("POST %s: no Idempotency-Key header parameter in the OpenAPI document", p)
		}
	}
}
