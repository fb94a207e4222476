package ingest_test

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
)

// TestExports exports a tagged catalogue as COCO, YOLO and Label Studio and
// imports Label Studio work back: every selected image, annotated or not;
// boxes in each format's units; image labels; predictions with scores; the
// caller's catalogue only.
func TestExports(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	stranger, _ := s.newUser(t)
	png := pngImage(t, 28, 20)
	add := func(tags string) string {
		t.Helper()
		r := c.multipart("POST", "/api/v1/images", [][2]string{{"tags", tags}}, filePart{"image", "a.png", png})
		if r.Status != http.StatusCreated {
			t.Fatalf("catalogue: %d %s", r.Status, r.Body)
		}
		return r.JSON(t)["img_id"].(string)
	}
	imgA, imgB, imgC := add(`["set"]`), add(`["set","x"]`), add(`["set"]`)
	add(`["other"]`)
	annotate := func(img, ann string) {
		t.Helper()
		if r := c.json("POST", "/api/v1/annotations", `{"image_id":"`+img+`","annotation":`+ann+`}`); r.Status != 202 {
			t.Fatalf("annotate: %d %s", r.Status, r.Body)
		}
	}
	annotate(imgA, `{"label":"cat","boxes":[{"label":"cat","x":2,"y":4,"width":10,"height":8},{"label":"dog","x":14,"y":0,"width":14,"height":20}]}`)
	annotate(imgB, `{"label":"dog"}`)
	annotate(imgB, `{"note":"free-form stays out of the structure"}`)
	g := c.json("POST", "/api/v1/grades", `{"model":"fashion","image_id":"`+imgA+`"}`)
	if g.Status != 200 {
		t.Fatalf("grade: %d %s", g.Status, g.Body)
	}
	grade := g.JSON(t)

	get := func(cl *client, path string) []byte {
		t.Helper()
		r := cl.do("GET", path, nil, nil)
		if r.Status != 200 {
			t.Fatalf("%s: %d %s", path, r.Status, r.Body)
		}
		return []byte(r.Body)
	}

	t.Run("coco", func(t *testing.T) {
		var doc struct {
			Images []struct {
				ID          int      `json:"id"`
				Width       int      `json:"width"`
				Height      int      `json:"height"`
				GradelineID string   `json:"gradeline_id"`
				CategoryIDs []int    `json:"category_ids"`
				Labels      []string `json:"labels"`
			}
			Annotations []struct {
				ImageID    int        `json:"image_id"`
				CategoryID int        `json:"category_id"`
				BBox       [4]float64 `json:"bbox"`
				Area       float64    `json:"area"`
				IsCrowd    *int       `json:"iscrowd"`
			}
			Categories []struct {
				ID   int    `json:"id"`
				Name string `json:"name"`
			}
			Predictions []struct {
				ImageID    int     `json:"image_id"`
				CategoryID int     `json:"category_id"`
				Score      float64 `json:"score"`
			}
		}
		if err := json.Unmarshal(get(c, "/api/v1/exports/coco?tag=set&predictions=1"), &doc); err != nil {
			t.Fatal(err)
		}
		if len(doc.Images) != 3 {
			t.Fatalf("%d images, want the 3 tagged set (annotated or not)", len(doc.Images))
		}
		ids := map[string]int{}
		for _, im := range doc.Images {
			ids[im.GradelineID] = im.ID
			if im.Width != 28 || im.Height != 20 {
				t.Fatalf("image %+v: want 28x20", im)
			}
		}
		cat := map[string]int{}
		for _, c := range doc.Categories {
			cat[c.Name] = c.ID
		}
		if len(doc.Annotations) != 2 {
			t.Fatalf("%d box annotations, want 2", len(doc.Annotations))
		}
		a := doc.Annotations[0]
		if a.ImageID != ids[imgA] || a.CategoryID != cat["cat"] || a.BBox != [4]float64{2, 4, 10, 8} || a.Area != 80 || a.IsCrowd == nil || *a.IsCrowd != 0 {
			t.Fatalf("first box %+v (categories %v), want cat [2 4 10 8] area 80 iscrowd 0 on image %d", a, cat, ids[imgA])
		}
		for _, im := range doc.Images {
			if im.GradelineID == imgB && (len(im.CategoryIDs) != 1 || im.CategoryIDs[0] != cat["dog"] || im.Labels[0] != "dog") {
				t.Fatalf("image B %+v: want its label dog as a category", im)
			}
		}
		if len(doc.Predictions) != 1 || doc.Predictions[0].ImageID != ids[imgA] || doc.Predictions[0].Score != grade["score"].(float64) ||
			doc.Predictions[0].CategoryID != cat[grade["label"].(string)] {
			t.Fatalf("predictions %+v, want the grade %v on image A", doc.Predictions, grade)
		}
		// Another user's export holds none of these images.
		var other struct{ Images []any }
		if err := json.Unmarshal(get(stranger, "/api/v1/exports/coco?tag=set"), &other); err != nil || len(other.Images) != 0 {
			t.Fatalf("stranger's export: %d images, %v; want none", len(other.Images), err)
		}
	})

	t.Run("yolo", func(t *testing.T) {
		body := get(c, "/api/v1/exports/yolo?tag=set&images=1")
		z, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
		if err != nil {
			t.Fatal(err)
		}
		files := map[string]string{}
		for _, f := range z.File {
			r, _ := f.Open()
			b, _ := io.ReadAll(r)
			files[f.Name] = string(b)
		}
		if files["labels/"+imgB+".txt"] != "" || files["labels/"+imgC+".txt"] != "" {
			t.Fatalf("images without boxes: want empty label files, got %q and %q", files["labels/"+imgB+".txt"], files["labels/"+imgC+".txt"])
		}
		if _, ok := files["labels/"+imgC+".txt"]; !ok {
			t.Fatal("no label file for an image without annotations")
		}
		rows := strings.Split(strings.TrimSpace(files["labels/"+imgA+".txt"]), "\n")
		classes := strings.Split(strings.TrimSpace(files["classes.txt"]), "\n")
		if len(rows) != 2 || len(classes) != 2 || classes[0] != "cat" || classes[1] != "dog" {
			t.Fatalf("rows %q classes %q", rows, classes)
		}
		// cat box (2,4) 10x8 in 28x20: centre (7,8) → 0.25, 0.4; size 0.357143, 0.4
		if rows[0] != "0 0.250000 0.400000 0.357143 0.400000" || rows[1] != "1 0.750000 0.500000 0.500000 1.000000" {
			t.Fatalf("rows %q", rows)
		}
		if !strings.Contains(files["data.yaml"], "nc: 2") || !strings.Contains(files["data.yaml"], `1: "dog"`) {
			t.Fatalf("data.yaml %q", files["data.yaml"])
		}
		if files["images/"+imgA+".png"] != string(png) {
			t.Fatal("the image in the zip is not the uploaded bytes")
		}
	})

	t.Run("labelstudio and back", func(t *testing.T) {
		body := get(c, "/api/v1/exports/labelstudio?tag=set&predictions=1")
		var tasks []map[string]any
		if err := json.Unmarshal(body, &tasks); err != nil || len(tasks) != 3 {
			t.Fatalf("%d tasks, %v; want 3", len(tasks), err)
		}
		var a map[string]any
		for _, task := range tasks {
			if strings.Contains(task["data"].(map[string]any)["image"].(string), imgA) {
				a = task
			}
		}
		res := a["annotations"].([]any)[0].(map[string]any)["result"].([]any)
		if len(res) != 3 {
			t.Fatalf("results %v, want a choice and two rectangles", res)
		}
		rect := res[1].(map[string]any)
		v := rect["value"].(map[string]any)
		if rect["type"] != "rectanglelabels" || rect["original_width"] != 28.0 || math.Abs(v["x"].(float64)-100*2.0/28) > 1e-9 ||
			v["height"].(float64) != 40 || v["rectanglelabels"].([]any)[0] != "cat" {
			t.Fatalf("rectangle %v", rect)
		}
		p := a["predictions"].([]any)[0].(map[string]any)
		if p["model_version"] != "fashion@"+grade["model_version"].(string) || p["score"] != grade["score"] {
			t.Fatalf("prediction %v, want grade %v", p, grade)
		}

		// The export imported back adds nothing: its annotations are gradeline's.
		r := c.do("POST", "/api/v1/imports/labelstudio", bytes.NewReader(body), map[string]string{"Content-Type": "application/json"})
		if r.Status != 200 || r.JSON(t)["imported"] != 0.0 {
			t.Fatalf("re-import: %d %s", r.Status, r.Body)
		}
		// Work done in Label Studio: a rectangle on image C (percent), a
		// choice, and results gradeline does not import.
		ls := `[{"id":7,"data":{"image":"http://example.test/api/v1/images/` + imgC + `/content"},"annotations":[
			{"id":1,"completed_by":3,"created_at":"2026-01-02T03:04:05.123456Z","result":[
				{"from_name":"choice","to_name":"image","type":"choices","value":{"choices":["bird"]}},
				{"from_name":"label","to_name":"image","type":"rectanglelabels","original_width":28,"original_height":20,
				 "value":{"x":50,"y":25,"width":25,"height":50,"rotation":0,"rectanglelabels":["bird"]}}]},
			{"id":2,"result":[{"type":"textarea","value":{"text":["hi"]}}]}]},
			{"data":{"image":"/api/v1/images/nope/content"},"annotations":[{"result":[{"type":"choices","value":{"choices":["x"]}}]}]}]`
		r = c.do("POST", "/api/v1/imports/labelstudio", strings.NewReader(ls), map[string]string{"Content-Type": "application/json"})
		if r.Status != 200 {
			t.Fatalf("import: %d %s", r.Status, r.Body)
		}
		ans := r.JSON(t)
		if ans["imported"] != 1.0 || len(ans["skipped"].([]any)) != 2 {
			t.Fatalf("import answer %v: want 1 imported, 2 skipped with reasons", ans)
		}
		l := c.do("GET", "/api/v1/annotations?image_id="+imgC, nil, nil).JSON(t)["data"].([]any)
		if len(l) != 1 {
			t.Fatalf("image C annotations %v, want the imported one", l)
		}
		box := l[0].(map[string]any)["annotation"].(map[string]any)["boxes"].([]any)[0].(map[string]any)
		if box["x"] != 14.0 || box["y"] != 5.0 || box["width"] != 7.0 || box["height"] != 10.0 || box["label"] != "bird" {
			t.Fatalf("imported box %v, want bird (14,5) 7x10 in pixels", box)
		}
		// Someone else cannot import onto this image.
		r = stranger.do("POST", "/api/v1/imports/labelstudio", strings.NewReader(ls), map[string]string{"Content-Type": "application/json"})
		if r.Status != 200 || r.JSON(t)["imported"] != 0.0 {
			t.Fatalf("stranger's import: %d %s, want nothing imported", r.Status, r.Body)
		}
	})

	for _, tc := range []struct {
		name   string
		r      response
		status int
	}{
		{"import not JSON", c.do("POST", "/api/v1/imports/labelstudio", strings.NewReader("x"), map[string]string{"Content-Type": "text/plain"}), 415},
		{"import malformed", c.do("POST", "/api/v1/imports/labelstudio", strings.NewReader("[{"), map[string]string{"Content-Type": "application/json"}), 400},
		{"import not a list", c.do("POST", "/api/v1/imports/labelstudio", strings.NewReader(`{"data":{}}`), map[string]string{"Content-Type": "application/json"}), 422},
		{"export bad tag", c.do("GET", "/api/v1/exports/coco?tag="+strings.Repeat("t", 300), nil, nil), 422},
		{"export without token", s.client(t).do("GET", "/api/v1/exports/coco", nil, nil), 401},
	} {
		t.Run(tc.name, func(t *testing.T) { expectError(t, tc.r, tc.status) })
	}
}
