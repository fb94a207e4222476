package ingest_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/ingest"
)

func TestImageCatalogue(t *testing.T) {
	s := startIngest(t)
	c, name := s.newUser(t)
	other, _ := s.newUser(t)
	photo := datasetImage(t, "flower.jpg")
	sum := sha256.Sum256(photo)

	// Tags as one JSON array field.
	r := c.multipart("POST", "/api/v1/images", [][2]string{{"tags", `["flower","china"," flower "]`}}, filePart{"image", "dir/../flower.jpg", photo})
	if r.Status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	img := r.JSON(t)
	id, _ := img["img_id"].(string)
	if id == "" || img["owner"] != name || img["sha256"] != hex.EncodeToString(sum[:]) || img["content_type"] != "image/jpeg" ||
		img["width"] != float64(640) || img["height"] != float64(427) || img["filename"] != "flower.jpg" {
		t.Fatalf("created %v", img)
	}
	if tags := img["tags"].([]any); len(tags) != 2 || tags[0] != "flower" || tags[1] != "china" {
		t.Fatalf("tags %v", img["tags"])
	}
	if r.Header.Get("Location") != "/api/v1/images/"+id {
		t.Fatalf("Location %q", r.Header.Get("Location"))
	}
	// Read your writes: the next GET finds it at once.
	r = c.do("GET", "/api/v1/images/"+id, nil, nil)
	if r.Status != 200 || r.JSON(t)["img_id"] != id {
		t.Fatalf("get: %d %s", r.Status, r.Body)
	}
	if r := c.do("GET", "/api/image/"+id, nil, nil); r.Status != 200 || r.JSON(t)["img_id"] != id {
		t.Fatalf("seed alias get: %d %s", r.Status, r.Body)
	}

	// Content with ETag and conditional GET.
	r = c.do("GET", "/api/v1/images/"+id+"/content", nil, nil)
	if r.Status != 200 || string(r.Body) != string(photo) || r.Header.Get("Content-Type") != "image/jpeg" {
		t.Fatalf("content: %d %s %d bytes", r.Status, r.Header.Get("Content-Type"), len(r.Body))
	}
	etag := r.Header.Get("ETag")
	if etag != `"`+hex.EncodeToString(sum[:])+`"` {
		t.Fatalf("ETag %q", etag)
	}
	if r := c.do("GET", "/api/v1/images/"+id+"/content", nil, map[string]string{"If-None-Match": etag}); r.Status != http.StatusNotModified || len(r.Body) != 0 {
		t.Fatalf("If-None-Match: %d", r.Status)
	}
	if r := c.do("GET", "/api/v1/images/"+id+"/content", nil, map[string]string{"If-None-Match": `"other"`}); r.Status != 200 {
		t.Fatalf("If-None-Match other: %d", r.Status)
	}

	// A second image, tags as repeated fields, through the seed alias.
	r = c.multipart("POST", "/api/images", [][2]string{{"tags", "flower"}, {"tags", "png"}}, filePart{"image", "g.png", pngImage(t, 40, 30)})
	if r.Status != http.StatusCreated {
		t.Fatalf("seed alias create: %d %s", r.Status, r.Body)
	}
	id2 := r.JSON(t)["img_id"].(string)
	if r := c.multipart("POST", "/api/v1/images", nil, filePart{"image", "w.webp", webpImage(t)}); r.Status != http.StatusCreated {
		t.Fatalf("webp: %d %s", r.Status, r.Body)
	}

	list := func(q string) []string {
		t.Helper()
		r := c.do("GET", "/api/v1/images"+q, nil, nil)
		if r.Status != 200 {
			t.Fatalf("list %s: %d %s", q, r.Status, r.Body)
		}
		var ids []string
		for _, x := range r.JSON(t)["data"].([]any) {
			ids = append(ids, x.(map[string]any)["img_id"].(string))
		}
		return ids
	}
	if got := list("?tag=flower"); len(got) != 2 {
		t.Fatalf("tag=flower: %v", got)
	}
	if got := list("?tag=flower&tag=china"); len(got) != 1 || got[0] != id {
		t.Fatalf("tag=flower&tag=china: %v", got)
	}
	if got := list("?tag=flower&per_page=1&page=2"); len(got) != 1 {
		t.Fatalf("page 2: %v", got)
	}
	if got := list(""); len(got) != 3 {
		t.Fatalf("all: %v", got)
	}

	// Tags: replace, read, delete.
	r = c.json("PUT", "/api/v1/images/"+id+"/tags", map[string]any{"tags": []string{"retina", "left"}})
	if r.Status != 200 {
		t.Fatalf("put tags: %d %s", r.Status, r.Body)
	}
	r = c.do("GET", "/api/v1/images/"+id+"/tags", nil, nil)
	if tags := r.JSON(t)["tags"].([]any); len(tags) != 2 || tags[0] != "retina" {
		t.Fatalf("tags after put: %s", r.Body)
	}
	if got := list("?tag=retina"); len(got) != 1 || got[0] != id {
		t.Fatalf("tag=retina after put: %v", got)
	}
	if r := c.json("PUT", "/api/v1/images/"+id+"/tags", `["a","b"]`); r.Status != 200 {
		t.Fatalf("put bare array: %d %s", r.Status, r.Body)
	}
	r = c.do("DELETE", "/api/v1/images/"+id+"/tags", nil, nil)
	if r.Status != 200 || len(r.JSON(t)["tags"].([]any)) != 0 {
		t.Fatalf("delete tags: %d %s", r.Status, r.Body)
	}
	if r := c.do("GET", "/api/v1/images/"+id+"/tags", nil, nil); len(r.JSON(t)["tags"].([]any)) != 0 {
		t.Fatalf("tags after delete: %s", r.Body)
	}

	// Another user's image is not found, whatever the operation.
	for _, op := range []struct{ method, path string }{
		{"GET", "/api/v1/images/" + id}, {"GET", "/api/v1/images/" + id + "/content"}, {"GET", "/api/v1/images/" + id + "/tags"},
		{"DELETE", "/api/v1/images/" + id + "/tags"}, {"DELETE", "/api/v1/images/" + id}, {"GET", "/api/image/" + id},
	} {
		expectError(t, other.do(op.method, op.path, nil, nil), 404)
	}
	expectError(t, other.json("PUT", "/api/v1/images/"+id+"/tags", `{"tags":["x"]}`), 404)
	if got := len(other.JSON2(t, "/api/v1/images")); got != 0 {
		t.Fatalf("other user lists %d images", got)
	}

	// Delete.
	if r := c.do("DELETE", "/api/v1/images/"+id2, nil, nil); r.Status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	expectError(t, c.do("GET", "/api/v1/images/"+id2, nil, nil), 404)
	expectError(t, c.do("GET", "/api/v1/images/"+id2+"/content", nil, nil), 404)
	expectError(t, c.do("DELETE", "/api/v1/images/"+id2, nil, nil), 404)
	expectError(t, c.do("GET", "/api/v1/images/not-an-id", nil, nil), 404)
	expectError(t, c.do("GET", "/api/v1/images/%22%24where%22", nil, nil), 404)
}

// JSON2 lists the data of a paginated GET.
func (c *client) JSON2(t *testing.T, path string) []any {
	r := c.do("GET", path, nil, nil)
	if r.Status != 200 {
		t.Fatalf("%s: %d %s", path, r.Status, r.Body)
	}
	d, _ := r.JSON(t)["data"].([]any)
	return d
}

func TestImageCatalogueBadInputs(t *testing.T) {
	s := startIngest(t, func(c *ingest.Config) { c.MaxBodyBytes = 1 << 20 })
	c, _ := s.newUser(t)
	png := pngImage(t, 8, 8)
	for _, tc := range []struct {
		name   string
		fields [][2]string
		files  []filePart
		status int
		detail string
	}{
		{"missing image", [][2]string{{"tags", "a"}}, nil, 422, "image: required"},
		{"image as a plain field", [][2]string{{"image", "not a file"}}, nil, 422, "image: required"},
		{"text file", nil, []filePart{{"image", "a.txt", []byte("hello, I am not an image")}}, 415, "text/plain"},
		{"pdf", nil, []filePart{{"image", "a.pdf", []byte("%PDF-1.4\n1 0 obj\n")}}, 415, "application/pdf"},
		{"zero bytes", nil, []filePart{{"image", "empty.png", nil}}, 422, "empty"},
		{"corrupt png", nil, []filePart{{"image", "bad.png", append([]byte("\x89PNG\r\n\x1a\n"), make([]byte, 40)...)}}, 422, "decode"},
		{"decompression bomb", nil, []filePart{{"image", "bomb.png", pngBomb(t)}}, 422, "100000x100000"},
		{"empty tag", [][2]string{{"tags", "ok"}, {"tags", "  "}}, []filePart{{"image", "a.png", png}}, 422, "tags[1]"},
		{"tag too long", [][2]string{{"tags", strings.Repeat("t", 65)}}, []filePart{{"image", "a.png", png}}, 422, "tags[0]"},
		{"tag with control char", [][2]string{{"tags", "a\x00b"}}, []filePart{{"image", "a.png", png}}, 422, "control"},
		{"tags bad JSON", [][2]string{{"tags", `["a",`}}, []filePart{{"image", "a.png", png}}, 422, "tags"},
		{"tags JSON of numbers", [][2]string{{"tags", `[1,2]`}}, []filePart{{"image", "a.png", png}}, 422, "tags"},
		{"too big", nil, []filePart{{"image", "big.png", append(png, make([]byte, 2<<20)...)}}, 413, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.multipart("POST", "/api/v1/images", tc.fields, tc.files...)
			if got := expectError(t, r, tc.status); !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
	t.Run("not multipart", func(t *testing.T) {
		expectError(t, c.json("POST", "/api/v1/images", `{"image":"x"}`), 415)
	})
	t.Run("broken multipart", func(t *testing.T) {
		r := c.do("POST", "/api/v1/images", strings.NewReader("--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc"),
			map[string]string{"Content-Type": "multipart/form-data; boundary=xyz"})
		expectError(t, r, 400)
	})
	// Tag bodies.
	r := c.multipart("POST", "/api/v1/images", nil, filePart{"image", "a.png", png})
	if r.Status != 201 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	id := r.JSON(t)["img_id"].(string)
	for _, tc := range []struct {
		name, body string
		status     int
	}{
		{"malformed", `{"tags":`, 400},
		{"missing tags", `{}`, 422},
		{"tags not an array", `{"tags":"a"}`, 422},
		{"tags of numbers", `{"tags":[1]}`, 422},
		{"unknown field", `{"tags":["a"],"owner":"x"}`, 422},
		{"empty tag", `{"tags":[""]}`, 422},
	} {
		t.Run("put "+tc.name, func(t *testing.T) {
			expectError(t, c.json("PUT", "/api/v1/images/"+id+"/tags", tc.body), tc.status)
		})
	}
	expectError(t, c.do("PUT", "/api/v1/images/"+id+"/tags", strings.NewReader("tags"), map[string]string{"Content-Type": "text/plain"}), 415)
	_ = time.Second
}
