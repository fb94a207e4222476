package ingest_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestStructuredAnnotations: label and boxes are checked on the way in
// (well-formed, inside the catalogue image's size), on creation and on
// change; free-form annotations stay accepted.
func TestStructuredAnnotations(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	r := c.multipart("POST", "/api/v1/images", nil, filePart{"image", "a.png", pngImage(t, 28, 20)})
	if r.Status != http.StatusCreated && r.Status != http.StatusOK && r.Status != http.StatusAccepted {
		t.Fatalf("catalogue: %d %s", r.Status, r.Body)
	}
	img := r.JSON(t)["img_id"].(string)
	post := func(ann string) response {
		return c.json("POST", "/api/v1/annotations", `{"image_id":"`+img+`","annotation":`+ann+`}`)
	}
	for _, tc := range []struct {
		name, ann string
		status    int
		detail    string
	}{
		{"boxes inside", `{"label":"cat","boxes":[{"label":"cat","x":0,"y":0,"width":28,"height":20}]}`, 202, ""},
		{"free-form", `{"note":"blurry","box":[1,2,300,400]}`, 202, ""},
		{"box outside", `{"boxes":[{"label":"cat","x":20,"y":0,"width":9,"height":1}]}`, 422, "outside the 28x20 image"},
		{"box below", `{"boxes":[{"label":"cat","x":0,"y":19.5,"width":1,"height":1}]}`, 422, "boxes[0]"},
		{"label a number", `{"label":5}`, 422, "annotation.label"},
		{"box without size", `{"boxes":[{"label":"cat","x":1,"y":1}]}`, 422, "boxes[0].width"},
		{"negative box", `{"boxes":[{"label":"cat","x":1,"y":1,"width":-3,"height":2}]}`, 422, "must be > 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := post(tc.ann)
			if tc.status == 202 {
				if r.Status != 202 {
					t.Fatalf("%d %s", r.Status, r.Body)
				}
				return
			}
			if got := expectError(t, r, tc.status); !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
	// Without an image the size is unknown: only the form is checked.
	if r := c.json("POST", "/api/v1/annotations", `{"annotation":{"boxes":[{"label":"a","x":500,"y":500,"width":9,"height":9}]}}`); r.Status != 202 {
		t.Fatalf("box without an image: %d %s", r.Status, r.Body)
	}
	// A change is checked as a creation is.
	r = post(`{"label":"cat"}`)
	id := r.JSON(t)["id"].(string)
	if got := expectError(t, c.json("PATCH", "/api/v1/annotations/"+id, `{"annotation":{"boxes":[{"label":"cat","x":0,"y":0,"width":29,"height":1}]}}`), 422); !strings.Contains(got, "outside") {
		t.Fatalf("PATCH outside: %q", got)
	}
	if r := c.json("PATCH", "/api/v1/annotations/"+id, `{"annotation":{"boxes":[{"label":"dog","x":1,"y":1,"width":2,"height":2}]}}`); r.Status != 200 {
		t.Fatalf("PATCH inside: %d %s", r.Status, r.Body)
	}
}

// TestPredictions grades a catalogue image by its id (JSON and form), lists
// the grades as predictions for whoever may see the image, and turns one
// into an annotation linked to its grade.
func TestPredictions(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	friend, friendName := s.newUser(t)
	stranger, _ := s.newUser(t)
	r := c.multipart("POST", "/api/v1/images", nil, filePart{"image", "a.png", pngImage(t, 28, 28)})
	img := r.JSON(t)["img_id"].(string)
	other := c.multipart("POST", "/api/v1/images", nil, filePart{"image", "b.png", pngImage(t, 28, 28)}).JSON(t)["img_id"].(string)

	r = c.json("POST", "/api/v1/grades", `{"model":"fashion","image_id":"`+img+`"}`)
	if r.Status != 200 {
		t.Fatalf("grade by image_id (JSON): %d %s", r.Status, r.Body)
	}
	g1 := r.JSON(t)
	if g1["image_id"] != img || g1["status"] != "completed" {
		t.Fatalf("grade %v, want completed on %s", g1, img)
	}
	r = c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "digits"}, {"image_id", img}})
	if r.Status != 200 {
		t.Fatalf("grade by image_id (form): %d %s", r.Status, r.Body)
	}
	g2 := r.JSON(t)
	// The same bytes through an upload get the same scores.
	up := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "a.png", pngImage(t, 28, 28)}).JSON(t)
	if fmt.Sprint(up["scores"]) != fmt.Sprint(g1["scores"]) {
		t.Fatalf("catalogue grade scores %v, upload %v", g1["scores"], up["scores"])
	}
	for _, tc := range []struct {
		name   string
		r      response
		status int
		detail string
	}{
		{"JSON without image_id", c.json("POST", "/api/v1/grades", `{"model":"fashion"}`), 422, "image_id: required"},
		{"JSON without model", c.json("POST", "/api/v1/grades", `{"image_id":"`+img+`"}`), 422, "model: required"},
		{"another user's image", stranger.json("POST", "/api/v1/grades", `{"model":"fashion","image_id":"`+img+`"}`), 404, ""},
		{"unknown image", c.json("POST", "/api/v1/grades", `{"model":"fashion","image_id":"nope"}`), 404, ""},
		{"both image and image_id", c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}, {"image_id", img}}, filePart{"image", "a.png", pngImage(t, 28, 28)}), 422, "not both"},
		{"unknown field", c.json("POST", "/api/v1/grades", `{"model":"fashion","image_id":"`+img+`","x":1}`), 422, "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expectError(t, tc.r, tc.status); !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}

	predictions := func(cl *client) []any {
		t.Helper()
		r := cl.do("GET", "/api/v1/images/"+img+"/predictions", nil, nil)
		if r.Status != 200 {
			t.Fatalf("predictions: %d %s", r.Status, r.Body)
		}
		return r.JSON(t)["data"].([]any)
	}
	if p := predictions(c); len(p) != 2 || p[0].(map[string]any)["id"] != g2["id"] || p[1].(map[string]any)["id"] != g1["id"] {
		t.Fatalf("predictions %v, want %v then %v", p, g2["id"], g1["id"])
	}
	expectError(t, stranger.do("GET", "/api/v1/images/"+img+"/predictions", nil, nil), 404)
	if r := c.do("PUT", "/api/v1/images/"+img+"/shares/"+friendName, nil, nil); r.Status/100 != 2 {
		t.Fatalf("share: %d %s", r.Status, r.Body)
	}
	// The share is the owner's write: another user sees it once stored.
	eventually(t, "shared user sees the predictions", 10*time.Second, func() bool {
		r := friend.do("GET", "/api/v1/images/"+img+"/predictions", nil, nil)
		return r.Status == 200 && len(r.JSON(t)["data"].([]any)) == 2
	})

	from := "/api/v1/images/" + img + "/annotations/from-prediction"
	r = c.json("POST", from, `{"grade_id":"`+g1["id"].(string)+`"}`)
	if r.Status != 202 {
		t.Fatalf("from-prediction: %d %s", r.Status, r.Body)
	}
	an := c.do("GET", r.Header.Get("Location"), nil, nil)
	body := an.JSON(t)["annotation"].(map[string]any)
	if an.Status != 200 || body["label"] != g1["label"] || body["from_grade"] != g1["id"] || body["model"] != "fashion@"+fmt.Sprint(g1["model_version"]) {
		t.Fatalf("annotation %d %v from grade %v", an.Status, body, g1)
	}
	for _, tc := range []struct {
		name   string
		r      response
		status int
		detail string
	}{
		{"grade of another image", c.json("POST", "/api/v1/images/"+other+"/annotations/from-prediction", `{"grade_id":"`+g1["id"].(string)+`"}`), 422, "another image"},
		{"unknown grade", c.json("POST", from, `{"grade_id":"nope"}`), 404, ""},
		{"missing grade_id", c.json("POST", from, `{}`), 422, "grade_id: required"},
		{"not JSON", c.do("POST", from, strings.NewReader("grade_id=x"), map[string]string{"Content-Type": "application/x-www-form-urlencoded"}), 415, ""},
		{"stranger", stranger.json("POST", from, `{"grade_id":"`+g1["id"].(string)+`"}`), 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expectError(t, tc.r, tc.status); !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
}
