package ingest_test

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestReviewQueue grades catalogue images, then walks the review queue
// (least certain first), drops what gets annotated or deleted, and
// measures the agreement of the model with the labels people gave.
func TestReviewQueue(t *testing.T) {
	needInference(t)
	needAnalytics(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	var imgs []string
	scores := map[string]float64{}
	labels := map[string]string{}
	for _, f := range []filePart{{"image", "a.png", pngImage(t, 28, 28)}, {"image", "b.jpg", jpegImage(t, 64, 48)}, {"image", "r.jpg", datasetImage(t, "retina.jpg")}} {
		r := c.multipart("POST", "/api/v1/images", nil, f)
		if r.Status != http.StatusCreated {
			t.Fatalf("catalogue: %d %s", r.Status, r.Body)
		}
		img := r.JSON(t)["img_id"].(string)
		g := c.json("POST", "/api/v1/grades", `{"model":"fashion","image_id":"`+img+`"}`)
		if g.Status != 200 {
			t.Fatalf("grade: %d %s", g.Status, g.Body)
		}
		imgs = append(imgs, img)
		scores[img], labels[img] = g.JSON(t)["score"].(float64), g.JSON(t)["label"].(string)
	}
	// An upload graded directly is not a catalogue image: never queued.
	c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "u.png", pngImage(t, 30, 30)})

	queue := func(query string) []string {
		t.Helper()
		r := c.do("GET", "/api/v1/review"+query, nil, nil)
		if r.Status != 200 {
			t.Fatalf("review: %d %s", r.Status, r.Body)
		}
		var ids []string
		prev := -1.0
		for _, e := range r.JSON(t)["data"].([]any) {
			e := e.(map[string]any)
			id := e["image"].(map[string]any)["img_id"].(string)
			p := e["prediction"].(map[string]any)
			if p["score"].(float64) < prev || p["score"].(float64) != scores[id] {
				t.Fatalf("queue entry %v: scores must rise and match the grade (%v)", e, scores[id])
			}
			prev = p["score"].(float64)
			ids = append(ids, id)
		}
		return ids
	}
	eventually(t, "all three graded images queued", 30*time.Second, func() bool { return len(queue("")) == 3 })
	first := queue("")[0]
	if got := queue("?per_page=1&page=2"); len(got) != 1 || got[0] != queue("")[1] {
		t.Fatalf("page 2 of 1: %v", got)
	}

	// People label two images: one as the model did, one otherwise.
	agreeImg, disagreeImg := imgs[1], imgs[0]
	for img, label := range map[string]string{agreeImg: labels[agreeImg], disagreeImg: "not-" + labels[disagreeImg]} {
		if r := c.json("POST", "/api/v1/annotations", `{"image_id":"`+img+`","annotation":{"label":"`+label+`"}}`); r.Status != 202 {
			t.Fatalf("annotate: %d %s", r.Status, r.Body)
		}
	}
	eventually(t, "annotated images leave the unannotated queue", 30*time.Second, func() bool {
		got := queue("?unannotated=1")
		return len(got) == 1 && got[0] == imgs[2]
	})
	eventually(t, "agreement counted", 30*time.Second, func() bool {
		r := c.do("GET", "/api/v1/stats/agreement?model=fashion", nil, nil)
		if r.Status != 200 {
			t.Fatalf("agreement: %d %s", r.Status, r.Body)
		}
		rows := r.JSON(t)["data"].([]any)
		if len(rows) != 1 {
			return false
		}
		row := rows[0].(map[string]any)
		return row["compared"] == 2.0 && row["agree"] == 1.0 && row["rate"] == 0.5 && len(row["confusion"].([]any)) == 2
	})

	// A deleted image leaves the queue.
	if r := c.do("DELETE", "/api/v1/images/"+first, nil, nil); r.Status/100 != 2 {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	eventually(t, "deleted image gone from the queue", 30*time.Second, func() bool {
		for _, id := range queue("") {
			if id == first {
				return false
			}
		}
		return true
	})
	// Two versions on the same grades: version 1 against itself agrees on
	// every grade of the model (uploads too).
	eventually(t, "version agreement", 30*time.Second, func() bool {
		r := c.do("GET", "/api/v1/stats/agreement?model=fashion&a=1&b=1", nil, nil)
		if r.Status != 200 {
			t.Fatalf("version agreement: %d %s", r.Status, r.Body)
		}
		d := r.JSON(t)["data"].(map[string]any)
		return d["compared"] == 4.0 && d["agree"] == 4.0 && d["rate"] == 1.0
	})
	for _, tc := range []struct{ path, detail string }{
		{"/api/v1/stats/agreement?model=fashion&a=1", "b: a model version"},
		{"/api/v1/stats/agreement", "model: required"},
		{"/api/v1/stats/agreement?model=a%27b", "model"},
		{"/api/v1/review?cursor=abc", "page=N"},
		{"/api/v1/review?per_page=0", "per_page"},
	} {
		if got := expectError(t, c.do("GET", tc.path, nil, nil), 422); !strings.Contains(got, tc.detail) {
			t.Fatalf("%s: %q lacks %q", tc.path, got, tc.detail)
		}
	}
}
