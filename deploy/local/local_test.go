package local

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/internal/fixture"
)

// stack is a running local stack for one test.
type stack struct {
	t    *testing.T
	ep   Endpoints
	stop func()
}

func requireEnv(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if os.Getenv(n) == "" {
			t.Fatalf("%s is not set: run the tests with `make test` (it runs `make install` and sets it)", n)
		}
	}
}

// startStack runs Run on dir and waits until it is up.
func startStack(t *testing.T, dir string, mutate ...func(*Config)) *stack {
	t.Helper()
	requireEnv(t, "ONNXRUNTIME_LIB", "GRADELINE_CHDB_LAUNCHER", "GRADELINE_DATASETS_DIR")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Endpoints, 1)
	done := make(chan error, 1)
	cfg := Config{
		DataDir: dir, HTTPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", NATSAddr: "127.0.0.1:0",
		ORTLib: os.Getenv("ONNXRUNTIME_LIB"), ChdbLauncher: os.Getenv("GRADELINE_CHDB_LAUNCHER"),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnReady: func(ep Endpoints) { ready <- ep },
	}
	for _, f := range mutate {
		f(&cfg)
	}
	go func() { done <- Run(ctx, cfg) }()
	s := &stack{t: t}
	select {
	case s.ep = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("stack did not start: %v", err)
	case <-time.After(3 * time.Minute):
		cancel()
		t.Fatal("stack did not start within 3 minutes")
	}
	var once bool
	s.stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after shutdown", err)
			}
		case <-time.After(2 * time.Minute):
			t.Error("stack did not shut down within 2 minutes")
		}
	}
	t.Cleanup(s.stop)
	return s
}

type client struct {
	t     *testing.T
	base  string
	token string
}

// do sends a request and decodes a JSON reply into out (when not nil).
func (c *client) do(method, path string, body any, out any) (int, http.Header) {
	c.t.Helper()
	var rd io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case *multipartBody:
		rd, ctype = bytes.NewReader(b.buf.Bytes()), b.ctype
	default:
		raw, _ := json.Marshal(b)
		rd, ctype = bytes.NewReader(raw), "application/json"
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	if resp.StatusCode >= 500 {
		c.t.Fatalf("%s %s: server error %d %s", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, resp.Header
}

type multipartBody struct {
	buf   bytes.Buffer
	ctype string
}

func multipartOf(t *testing.T, fields map[string]string, fileField, fileName string, data []byte) *multipartBody {
	t.Helper()
	b := &multipartBody{}
	w := multipart.NewWriter(&b.buf)
	for k, v := range fields {
		_ = w.WriteField(k, v)
	}
	fw, err := w.CreateFormFile(fileField, fileName)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(data)
	_ = w.Close()
	b.ctype = w.FormDataContentType()
	return b
}

func (s *stack) user(name string) *client {
	c := &client{t: s.t, base: s.ep.HTTP}
	var tok struct {
		Token string `json:"token"`
	}
	code, _ := c.do("POST", "/api/v1/auth/register", map[string]string{"username": name, "password": "correct horse battery", "signupCode": DefaultSignupCode}, &tok)
	if code == http.StatusConflict {
		code, _ = c.do("POST", "/api/v1/auth/login", map[string]string{"username": name, "password": "correct horse battery"}, &tok)
	}
	if tok.Token == "" {
		s.t.Fatalf("no token for %s (status %d)", name, code)
	}
	c.token = tok.Token
	return c
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dataset(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(os.Getenv("GRADELINE_DATASETS_DIR"), rel))
	if err != nil {
		t.Fatalf("%v (run `make install`)", err)
	}
	return b
}

type grade struct {
	ID          string             `json:"id"`
	Status      string             `json:"status"`
	Model       string             `json:"model"`
	Label       string             `json:"label"`
	Scores      map[string]float64 `json:"scores"`
	InferenceMS float64            `json:"inference_ms"`
}

// TestLocalStackEndToEnd walks every capability through HTTP against the
// real embedded servers, restarts the stack on the same data directory,
// and replays a stream into a dropped collection.
func TestLocalStackEndToEnd(t *testing.T) {
	dir := t.TempDir()
	s := startStack(t, dir)
	ada := s.user("ada@example.com")
	bob := s.user("bob")

	// Docs and the OpenAPI document are served.
	anon := &client{t: t, base: s.ep.HTTP}
	var doc struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	if code, _ := anon.do("GET", "/openapi.json", nil, &doc); code != 200 || !strings.HasPrefix(doc.OpenAPI, "3.") || len(doc.Paths) < 20 {
		t.Fatalf("openapi: %d %q %d paths", code, doc.OpenAPI, len(doc.Paths))
	}
	resp, err := http.Get(s.ep.HTTP + "/docs")
	if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("docs: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Get(s.ep.Admin + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
	resp.Body.Close()

	// Annotations: accepted after the PubAck, then readable.
	var ids []string
	for i := range 5 {
		var r struct{ ID, Status string }
		code, _ := ada.do("POST", "/api/v1/annotations", map[string]any{"annotation": map[string]any{"box": []int{i, i, 10, 10}, "label": "cat"}}, &r)
		if code != http.StatusAccepted || r.Status != "accepted" || r.ID == "" {
			t.Fatalf("annotate: %d %+v", code, r)
		}
		ids = append(ids, r.ID)
	}
	// Read your writes: the very next listing holds all five.
	var listed bus.List[bus.Annotation]
	if code, _ := ada.do("GET", "/api/v1/annotations?author=ada@example.com&per_page=100", nil, &listed); code != 200 ||
		len(listed.Data) != 5 || listed.Total == nil || *listed.Total != 5 {
		t.Fatalf("listing right after the writes: %d, %d listed", code, len(listed.Data))
	}
	var one bus.Annotation
	if code, _ := ada.do("GET", "/api/v1/annotations/"+ids[2], nil, &one); code != 200 || one.Author != "ada@example.com" {
		t.Fatalf("get annotation: %d %+v", code, one)
	}
	// An annotation without an image is its author's alone.
	if code, _ := bob.do("GET", "/api/v1/annotations/"+ids[2], nil, nil); code != 404 {
		t.Fatalf("another user's annotation: %d, want 404", code)
	}

	// Grading real photographs and a drawn digit.
	for _, tc := range []struct{ file, model string }{{"images/retina.jpg", "fashion"}, {"images/flower.jpg", "digits"}, {"images/coffee.png", "fashion"}} {
		var g grade
		code, _ := ada.do("POST", "/api/v1/grades", multipartOf(t, map[string]string{"model": tc.model}, "image", filepath.Base(tc.file), dataset(t, tc.file)), &g)
		if code != 200 || g.Status != "completed" || g.Model != tc.model || len(g.Scores) != 10 || g.Scores[g.Label] <= 0 {
			t.Fatalf("grade %s: %d %+v", tc.file, code, g)
		}
		var again grade
		if code, _ := ada.do("GET", "/api/v1/grades/"+g.ID, nil, &again); code != 200 || again.Label != g.Label {
			t.Fatalf("get grade: %d %+v", code, again)
		}
	}
	var seed grade
	if code, _ := ada.do("POST", "/api/grade", multipartOf(t, map[string]string{"model_selected": "fashion"}, "image", "digit.png", fixture.DigitPNG(0)), &seed); code != 200 || seed.Status != "completed" {
		t.Fatalf("seed grade: %d %+v", code, seed)
	}
	var async struct{ ID string }
	code, hdr := ada.do("POST", "/api/v1/grades?wait=0", multipartOf(t, map[string]string{"model": "digits"}, "image", "d.png", fixture.DigitPNG(0)), &async)
	if code != http.StatusAccepted || hdr.Get("Location") != "/api/v1/grades/"+async.ID {
		t.Fatalf("async grade: %d %v", code, hdr)
	}
	eventually(t, "async grade completed", func() bool {
		var g grade
		code, _ := ada.do("GET", "/api/v1/grades/"+async.ID, nil, &g)
		return code == 200 && g.Status == "completed"
	})
	var e struct {
		Code    int
		Message string
	}
	if code, _ := ada.do("POST", "/api/v1/grades", multipartOf(t, map[string]string{"model": "resnet"}, "image", "d.png", fixture.DigitPNG(0)), &e); code != 404 || !strings.Contains(e.Message, "fashion") {
		t.Fatalf("unknown model: %d %+v", code, e)
	}

	// The image catalogue is per owner.
	var img bus.Image
	if code, _ := ada.do("POST", "/api/v1/images", multipartOf(t, map[string]string{"tags": `["retina","eye"]`}, "image", "retina.jpg", dataset(t, "images/retina.jpg")), &img); code != 201 || img.ID == "" || img.Width != 1411 {
		t.Fatalf("catalogue: %d %+v", code, img)
	}
	var page bus.List[bus.Image]
	if code, _ := ada.do("GET", "/api/v1/images?tag=eye&tag=retina", nil, &page); code != 200 || len(page.Data) != 1 || page.Data[0].ID != img.ID {
		t.Fatalf("list by tags: %d %+v", code, page)
	}
	if code, _ := bob.do("GET", "/api/v1/images/"+img.ID, nil, nil); code != 404 {
		t.Fatalf("another user's image: %d, want 404", code)
	}
	req, _ := http.NewRequest("GET", s.ep.HTTP+"/api/v1/images/"+img.ID+"/content", nil)
	req.Header.Set("Authorization", "Bearer "+ada.token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	content, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(content, dataset(t, "images/retina.jpg")) || resp.Header.Get("ETag") == "" {
		t.Fatalf("content: %d %d bytes etag %q", resp.StatusCode, len(content), resp.Header.Get("ETag"))
	}

	// Iris: the canonical dataset, then added measurements.
	var means []map[string]any
	if code, _ := ada.do("POST", "/stats/mean/", map[string]any{}, &means); code != 200 || len(means) != 3 {
		t.Fatalf("seed means: %d %v", code, means)
	}
	for _, m := range means {
		want := map[string]float64{"setosa": 5.006, "versicolor": 5.936, "virginica": 6.588}[m["label"].(string)]
		if got := m["mean_sepal_length"].(float64); got < want-1e-9 || got > want+1e-9 {
			t.Fatalf("mean sepal length of %v = %v, want %v", m["label"], got, want)
		}
	}
	rows := []bus.IrisRow{{SepalLength: 99, SepalWidth: 1, PetalLength: 1, PetalWidth: 1, Species: "setosa"}, {SepalLength: 98, SepalWidth: 1, PetalLength: 1, PetalWidth: 1, Species: "virginica"}}
	if code, _ := ada.do("POST", "/api/v1/iris/measurements", map[string]any{"rows": rows}, nil); code != http.StatusAccepted {
		t.Fatalf("measurements: %d", code)
	}
	rangeBig := func() int64 {
		var p bus.Page[bus.IrisRow]
		ada.do("POST", "/api/v1/iris/range", map[string]any{"lower": map[string]float64{"sepal_length": 50}}, &p)
		return p.Total
	}
	eventually(t, "measurements loaded", func() bool { return rangeBig() == 2 })

	// Grade statistics see the grades made above.
	eventually(t, "grade statistics", func() bool {
		var st struct {
			Data []bus.GradeStatsRow `json:"data"`
		}
		ada.do("GET", "/api/v1/stats/grades?model=fashion&bucket=1h", nil, &st)
		var n uint64
		for _, r := range st.Data {
			n += r.Count
		}
		return n >= 3
	})

	// Restart on the same data: everything is found again, nothing doubles.
	s.stop()
	s2 := startStack(t, dir)
	checkNATSAuth(t, dir, s.ep, s2.ep)
	ada2 := s2.user("ada@example.com") // logs in: the user and the secret survived
	var p bus.List[bus.Annotation]
	if code, _ := ada2.do("GET", "/api/v1/annotations?author=ada@example.com", nil, &p); code != 200 || len(p.Data) != 5 {
		t.Fatalf("after restart: %d, %d listed", code, len(p.Data))
	}
	var count struct{ Data []map[string]any }
	ada2.do("POST", "/api/v1/iris/stats/count", map[string]any{}, &count)
	total := 0.0
	for _, c := range count.Data {
		total += c["count"].(float64)
	}
	if total != 152 {
		t.Fatalf("iris rows after restart = %v, want 150 canonical + 2 added", total)
	}

	// Replay: drop the annotator's collection, replay the stream, get every
	// annotation back exactly once.
	mc, err := mongo.Connect(options.Client().ApplyURI(s2.ep.Mongo))
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Disconnect(context.Background())
	if err := mc.Database("gradeline").Collection("annotations").Drop(context.Background()); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s2.ep.NATSAdmin)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if err := bus.Replay(context.Background(), js, bus.ConsumerAnnotator, time.Time{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "annotations replayed", func() bool {
		n, err := mc.Database("gradeline").Collection("annotations").CountDocuments(context.Background(), bson.D{})
		return err == nil && n == 5
	})
	time.Sleep(500 * time.Millisecond)
	var after bus.List[bus.Annotation]
	ada2.do("GET", "/api/v1/annotations?author=ada@example.com", nil, &after)
	got := map[string]bool{}
	for _, a := range after.Data {
		got[a.ID] = true
	}
	if len(after.Data) != 5 || len(got) != 5 {
		t.Fatalf("after replay: %d listed, distinct %d", len(after.Data), len(got))
	}
	for _, id := range ids {
		if !got[id] {
			t.Fatalf("annotation %s lost in replay", id)
		}
	}
}

// TestRunReportsAServiceFailingAtStart: a service that fails before the
// stack is up (here inference, given no ONNX Runtime library) ends Run
// with its error; Run waited for the edge forever before. It runs in a
// process of its own: ONNX Runtime, once loaded by another test, stays
// loaded for the whole process.
func TestRunReportsAServiceFailingAtStart(t *testing.T) {
	if os.Getenv("GRADELINE_TEST_FAILING_SERVICE") == "1" {
		err := Run(context.Background(), Config{
			DataDir: os.Getenv("GRADELINE_TEST_DIR"), HTTPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", NATSAddr: "127.0.0.1:0",
			ORTLib: filepath.Join(os.Getenv("GRADELINE_TEST_DIR"), "no-libonnxruntime.so"), ChdbLauncher: os.Getenv("GRADELINE_CHDB_LAUNCHER"),
			Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
			OnReady: func(Endpoints) { fmt.Println("UP WITHOUT INFERENCE") },
		})
		fmt.Println("RUN RETURNED:", err)
		return
	}
	requireEnv(t, "GRADELINE_CHDB_LAUNCHER")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRunReportsAServiceFailingAtStart$")
	cmd.Env = append(os.Environ(), "GRADELINE_TEST_FAILING_SERVICE=1", "GRADELINE_TEST_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("Run did not return after a service failed at start:\n%s", out)
	}
	if err != nil || strings.Contains(string(out), "UP WITHOUT INFERENCE") || !strings.Contains(string(out), "RUN RETURNED: inference") {
		t.Fatalf("want Run to return the inference service's error (%v):\n%s", err, out)
	}
}
