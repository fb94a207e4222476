package ingest_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/inference"
	"github.com/gradeline/gradeline/ingest"
)

var inferenceOnce serviceOnce

// needInference starts the real inference service (ONNX Runtime, the
// shipped models) once for the test binary.
func needInference(t *testing.T) {
	t.Helper()
	inferenceOnce.once.Do(func() {
		lib := os.Getenv("ONNXRUNTIME_LIB")
		if lib == "" {
			inferenceOnce.err = fmt.Errorf("ONNXRUNTIME_LIB is not set: run `make install` (or `make test`, which sets it)")
			return
		}
		if _, err := os.Stat(lib); err != nil {
			inferenceOnce.err = fmt.Errorf("ONNXRUNTIME_LIB: %v: run `make install`", err)
			return
		}
		inferenceOnce.err = startService("inference", func(ctx context.Context) error {
			return inference.Run(ctx, inference.Config{NATSURL: natsURL, ORTLib: lib, Logger: quiet, Registerer: prometheus.NewRegistry()})
		}, bus.SvcModelsList, bus.ModelsQuery{})
	})
	if inferenceOnce.err != nil {
		t.Fatal(inferenceOnce.err)
	}
}

func checkCompleted(t *testing.T, g map[string]any, model string) {
	t.Helper()
	if g["status"] != "completed" || g["model"] != model || g["id"] == "" || g["model_version"] == "" {
		t.Fatalf("grade %v", g)
	}
	scores, _ := g["scores"].(map[string]any)
	label, _ := g["label"].(string)
	if _, ok := scores[label]; !ok || len(scores) < 2 {
		t.Fatalf("label %q not among scores %v", label, scores)
	}
	sum := 0.0
	for _, v := range scores {
		sum += v.(float64)
	}
	if math.Abs(sum-1) > 1e-3 {
		t.Fatalf("scores sum to %v", sum)
	}
	if _, ok := g["inference_ms"].(float64); !ok {
		t.Fatalf("no inference_ms: %v", g)
	}
}

func TestGradesEndToEnd(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)

	r := c.do("GET", "/api/v1/models", nil, nil)
	if r.Status != 200 {
		t.Fatalf("models: %d %s", r.Status, r.Body)
	}
	names := map[string]bool{}
	for _, m := range r.JSON(t)["data"].([]any) {
		mm := m.(map[string]any)
		names[mm["name"].(string)] = true
		if len(mm["labels"].([]any)) < 2 || mm["input"].(map[string]any)["width"].(float64) <= 0 {
			t.Fatalf("model %v", mm)
		}
	}
	if !names["fashion"] || !names["digits"] {
		t.Fatalf("models %v", names)
	}

	for _, tc := range []struct {
		name, model string
		file        filePart
	}{
		{"generated PNG", "fashion", filePart{"image", "g.png", pngImage(t, 28, 28)}},
		{"generated JPEG", "digits", filePart{"image", "g.jpg", jpegImage(t, 64, 48)}},
		{"WebP", "fashion", filePart{"image", "w.webp", webpImage(t)}},
		{"retina photograph", "fashion", filePart{"image", "retina.jpg", datasetImage(t, "retina.jpg")}},
		{"flower photograph", "digits", filePart{"image", "flower.jpg", datasetImage(t, "flower.jpg")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", tc.model}}, tc.file)
			if r.Status != 200 {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
			checkCompleted(t, r.JSON(t), tc.model)
		})
	}

	t.Run("model@version", func(t *testing.T) {
		png := filePart{"image", "v.png", pngImage(t, 28, 28)}
		r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion@1"}}, png)
		if r.Status != 200 {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		g := r.JSON(t)
		checkCompleted(t, g, "fashion")
		if g["model_version"] != "1" {
			t.Errorf("model_version %v, want the served 1", g["model_version"])
		}
		// The listing names every version with its state.
		var versions []any
		for _, m := range c.do("GET", "/api/v1/models", nil, nil).JSON(t)["data"].([]any) {
			if mm := m.(map[string]any); mm["name"] == "fashion" {
				versions, _ = mm["versions"].([]any)
			}
		}
		if len(versions) != 1 || versions[0].(map[string]any)["version"] != "1" || versions[0].(map[string]any)["state"] != "READY" {
			t.Errorf("fashion versions %v", versions)
		}
		for _, tc := range []struct {
			model  string
			status int
			msg    string
		}{
			{"fashion@7", 404, `model "fashion" has no version "7"; served versions: 1`},
			{"nosuch@1", 404, `unknown model "nosuch"`},
			{"fashion@", 422, "invalid model name"},
			{"fashion@a b", 422, "invalid model name"},
			{"fashion@1@2", 422, "invalid model name"},
		} {
			t.Run(tc.model, func(t *testing.T) {
				r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", tc.model}}, png)
				if msg := expectError(t, r, tc.status); !strings.Contains(msg, tc.msg) {
					t.Errorf("message %q, want it to contain %q", msg, tc.msg)
				}
			})
		}
	})

	t.Run("seed alias with model_selected", func(t *testing.T) {
		r := c.multipart("POST", "/api/grade", [][2]string{{"model_selected", "fashion"}}, filePart{"image", "x.png", pngImage(t, 28, 28)})
		if r.Status != 200 {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		checkCompleted(t, r.JSON(t), "fashion")
	})

	t.Run("no wait, then poll", func(t *testing.T) {
		r := c.multipart("POST", "/api/v1/grades?wait=0", [][2]string{{"model", "fashion"}}, filePart{"image", "x.png", pngImage(t, 30, 30)})
		if r.Status != http.StatusAccepted {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		pending := r.JSON(t)
		loc := r.Header.Get("Location")
		if pending["status"] != "pending" || loc != "/api/v1/grades/"+pending["id"].(string) {
			t.Fatalf("202 body %v Location %q", pending, loc)
		}
		var g map[string]any
		eventually(t, "grade completed", 30*time.Second, func() bool {
			r := c.do("GET", loc, nil, nil)
			switch r.Status {
			case 200:
				g = r.JSON(t)
				return true
			case 202:
				if r.JSON(t)["status"] != "pending" {
					t.Fatalf("202 body %s", r.Body)
				}
				return false
			default:
				t.Fatalf("poll: %d %s", r.Status, r.Body)
				return false
			}
		})
		checkCompleted(t, g, "fashion")
		// Another user cannot see it.
		other, _ := s.newUser(t)
		expectError(t, other.do("GET", loc, nil, nil), 404)
		// The history (annotator) has it too, as seen by a second ingest replica.
		s2 := startIngest(t)
		c2 := s2.client(t)
		c2.token = c.token
		var last string
		defer func() {
			if t.Failed() {
				t.Logf("last history answer: %s", last)
			}
		}()
		eventually(t, "grade in the history", 30*time.Second, func() bool {
			r := c2.do("GET", loc, nil, nil)
			last = fmt.Sprintf("%d %s", r.Status, r.Body)
			return r.Status == 200 && r.JSON(t)["label"] == g["label"]
		})
	})

	t.Run("concurrent submissions get their own results", func(t *testing.T) {
		var wg sync.WaitGroup
		ids := make(chan string, 16)
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "x.png", pngImage(t, 20+i, 28)})
				if r.Status != 200 {
					t.Errorf("%d %s", r.Status, r.Body)
					return
				}
				ids <- r.JSON(t)["id"].(string)
			}()
		}
		wg.Wait()
		close(ids)
		seen := map[string]bool{}
		for id := range ids {
			if seen[id] {
				t.Fatalf("grade id %s answered twice", id)
			}
			seen[id] = true
		}
	})

	t.Run("truncated JPEG fails with the reason", func(t *testing.T) {
		photo := datasetImage(t, "retina.jpg")
		r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "t.jpg", photo[:len(photo)/3]})
		msg := expectError(t, r, 422)
		b := r.JSON(t)
		if b["status"] != "failed" || b["reason"] == "" || b["id"] == "" {
			t.Fatalf("failed grade body %v (%s)", b, msg)
		}
		r = c.do("GET", "/api/v1/grades/"+b["id"].(string), nil, nil)
		if r.Status != 200 || r.JSON(t)["status"] != "failed" || r.JSON(t)["reason"] == "" {
			t.Fatalf("GET failed grade: %d %s", r.Status, r.Body)
		}
	})

	t.Run("unknown model names the available ones", func(t *testing.T) {
		r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "resnet"}}, filePart{"image", "x.png", pngImage(t, 28, 28)})
		msg := expectError(t, r, 404)
		if !strings.Contains(msg, "fashion") || !strings.Contains(msg, "digits") || !strings.Contains(msg, "resnet") {
			t.Fatalf("message %q", msg)
		}
	})
}

func TestGradeBadInputs(t *testing.T) {
	needInference(t)
	s := startIngest(t, func(c *ingest.Config) { c.MaxBodyBytes = 1 << 20 })
	c, _ := s.newUser(t)
	png := pngImage(t, 28, 28)
	for _, tc := range []struct {
		name   string
		query  string
		fields [][2]string
		files  []filePart
		status int
		detail string
	}{
		{"missing model", "", nil, []filePart{{"image", "a.png", png}}, 422, "model: required"},
		{"missing image", "", [][2]string{{"model", "fashion"}}, nil, 422, "image: required"},
		{"missing both", "", nil, nil, 422, "model: required"},
		{"text file", "", [][2]string{{"model", "fashion"}}, []filePart{{"image", "a.txt", []byte("just text")}}, 415, "text/plain"},
		{"html", "", [][2]string{{"model", "fashion"}}, []filePart{{"image", "a.html", []byte("<html><script>alert(1)</script></html>")}}, 415, "text/html"},
		{"zero bytes", "", [][2]string{{"model", "fashion"}}, []filePart{{"image", "a.png", nil}}, 422, "empty"},
		{"corrupt PNG", "", [][2]string{{"model", "fashion"}}, []filePart{{"image", "a.png", append([]byte("\x89PNG\r\n\x1a\n"), []byte("garbage-garbage-garbage-garbage")...)}}, 422, "decode"},
		{"decompression bomb", "", [][2]string{{"model", "fashion"}}, []filePart{{"image", "bomb.png", pngBomb(t)}}, 422, "100000x100000"},
		{"model name injection", "", [][2]string{{"model", "fashion; rm -rf /"}}, []filePart{{"image", "a.png", png}}, 422, "model"},
		{"model operator object", "", [][2]string{{"model", `{"$ne":null}`}}, []filePart{{"image", "a.png", png}}, 422, "model"},
		{"bad wait", "?wait=forever", [][2]string{{"model", "fashion"}}, []filePart{{"image", "a.png", png}}, 422, "wait"},
		{"wait too long", "?wait=3600", [][2]string{{"model", "fashion"}}, []filePart{{"image", "a.png", png}}, 422, "wait"},
		{"too large", "", [][2]string{{"model", "fashion"}}, []filePart{{"image", "big.png", append(append([]byte{}, png...), make([]byte, 2<<20)...)}}, 413, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.multipart("POST", "/api/v1/grades"+tc.query, tc.fields, tc.files...)
			if got := expectError(t, r, tc.status); !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
	expectError(t, c.json("POST", "/api/v1/grades", `{"model":"fashion"}`), 422) // JSON names a catalogue image
	expectError(t, c.do("POST", "/api/v1/grades", strings.NewReader("model=fashion"), map[string]string{"Content-Type": "text/plain"}), 415)
	expectError(t, c.do("GET", "/api/v1/grades/does-not-exist", nil, nil), 404)
	expectError(t, c.do("GET", "/api/v1/grades/a%20b", nil, nil), 404)
}

// TestGradeReadAfterWrite reads each grade right after its answer, with no
// retry: the edge keeps no copy of a grade, so what a GET sees is the
// annotator's record, read once the owner's submission and the results on
// the stream are stored. A grade submitted without waiting reads as
// pending or already graded, never unknown; one answered 200 reads as
// completed. A fresh edge (what a restart leaves: no memory of the
// submissions) reads them the same; another user gets 404.
func TestGradeReadAfterWrite(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	other, _ := s.newUser(t)
	type answer struct {
		id, label string
		status    int // of the POST
	}
	var answers []answer
	// check reads grade a through cl at once and compares with its POST.
	check := func(t *testing.T, cl *client, a answer) {
		t.Helper()
		r := cl.do("GET", "/api/v1/grades/"+a.id, nil, nil)
		switch {
		case r.Status == http.StatusOK:
			g := r.JSON(t)
			checkCompleted(t, g, "fashion")
			if g["id"] != a.id || (a.label != "" && g["label"] != a.label) {
				t.Fatalf("GET %s after %d: %v, label want %q", a.id, a.status, g, a.label)
			}
		case r.Status == http.StatusAccepted && a.status == http.StatusAccepted:
			if g := r.JSON(t); g["status"] != "pending" || g["id"] != a.id || g["model"] != "fashion" || g["submitted_at"] == nil {
				t.Fatalf("pending grade %s: %s", a.id, r.Body)
			}
		default:
			t.Fatalf("GET %s right after a %d: %d %s", a.id, a.status, r.Status, r.Body)
		}
	}
	for _, tc := range []struct {
		name, query string
		want        int
	}{
		{"submitted, not waited for", "?wait=0", http.StatusAccepted},
		{"graded before the answer", "", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 8 {
				r := c.multipart("POST", "/api/v1/grades"+tc.query, [][2]string{{"model", "fashion"}}, filePart{"image", "x.png", pngImage(t, 24+i, 28)})
				if r.Status != tc.want {
					t.Fatalf("POST: %d %s", r.Status, r.Body)
				}
				b := r.JSON(t)
				a := answer{id: b["id"].(string), status: r.Status}
				if r.Status == http.StatusOK {
					a.label = b["label"].(string)
				}
				check(t, c, a)
				expectError(t, other.do("GET", "/api/v1/grades/"+a.id, nil, nil), http.StatusNotFound)
				answers = append(answers, a)
			}
		})
	}
	t.Run("fresh edge", func(t *testing.T) {
		s2 := startIngest(t, func(cfg *ingest.Config) { cfg.Database = s.Cfg.Database })
		c2 := s2.client(t)
		c2.token = c.token
		o2 := s2.client(t)
		o2.token = other.token
		for _, a := range answers {
			check(t, c2, a)
			expectError(t, o2.do("GET", "/api/v1/grades/"+a.id, nil, nil), http.StatusNotFound)
		}
	})
}

// TestListGradesOfImage lists the grades of an image through the edge:
// the owner's grade, read right after its answer; nothing for another
// user; bad queries are 422.
func TestListGradesOfImage(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	other, _ := s.newUser(t)
	r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "a.png", pngImage(t, 28, 28)})
	if r.Status != 200 {
		t.Fatalf("grade: %d %s", r.Status, r.Body)
	}
	g := r.JSON(t)
	img := g["image_id"].(string)
	r = c.do("GET", "/api/v1/grades?image_id="+img, nil, nil)
	if r.Status != 200 {
		t.Fatalf("list: %d %s", r.Status, r.Body)
	}
	data := r.JSON(t)["data"].([]any)
	if len(data) != 1 || data[0].(map[string]any)["id"] != g["id"] || data[0].(map[string]any)["status"] != "completed" {
		t.Fatalf("listed %v, want the completed grade %v", data, g["id"])
	}
	r = other.do("GET", "/api/v1/grades?image_id="+img, nil, nil)
	if r.Status != 200 || len(r.JSON(t)["data"].([]any)) != 0 {
		t.Fatalf("another user: %d %s, want an empty list", r.Status, r.Body)
	}
	for _, tc := range []struct{ query, detail string }{
		{"", "image_id: required"},
		{"?image_id=a%20b", "image_id"},
		{"?image_id=" + img + "&cursor=nonsense", "cursor"},
		{"?image_id=" + img + "&per_page=0", "per_page"},
	} {
		if got := expectError(t, c.do("GET", "/api/v1/grades"+tc.query, nil, nil), 422); !strings.Contains(got, tc.detail) {
			t.Fatalf("%s: error %q lacks %q", tc.query, got, tc.detail)
		}
	}
}

// TestGradePendingOnlyWhenAnsweredBefore: a grade answered with its result
// leaves no grade.pending behind (its grade.completed is the whole grade,
// with the submission's time); a grade answered 202 has exactly one,
// published before the answer, naming the submission.
func TestGradePendingOnlyWhenAnsweredBefore(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	_, js, err := bus.Connect(context.Background(), natsURL, "grade-pending-test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	grade := func(query string, want int) string {
		r := c.multipart("POST", "/api/v1/grades"+query, [][2]string{{"model", "fashion"}}, filePart{"image", "x.png", pngImage(t, 28, 28)})
		if r.Status != want {
			t.Fatalf("POST %s: %d %s, want %d", query, r.Status, r.Body, want)
		}
		return r.JSON(t)["id"].(string)
	}
	answered, accepted := grade("", http.StatusOK), grade("?wait=0", http.StatusAccepted)

	pending := map[string][]*bus.GradePending{}
	for _, ev := range streamEvents(t, js, bus.StreamGrades, bus.SubjectGradePending) {
		p := ev.(*bus.GradePending)
		pending[p.GradeID] = append(pending[p.GradeID], p)
	}
	if n := len(pending[answered]); n != 0 {
		t.Errorf("a grade answered with its result has %d grade.pending events, want none", n)
	}
	sub := submission(t, js, accepted)
	if got := pending[accepted]; len(got) != 1 || got[0].Owner != sub.Owner || got[0].ImageID != sub.ImageID ||
		got[0].Model != "fashion" || !got[0].SubmittedAt.Equal(sub.Time) {
		t.Fatalf("grade.pending of the 202: %+v, want one naming %+v", got, sub)
	}
	// The result reaches the edge as the stream stores it: wait for it.
	want := submission(t, js, answered).Time
	eventually(t, "the answered grade's result in the GRADES stream", 5*time.Second, func() bool {
		for _, ev := range streamEvents(t, js, bus.StreamGrades, bus.SubjectGradeCompleted) {
			if g, ok := ev.(*bus.GradeCompleted); ok && g.GradeID == answered {
				if !g.SubmittedAt.Equal(want) {
					t.Fatalf("grade.completed submitted_at %s, want the submission's %s", g.SubmittedAt, want)
				}
				return true
			}
		}
		return false
	})
}
