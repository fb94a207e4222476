package ingest_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/dom"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// TestWebPageFiles checks how the page's files are served: embedded,
// typed, with the page's CSP, revalidated by ETag, gzip when accepted,
// and nothing loaded from elsewhere.
func TestWebPageFiles(t *testing.T) {
	s := startIngest(t)
	c := s.client(t)
	files := []struct {
		path, ctype string
		contains    string
	}{
		{"/", "text/html", `<script type="module" src="/web/app.js">`},
		{"/web/app.js", "text/javascript", "import "},
		{"/web/api.js", "text/javascript", "export async function api"},
		{"/web/editor.js", "text/javascript", "export class BoxEditor"},
		{"/web/app.css", "text/css", ".overlay"},
	}
	external := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|\bimport\s[^;]*["']https?:`)
	for _, f := range files {
		name := strings.TrimPrefix(f.path, "/web/")
		if f.path == "/" {
			name = "page"
		}
		t.Run(name, func(t *testing.T) {
			r := c.do("GET", f.path, nil, map[string]string{"Accept-Encoding": "identity"})
			if r.Status != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), f.ctype) {
				t.Fatalf("%d %q, want 200 %s", r.Status, r.Header.Get("Content-Type"), f.ctype)
			}
			if !strings.Contains(string(r.Body), f.contains) {
				t.Fatalf("body lacks %q", f.contains)
			}
			if external.Match(r.Body) {
				t.Fatalf("%s references an external resource: %q", f.path, external.Find(r.Body))
			}
			csp := r.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("CSP %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
				t.Errorf("CSP %q allows inline code", csp)
			}
			etag := r.Header.Get("ETag")
			if etag == "" {
				t.Fatal("no ETag")
			}
			if r := c.do("GET", f.path, nil, map[string]string{"If-None-Match": etag}); r.Status != http.StatusNotModified || len(r.Body) != 0 {
				t.Fatalf("If-None-Match: %d with %d bytes, want 304 and none", r.Status, len(r.Body))
			}
			// The transport would undo gzip silently; ask for it explicitly.
			req, _ := http.NewRequest("GET", s.URL+f.path, nil)
			req.Header.Set("Accept-Encoding", "gzip")
			res, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.Header.Get("Content-Encoding") != "gzip" || res.ContentLength >= int64(len(r.Body)) {
				t.Fatalf("gzip: Content-Encoding %q, %d bytes of %d", res.Header.Get("Content-Encoding"), res.ContentLength, len(r.Body))
			}
		})
	}
	// The page is a route of its own in the metrics; unknown paths stay unmatched.
	c.do("GET", "/no/such/page", nil, nil)
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(s.Reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`gradeline_ingest_http_requests_total{method="GET",route="/",status="200"}`,
		`gradeline_ingest_http_requests_total{method="GET",route="/web/:file",status="200"}`,
		`gradeline_ingest_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s\n%s", want, grepLines(rec.Body.String(), "http_requests_total"))
		}
	}
	// The API's answers keep their own headers: the page's CSP is the page's.
	if r := c.do("GET", "/healthz", nil, nil); r.Header.Get("Content-Security-Policy") != "" {
		t.Errorf("the API answers with the page's CSP: %q", r.Header.Get("Content-Security-Policy"))
	}
	for _, p := range []string{"/web/nope.js", "/web/index.html", "/web/..%2Fweb.go", "/web/"} {
		r := c.do("GET", p, nil, nil)
		if r.Status != http.StatusNotFound || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			t.Errorf("GET %s: %d %q, want a JSON 404", p, r.Status, r.Header.Get("Content-Type"))
		}
	}
}

// chromiumPath finds Debian's chromium (make install installs it).
func chromiumPath() string {
	for _, name := range []string{"/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// TestWebPageInBrowser drives the page in a real Chromium through
// registration and sign-in, upload (picked and dropped) and grading, the
// catalogue, drawing, deleting, labelling and moving boxes, accepting a
// prediction, the review queue by keyboard, the exports and the Label
// Studio import, and checks each step against the API. A screenshot of
// each step is written under the test's temp dir.
func TestWebPageInBrowser(t *testing.T) {
	exe := chromiumPath()
	if exe == "" {
		t.Skip("chromium is not installed (Debian: apt-get install chromium; `make install` installs it)")
	}
	needInference(t)
	s := startIngest(t)
	routes := documentedRoutes(t, s)
	if !routes["POST /api/v1/grades application/json"] {
		t.Skip("POST /api/v1/grades with JSON {image_id, model} (grading a catalogue image) is not served: the page's grades would not be predictions on the image")
	}
	if routes["GET /api/v1/review"] {
		needAnalytics(t) // the review queue is answered from ClickHouse
	}
	p := openBrowser(t, exe, s.URL+"/")

	// Sign in: register through the page, sign out, sign in again.
	user := fmt.Sprintf("web%d_%d", time.Now().UnixNano()%1e6, userSeq.Add(1))
	const password = "correct horse"
	p.do("sign-in form",
		chromedp.SendKeys("Username", user, named("textbox", "Username")),
		chromedp.SendKeys("Password", password, named("textbox", "Password")),
		chromedp.SendKeys("Signup code", s.Cfg.SignupCode, named("textbox", "Signup code")))
	p.shot("sign-in")
	t.Logf("page loaded: %s", p.text(`(() => {
		const nav = performance.getEntriesByType('navigation')[0];
		const all = [nav, ...performance.getEntriesByType('resource')];
		const kb = all.reduce((n, e) => n + (e.transferSize || 0), 0) / 1024;
		return `+"`${all.length} requests, ${kb.toFixed(1)} KB transferred, DOMContentLoaded ${nav.domContentLoadedEventEnd.toFixed(0)} ms, load ${nav.loadEventEnd.toFixed(0)} ms`"+`;
	})()`))
	p.do("register", chromedp.Click("Register", named("button", "Register")),
		chromedp.Click("Sign out", named("button", "Sign out")),
		chromedp.SendKeys("Username", user, named("textbox", "Username")),
		chromedp.SendKeys("Password", password, named("textbox", "Password")),
		chromedp.Click("Sign in", named("button", "Sign in")),
		chromedp.WaitVisible("Sign out", named("button", "Sign out")))
	if who := p.text(`document.getElementById('who').textContent`); who != strings.ToLower(user) {
		t.Fatalf("signed in as %q, want %q", who, user)
	}
	p.shot("signed-in")
	api := s.client(t)
	r := api.json("POST", "/api/v1/auth/login", map[string]string{"username": user, "password": password})
	if r.Status != 200 {
		t.Fatalf("login through the API: %d %s", r.Status, r.Body)
	}
	api.token = r.JSON(t)["token"].(string)

	// Upload with a tag and grade with the fashion model.
	dir := t.TempDir()
	imgPath := filepath.Join(dir, "shirt.png")
	if err := os.WriteFile(imgPath, pngImage(t, 200, 160), 0o600); err != nil {
		t.Fatal(err)
	}
	tag := "web-" + user
	p.poll("the model list", `[...document.querySelectorAll('option')].some((o) => o.value === 'fashion')`)
	p.do("upload and grade",
		chromedp.SetUploadFiles("Image", []string{imgPath}, named("button", "Image")),
		chromedp.SendKeys("Tags", tag, named("textbox", "Tags")),
		chromedp.SetValue("Model", "fashion", named("combobox", "Model")),
		chromedp.Click("Grade", named("button", "Grade")))
	shown := p.text(`(async () => {
		for (;;) {
			const el = document.querySelector('#results .predicted-label, #results .error');
			if (el) return el.classList.contains('error') ? 'error: ' + el.textContent : el.textContent;
			await new Promise((r) => setTimeout(r, 100));
		}
	})()`)
	p.shot("graded")
	imgs := api.do("GET", "/api/v1/images?tag="+tag, nil, nil)
	var page struct {
		Data []struct {
			ID string `json:"img_id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(imgs.Body, &page); err != nil || len(page.Data) != 1 {
		t.Fatalf("catalogue by tag %s after the upload: %d %s", tag, imgs.Status, imgs.Body)
	}
	imgID := page.Data[0].ID
	gr := api.do("GET", "/api/v1/grades?image_id="+imgID, nil, nil)
	var grades struct {
		Data []struct {
			ID           string `json:"id"`
			Label        string `json:"label"`
			ModelVersion string `json:"model_version"`
		} `json:"data"`
	}
	if err := json.Unmarshal(gr.Body, &grades); err != nil || len(grades.Data) == 0 {
		t.Fatalf("the page's grade is not a grade of the catalogue image %s: %d %s", imgID, gr.Status, gr.Body)
	}
	g := grades.Data[0]
	if shown != g.Label {
		t.Fatalf("the page shows %q, the grade is %q", shown, g.Label)
	}
	meta := p.text(`document.querySelector('#results .meta').textContent`)
	if want := "fashion@" + g.ModelVersion; !strings.HasPrefix(meta, want+" · ") || !strings.HasSuffix(meta, " ms") {
		t.Fatalf("result meta %q, want %s and the latency", meta, want)
	}
	if n := p.number(`document.querySelectorAll('#results .bars li').length`); n != 5 {
		t.Fatalf("%v bars, want the top 5 labels", n)
	}

	// The catalogue filtered by the tag, then the image.
	p.do("catalogue", chromedp.Click("Catalogue", named("link", "Catalogue")),
		chromedp.SendKeys("Filter by tag", tag, named("textbox", "Filter by tag")),
		chromedp.Click("Filter", named("button", "Filter")))
	p.poll("the filtered grid", `location.hash.includes('tag=') && document.querySelectorAll('#grid li').length === 1 && document.querySelector('#grid img').complete && document.querySelector('#grid img').naturalWidth > 0`)
	p.shot("catalogue")
	p.do("open the image", chromedp.Click(chromedp.CSS(`#grid a`)))
	p.poll("the image with its prediction", `document.getElementById('photo').naturalWidth === 200 && document.querySelector('#predictions .predicted-label') !== null`)
	if got := p.text(`document.querySelector('#predictions .predicted-label').textContent`); got != g.Label {
		t.Fatalf("the image's prediction reads %q, want %q", got, g.Label)
	}
	p.shot("image")

	// Draw two boxes, delete the second, label and move the first, save.
	box := p.rect(`document.querySelector('svg[aria-label^="Annotation canvas"]')`)
	scale := box.W / 200 // screen pixels per image pixel
	at := func(ix, iy float64) (float64, float64) { return box.X + ix*scale, box.Y + iy*scale }
	p.drag(at(20, 30))(at(120, 110))
	p.drag(at(150, 20))(at(190, 60))
	p.do("second box drawn", chromedp.WaitVisible("Box 2 label", named("textbox", "Box 2 label")))
	p.shot("boxes-drawn")
	p.do("delete the second box, label the first",
		chromedp.Click("Delete box 2", named("button", "Delete box 2")),
		chromedp.WaitNotPresent(chromedp.CSS("#boxes li:nth-child(2)")),
		chromedp.Clear("Box 1 label", named("textbox", "Box 1 label")),
		chromedp.SendKeys("Box 1 label", "shirt-front", named("textbox", "Box 1 label")),
		chromedp.SendKeys("Label", "shirt", named("textbox", "Label")))
	p.drag(at(70, 70))(at(80, 75)) // move: +10, +5 image pixels
	p.shot("box-moved")
	p.do("save", chromedp.Click("Save annotation", named("button", "Save annotation")))
	p.poll("the saved annotation", `document.querySelectorAll('#annotations .ann-label').length === 1`)
	p.shot("annotation-saved")
	anns := annotationsOf(t, api, imgID)
	if len(anns) != 1 {
		t.Fatalf("%d annotations, want 1: %v", len(anns), anns)
	}
	var saved struct {
		Label string `json:"label"`
		Boxes []struct {
			Label               string
			X, Y, Width, Height float64
		} `json:"boxes"`
	}
	if err := json.Unmarshal(anns[0].Annotation, &saved); err != nil {
		t.Fatal(err)
	}
	near := func(got, want float64) bool { return got >= want-2 && got <= want+2 }
	if saved.Label != "shirt" || len(saved.Boxes) != 1 || saved.Boxes[0].Label != "shirt-front" ||
		!near(saved.Boxes[0].X, 30) || !near(saved.Boxes[0].Y, 35) || !near(saved.Boxes[0].Width, 100) || !near(saved.Boxes[0].Height, 80) {
		t.Fatalf("saved %s, want label shirt and one box shirt-front at (30,35) 100x80 (±2 px)", anns[0].Annotation)
	}

	// Accept the prediction.
	if !routes["POST /api/v1/images/{id}/annotations/from-prediction"] {
		t.Skip("POST /api/v1/images/{id}/annotations/from-prediction is not served: accepting a prediction, the review queue and the exports are not tested")
	}
	p.do("accept", chromedp.Click("Accept", named("button", "Accept")))
	p.poll("the accepted prediction", `document.querySelectorAll('#annotations .ann-label').length === 2`)
	p.shot("prediction-accepted")
	var fromGrade []string
	for _, a := range annotationsOf(t, api, imgID) {
		var st struct {
			Label     string `json:"label"`
			FromGrade string `json:"from_grade"`
		}
		_ = json.Unmarshal(a.Annotation, &st)
		if st.FromGrade != "" {
			fromGrade = append(fromGrade, st.FromGrade+"="+st.Label)
		}
	}
	if want := []string{g.ID + "=" + g.Label}; !slices.Equal(fromGrade, want) {
		t.Fatalf("annotations from predictions %v, want %v", fromGrade, want)
	}

	// A second image dropped on the upload view and graded: graded, not
	// annotated, it is the review queue's.
	secondPath := filepath.Join(dir, "second.png")
	if err := os.WriteFile(secondPath, pngImage(t, 64, 48), 0o600); err != nil {
		t.Fatal(err)
	}
	p.do("upload view", chromedp.Click("Upload", named("link", "Upload")), chromedp.WaitVisible("Grade", named("button", "Grade")))
	drop := p.rect(`document.getElementById('drop')`)
	p.drop(drop.X+drop.W/2, drop.Y+drop.H/2, secondPath)
	p.poll("the dropped file", `document.querySelector('[aria-label="Images to send"]').textContent.includes('second.png')`)
	p.do("grade the dropped image", chromedp.Click("Grade", named("button", "Grade")))
	p.poll("the second grade", `document.querySelectorAll('#results .predicted-label').length === 2`)
	p.shot("dropped-and-graded")
	second := api.do("GET", "/api/v1/images?tag="+tag, nil, nil)
	var both struct {
		Data []struct {
			ID       string `json:"img_id"`
			Filename string `json:"filename"`
		} `json:"data"`
	}
	if err := json.Unmarshal(second.Body, &both); err != nil || len(both.Data) != 2 || both.Data[0].Filename != "second.png" {
		t.Fatalf("the catalogue by tag after the drop: %d %s", second.Status, second.Body)
	}
	secondID := both.Data[0].ID
	if routes["GET /api/v1/review"] {
		// The queue is read from ClickHouse, which follows the streams:
		// wait until it has the grades and the annotations of both images.
		eventually(t, "the review queue to hold only the second image", time.Minute, func() bool {
			r := api.do("GET", "/api/v1/review?unannotated=1", nil, nil)
			var q struct {
				Data []struct {
					Image struct {
						ID string `json:"img_id"`
					} `json:"image"`
				} `json:"data"`
			}
			return json.Unmarshal(r.Body, &q) == nil && len(q.Data) == 1 && q.Data[0].Image.ID == secondID
		})
		p.do("review", chromedp.Click("Review", named("link", "Review")))
		p.poll("the review queue", `document.getElementById('review-photo').naturalWidth === 64`)
		p.shot("review")
		p.do("accept by keyboard", chromedp.KeyEvent("a"))
		p.poll("the queue after accepting", `!document.getElementById('review-empty').hidden || document.getElementById('review-photo').naturalWidth !== 64`)
		p.shot("review-accepted")
		if got := annotationsOf(t, api, secondID); len(got) != 1 {
			t.Fatalf("the second image has %d annotations after A in the review queue, want 1", len(got))
		}
	} else {
		t.Log("GET /api/v1/review is not served: the review queue is not tested")
	}

	// The exports of the tag.
	p.do("exports", chromedp.Click("Exports", named("link", "Exports")),
		chromedp.SendKeys("Tag", tag, named("textbox", "Tag")))
	p.shot("exports")
	var labelStudio []byte
	for _, ex := range []struct {
		route, button string
		check         func(t *testing.T, body []byte)
	}{
		{"GET /api/v1/exports/coco", "Download COCO", func(t *testing.T, body []byte) {
			var coco struct {
				Images []struct {
					ID            any
					Width, Height int
				}
				Annotations []struct {
					Bbox []float64
				}
				Categories []struct{ Name string }
			}
			if err := json.Unmarshal(body, &coco); err != nil {
				t.Fatalf("COCO: %v: %.300s", err, body)
			}
			var cats []string
			for _, c := range coco.Categories {
				cats = append(cats, c.Name)
			}
			var boxes int
			for _, a := range coco.Annotations {
				if len(a.Bbox) == 4 && near(a.Bbox[0], 30) && near(a.Bbox[2], 100) {
					boxes++
				}
			}
			if len(coco.Images) != 2 || boxes != 1 || !slices.Contains(cats, "shirt-front") {
				t.Fatalf("COCO: %d images (want 2), %d boxes at (30,35) 100x80 (want 1), categories %v: %.500s", len(coco.Images), boxes, cats, body)
			}
		}},
		{"GET /api/v1/exports/yolo", "Download YOLO", func(t *testing.T, body []byte) {
			zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
			if err != nil {
				t.Fatalf("YOLO: not a zip: %v", err)
			}
			var names []string
			for _, f := range zr.File {
				names = append(names, f.Name)
			}
			labels := 0
			for _, n := range names {
				if strings.HasPrefix(n, "labels/") && strings.HasSuffix(n, ".txt") {
					labels++
				}
			}
			if !slices.Contains(names, "classes.txt") || labels != 2 {
				t.Fatalf("YOLO zip holds %v, want classes.txt and two labels/*.txt", names)
			}
		}},
		{"GET /api/v1/exports/labelstudio", "Download Label Studio", func(t *testing.T, body []byte) {
			var tasks []struct {
				Data struct{ Image string } `json:"data"`
			}
			if err := json.Unmarshal(body, &tasks); err != nil || len(tasks) != 2 || tasks[0].Data.Image == "" {
				t.Fatalf("Label Studio: %v, %d tasks: %.300s", err, len(tasks), body)
			}
			labelStudio = body
		}},
	} {
		if !routes[ex.route] {
			t.Logf("%s is not served: %q is not tested", ex.route, ex.button)
			continue
		}
		body := p.download(ex.button)
		ex.check(t, body)
	}
	p.shot("exported")

	// Import from Label Studio: the export comes back with one task a
	// person labelled there; what came from gradeline is not taken twice.
	if labelStudio == nil || !routes["POST /api/v1/imports/labelstudio"] {
		t.Log("the Label Studio export or import is not served: the import is not tested")
		return
	}
	var tasks []any
	if err := json.Unmarshal(labelStudio, &tasks); err != nil {
		t.Fatal(err)
	}
	tasks = append(tasks, map[string]any{
		"data":        map[string]any{"image": "/api/v1/images/" + secondID + "/content"},
		"annotations": []any{map[string]any{"result": []any{map[string]any{"type": "choices", "value": map[string]any{"choices": []string{"sneaker"}}}}}},
	})
	tasksPath := filepath.Join(dir, "from-label-studio.json")
	b, _ := json.Marshal(tasks)
	if err := os.WriteFile(tasksPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p.do("import", chromedp.SetUploadFiles("Label Studio tasks", []string{tasksPath}, named("button", "Label Studio tasks")),
		chromedp.Click("Import", named("button", "Import")))
	p.poll("the import's answer", `document.getElementById('import-result').textContent !== '' || document.getElementById('import-error').textContent !== ''`)
	p.shot("imported")
	if got := p.text(`document.getElementById('import-result').textContent`); !strings.HasPrefix(got, "Imported 1 annotation;") {
		t.Fatalf("import says %q%s, want 1 imported and the exported ones skipped", got, p.pageErrors())
	}
	var labels []string
	for _, a := range annotationsOf(t, api, secondID) {
		var st struct {
			Label string `json:"label"`
		}
		_ = json.Unmarshal(a.Annotation, &st)
		labels = append(labels, st.Label)
	}
	if !slices.Contains(labels, "sneaker") {
		t.Fatalf("labels of the second image after the import: %v, want sneaker among them", labels)
	}
}

// documentedRoutes lists "METHOD /path" and "METHOD /path media-type" of
// the OpenAPI document: which of the routes the page uses this edge serves,
// and which bodies they take.
func documentedRoutes(t *testing.T, s *testServer) map[string]bool {
	t.Helper()
	r := s.client(t).do("GET", "/openapi.json", nil, nil)
	var doc struct {
		Paths map[string]map[string]struct {
			RequestBody struct {
				Content map[string]any `json:"content"`
			} `json:"requestBody"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(r.Body, &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for p, ops := range doc.Paths {
		for m, op := range ops {
			out[strings.ToUpper(m)+" "+p] = true
			for media := range op.RequestBody.Content {
				out[strings.ToUpper(m)+" "+p+" "+media] = true
			}
		}
	}
	return out
}

type storedAnnotation struct {
	ID         string          `json:"id"`
	Annotation json.RawMessage `json:"annotation"`
}

func annotationsOf(t *testing.T, c *client, imageID string) []storedAnnotation {
	t.Helper()
	r := c.do("GET", "/api/v1/annotations?image_id="+imageID, nil, nil)
	var page struct {
		Data []storedAnnotation `json:"data"`
	}
	if err := json.Unmarshal(r.Body, &page); err != nil || r.Status != 200 {
		t.Fatalf("annotations of %s: %d %s", imageID, r.Status, r.Body)
	}
	return page.Data
}

// named finds elements by their accessible name (and role, unless empty),
// as assistive technology does: the browser's accessibility tree answers.
// Accessibility.queryAXTree misses some controls (a file input's button),
// so the form controls are then asked one by one.
func named(role, name string) chromedp.QueryOption {
	return chromedp.ByFunc(func(ctx context.Context, t *chromedp.Target, n *chromedp.Node) ([]cdp.NodeID, error) {
		res, err := cdp.Call(ctx, t, accessibility.QueryAXTree, accessibility.QueryAXTreeParams{NodeID: n.NodeID, AccessibleName: name, Role: role})
		if err != nil {
			return nil, err
		}
		for _, an := range res.Nodes {
			if an.Ignored || an.BackendDOMNodeID == 0 {
				continue
			}
			pushed, err := cdp.Call(ctx, t, dom.PushNodesByBackendIDsToFrontend,
				dom.PushNodesByBackendIDsToFrontendParams{BackendNodeIDs: []cdp.BackendNodeID{an.BackendDOMNodeID}})
			return pushed.NodeIDs, err
		}
		controls, err := cdp.Call(ctx, t, dom.QuerySelectorAll, dom.QuerySelectorAllParams{NodeID: n.NodeID, Selector: "input, select, textarea, button"})
		if err != nil {
			return nil, err
		}
		for _, id := range controls.NodeIDs {
			ax, err := cdp.Call(ctx, t, accessibility.GetPartialAXTree, accessibility.GetPartialAXTreeParams{NodeID: id, FetchRelatives: new(false)})
			if err != nil || len(ax.Nodes) == 0 {
				continue
			}
			an := ax.Nodes[0]
			if !an.Ignored && axString(an.Name) == name && (role == "" || axString(an.Role) == role) {
				return []cdp.NodeID{id}, nil
			}
		}
		return nil, nil
	})
}

// axString is the text of an accessibility value.
func axString(v *accessibility.Value) string {
	if v == nil {
		return ""
	}
	var s string
	if json.Unmarshal(v.Value, &s) != nil {
		return ""
	}
	return s
}

// browserPage is one tab of a headless Chromium with the page open.
type browserPage struct {
	t         *testing.T
	ctx       context.Context
	shots     string
	n         int
	downloads string

	mu       sync.Mutex
	problems []string
}

// openBrowser starts Chromium with a fresh profile and opens url. The
// browser stops when the test ends.
func openBrowser(t *testing.T, exe, url string) *browserPage {
	t.Helper()
	dir := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe), chromedp.UserDataDir(filepath.Join(dir, "profile")),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	p := &browserPage{t: t, ctx: ctx, shots: filepath.Join(dir, "screenshots"), downloads: filepath.Join(dir, "downloads")}
	for _, d := range []string{p.shots, p.downloads} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Script errors and CSP violations fail the test at the end.
	if err := chromedp.Listen(ctx, func(ev any) {
		var msg string
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			msg = (&chromedp.ExceptionError{ExceptionDetails: e.ExceptionDetails}).Error()
		case *log.EventEntryAdded:
			if e.Entry.Source == log.EntrySourceSecurity || strings.Contains(e.Entry.Text, "Content Security Policy") {
				msg = "security: " + e.Entry.Text
			}
		}
		if msg != "" {
			p.mu.Lock()
			p.problems = append(p.problems, msg)
			p.mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("starting %s: %v", exe, err)
	}
	p.do("open the page",
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, log.Enable, cdp.Empty{})
			return err
		}),
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			_, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
				Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: p.downloads, EventsEnabled: new(true)})
			return err
		}),
		chromedp.Navigate(url))
	t.Logf("screenshots in %s", p.shots)
	t.Cleanup(p.noProblems) // runs before the browser stops
	return p
}

// do runs the actions, each step bounded so that a page that never shows
// what the test waits for fails instead of hanging.
func (p *browserPage) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 90*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.failShot(what)
		p.t.Fatalf("%s: %v%s", what, err, p.pageErrors())
	}
}

func (p *browserPage) failShot(what string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		name := filepath.Join(p.shots, "failed-"+strings.ReplaceAll(what, " ", "-")+".png")
		if os.WriteFile(name, png, 0o644) == nil {
			p.t.Logf("screenshot of the failure: %s", name)
		}
	}
}

// pageErrors is what the page shows in its alerts, for failure messages.
func (p *browserPage) pageErrors() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](
		`[...document.querySelectorAll('[role=alert], #status')].map((e) => e.textContent.trim()).filter(Boolean).join(' | ')`))
	if s == "" {
		return ""
	}
	return " (page says: " + s + ")"
}

// shot writes a numbered screenshot of the whole page.
func (p *browserPage) shot(step string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", step, err)
	}
	p.n++
	if err := os.WriteFile(filepath.Join(p.shots, fmt.Sprintf("%02d-%s.png", p.n, step)), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// text evaluates a JavaScript expression (awaited if a promise) to a string.
func (p *browserPage) text(expr string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 90*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		p.failShot("evaluate")
		p.t.Fatalf("%s: %v%s", expr, err, p.pageErrors())
	}
	return s
}

func (p *browserPage) number(expr string) float64 {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	n, err := chromedp.Run(ctx, chromedp.Evaluate[float64](expr))
	if err != nil {
		p.t.Fatalf("%s: %v", expr, err)
	}
	return n
}

// poll waits until the expression is true in the page.
func (p *browserPage) poll(what, expr string) {
	p.t.Helper()
	p.do(what, func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(0))(ctx, t)
		return chromedp.Void{}, err
	})
}

type screenRect struct{ X, Y, W, H float64 }

func (p *browserPage) rect(elementExpr string) screenRect {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	r, err := chromedp.Run(ctx, chromedp.Evaluate[screenRect](`(() => { const r = (`+elementExpr+`).getBoundingClientRect(); return {X: r.x, Y: r.y, W: r.width, H: r.height}; })()`))
	if err != nil || r.W == 0 {
		p.t.Fatalf("%s: %v (%+v)", elementExpr, err, r)
	}
	return r
}

// drag presses the left button at one point and releases it at another,
// moving in steps as a hand does: drag(x0, y0)(x1, y1).
func (p *browserPage) drag(x0, y0 float64) func(x1, y1 float64) {
	return func(x1, y1 float64) {
		p.t.Helper()
		held := func(params *input.DispatchMouseEventParams) {
			params.Button, params.Buttons, params.ClickCount = input.MouseButtonLeft, 1, 1
		}
		steps := []chromedp.Action[chromedp.Void]{
			chromedp.MouseEvent(chromedp.MouseMoved, x0, y0),
			chromedp.MouseEvent(chromedp.MousePressed, x0, y0, held),
		}
		for i := 1; i <= 5; i++ {
			f := float64(i) / 5
			steps = append(steps, chromedp.MouseEvent(chromedp.MouseMoved, x0+(x1-x0)*f, y0+(y1-y0)*f, held))
		}
		steps = append(steps, chromedp.MouseEvent(chromedp.MouseReleased, x1, y1, held))
		p.do(fmt.Sprintf("drag (%.0f,%.0f) to (%.0f,%.0f)", x0, y0, x1, y1), steps...)
	}
}

// drop drags files from outside the page and drops them at x, y.
func (p *browserPage) drop(x, y float64, files ...string) {
	p.t.Helper()
	data := &input.DragData{Items: []*input.DragDataItem{}, Files: files, DragOperationsMask: 1}
	var steps []chromedp.Action[chromedp.Void]
	for _, typ := range []input.DispatchDragEventType{input.DispatchDragEventTypeDragEnter, input.DispatchDragEventTypeDragOver, input.DispatchDragEventTypeDrop} {
		steps = append(steps, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := cdp.Call(ctx, t, input.DispatchDragEvent, input.DispatchDragEventParams{Type: typ, X: x, Y: y, Data: data})
			return err
		}))
	}
	p.do("drop "+strings.Join(files, ", "), steps...)
}

// download clicks the button and returns the bytes of the file the page
// saves.
func (p *browserPage) download(button string) []byte {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 90*time.Second)
	defer cancel()
	progress := chromedp.BrowserEvents(ctx, browser.DownloadProgress)
	p.do(button, chromedp.Click(button, named("button", button)))
	for ev, err := range progress {
		if err != nil {
			p.failShot(button)
			p.t.Fatalf("%s: no download: %v%s", button, err, p.pageErrors())
		}
		switch ev.State {
		case browser.DownloadProgressStateCompleted:
			body, err := os.ReadFile(filepath.Join(p.downloads, ev.GUID))
			if err != nil {
				p.t.Fatalf("%s: %v", button, err)
			}
			return body
		case browser.DownloadProgressStateCanceled:
			p.t.Fatalf("%s: download canceled", button)
		}
	}
	p.t.Fatalf("%s: no download", button)
	return nil
}

// noProblems fails the test for script errors and CSP violations seen.
func (p *browserPage) noProblems() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.problems {
		p.t.Errorf("page problem: %s", m)
	}
}
