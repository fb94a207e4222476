package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gradeline/gradeline/annotator/localmongo"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/ingest"
)

func TestFrameworkErrorsAreJSON(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	expectError(t, c.do("GET", "/no/such/route", nil, nil), 404)
	expectError(t, c.do("GET", "/api/v1/auth/login", nil, nil), 405)
	expectError(t, c.do("DELETE", "/api/v1/annotations", nil, nil), 405)
	expectError(t, c.do("PATCH", "/api/v1/images/x/tags", nil, nil), 405)
	expectError(t, c.json("POST", "/api/v1/auth/login", "{"), 400)
	// Unauthenticated requests to protected routes.
	anon := s.client(t)
	for _, p := range []string{"/api/v1/annotations", "/api/v1/models", "/api/v1/images", "/api/v1/grades/x", "/api/v1/stats/grades"} {
		expectError(t, anon.do("GET", p, nil, nil), 401)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	if r := c.do("GET", "/healthz", nil, nil); r.Status != 200 || r.JSON(t)["status"] != "ok" {
		t.Fatalf("healthz %d %s", r.Status, r.Body)
	}
	r := c.do("GET", "/readyz", nil, nil)
	if r.Status != 200 {
		t.Fatalf("readyz %d %s", r.Status, r.Body)
	}
	if checks := r.JSON(t)["checks"].(map[string]any); checks["nats"] != "ok" || checks["mongodb"] != "ok" {
		t.Fatalf("checks %v", checks)
	}
	if r := c.json("POST", "/api/v1/annotations", `{"annotation":{"m":1}}`); r.Status != 202 {
		t.Fatal(r.Status)
	}
	c.do("GET", "/definitely/unknown/123", nil, nil)
	// The edge does not serve /metrics (the admin address does): read the
	// registry it was given.
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(s.Reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	text := rec.Body.String()
	expectError(t, c.do("GET", "/metrics", nil, nil), 404)
	for _, want := range []string{
		`gradeline_ingest_http_requests_total{method="POST",route="/api/v1/annotations",status="202"} 1`,
		`gradeline_ingest_http_request_duration_seconds_bucket{method="POST",route="/api/v1/annotations",status="202"`,
		`gradeline_ingest_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		// The bus times every publish, once (shared by the servers of this test binary).
		`gradeline_publish_seconds_count{subject="gradeline.annotations.created"}`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s\n%s", want, grepLines(text, "http_requests_total"))
		}
	}
}

func TestReadyzFailsWithoutMongo(t *testing.T) {
	ms, err := localmongo.Start(context.Background(), localmongo.Options{Dir: filepath.Join(t.TempDir(), "m")})
	if err != nil {
		t.Fatal(err)
	}
	s := startIngest(t, func(c *ingest.Config) { c.MongoURI = ms.URI() })
	c := s.client(t)
	if r := c.do("GET", "/readyz", nil, nil); r.Status != 200 {
		t.Fatalf("readyz %d %s", r.Status, r.Body)
	}
	_ = ms.Close()
	r := c.do("GET", "/readyz", nil, nil)
	if !strings.Contains(expectError(t, r, 503), "mongodb") {
		t.Fatalf("readyz without mongo: %s", r.Body)
	}
	// Login needs the user store: 503, not 500, and not 401.
	r = c.json("POST", "/api/v1/auth/login", map[string]string{"username": "someone", "password": "whatever1"})
	if !strings.Contains(expectError(t, r, 503), "MongoDB") {
		t.Fatalf("login without mongo: %s", r.Body)
	}
}

// With no query service on the bus, every query answers 503 naming the
// service that is down.
func TestServicesDownAre503(t *testing.T) {
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), Setup: &bus.TopologyOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	s := startIngest(t, func(c *ingest.Config) { c.NATSURL = ns.ClientURL() })
	c, _ := s.newUser(t)
	for _, tc := range []struct {
		method, path, body, service string
	}{
		{"GET", "/api/v1/annotations", "", "annotator"},
		{"GET", "/api/v1/annotations/abc", "", "annotator"},
		{"GET", "/api/v1/images", "", "annotator"},
		{"GET", "/api/v1/images/abc", "", "annotator"},
		{"GET", "/api/v1/grades/abc", "", "annotator"},
		{"GET", "/api/v1/models", "", "inference"},
		{"POST", "/api/v1/iris/range", `{"species":"setosa"}`, "analytics"},
		{"POST", "/api/v1/iris/stats/mean", `{}`, "analytics"},
		{"POST", "/range/", `{}`, "analytics"},
		{"POST", "/stats/mean/", `{}`, "analytics"},
		{"GET", "/api/v1/stats/grades", "", "analytics"},
		{"GET", "/api/v1/stats/annotations", "", "analytics"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			var r response
			if tc.body != "" {
				r = c.json(tc.method, tc.path, tc.body)
			} else {
				r = c.do(tc.method, tc.path, nil, nil)
			}
			if msg := expectError(t, r, 503); !strings.Contains(msg, tc.service) {
				t.Fatalf("503 message %q does not name %s", msg, tc.service)
			}
		})
	}
	// Grading with the inference service down: the image is fine, the model cannot be checked.
	r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "x.png", pngImage(t, 28, 28)})
	if msg := expectError(t, r, 503); !strings.Contains(msg, "inference") {
		t.Fatalf("grade without inference: %s", msg)
	}
	// Writes only need JetStream: they are accepted while the readers are down.
	if r := c.json("POST", "/api/v1/annotations", `{"annotation":{"x":1}}`); r.Status != 202 {
		t.Fatalf("annotation with annotator down: %d %s", r.Status, r.Body)
	}
	r = c.json("POST", "/api/v1/iris/measurements", `{"rows":[{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,"petal_width":0.2,"species":"setosa"}]}`)
	if r.Status != 202 {
		t.Fatalf("measurements with analytics down: %d %s", r.Status, r.Body)
	}
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	s := startIngest(t)
	c := s.client(t)
	r := c.do("GET", "/openapi.json", nil, nil)
	if r.Status != 200 {
		t.Fatalf("%d", r.Status)
	}
	var doc struct {
		OpenAPI string                               `json:"openapi"`
		Paths   map[string]map[string]map[string]any `json:"paths"`
		Tags    []struct{ Name string }              `json:"tags"`
	}
	if err := json.Unmarshal(r.Body, &doc); err != nil {
		t.Fatal(err)
	}
	declared := map[string]bool{}
	for _, tg := range doc.Tags {
		declared[tg.Name] = true
	}
	if len(doc.Tags) == 0 || doc.Tags[0].Name != "auth" || doc.Tags[len(doc.Tags)-1].Name != "seed" {
		t.Errorf("tag order %v: the docs page should open with auth and end with the seed aliases", doc.Tags)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q", doc.OpenAPI)
	}
	param := regexp.MustCompile(`:([A-Za-z0-9_]+)`)
	n := 0
	for _, rt := range s.App().GetRoutes(true) {
		if rt.Method == "HEAD" || rt.Method == "CONNECT" || rt.Method == "TRACE" || rt.Method == "OPTIONS" {
			continue
		}
		p := param.ReplaceAllString(rt.Path, "{$1}")
		op, ok := doc.Paths[p][strings.ToLower(rt.Method)]
		if !ok {
			t.Errorf("route %s %s is not in the OpenAPI document", rt.Method, rt.Path)
			continue
		}
		n++
		if tags, _ := op["tags"].([]any); len(tags) != 1 || !declared[fmt.Sprint(tags[0])] {
			t.Errorf("%s %s: tag %v is not declared in the document's tag list", rt.Method, rt.Path, op["tags"])
		}
		if _, ok := op["responses"]; !ok {
			t.Errorf("%s %s has no responses", rt.Method, rt.Path)
		}
	}
	if n < 37 {
		t.Fatalf("only %d routes checked", n)
	}
	// Multipart bodies are described with their binary file field.
	for _, p := range []string{"/api/v1/grades", "/api/grade", "/api/v1/images", "/api/images"} {
		body, _ := json.Marshal(doc.Paths[p]["post"]["requestBody"])
		if !strings.Contains(string(body), "multipart/form-data") || !strings.Contains(string(body), `"format":"binary"`) {
			t.Errorf("%s: multipart body not described: %s", p, body)
		}
	}
}

func TestDocsPageIsSelfContained(t *testing.T) {
	s := startIngest(t)
	r := s.client(t).do("GET", "/docs", nil, nil)
	if r.Status != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("%d %s", r.Status, r.Header.Get("Content-Type"))
	}
	page := string(r.Body)
	if !strings.Contains(page, "/openapi.json") || !strings.Contains(page, "FormData") || !strings.Contains(page, `type: isFile ? "file"`) {
		t.Fatal("docs page does not load the document or send multipart files")
	}
	if regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`).MatchString(page) {
		t.Fatal("docs page references an external resource")
	}
	if strings.Contains(page, "http://") || strings.Contains(page, "https://") {
		t.Fatal("docs page contains an absolute URL (no internet here)")
	}
}

func TestPublishFailureIs503(t *testing.T) {
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), Setup: &bus.TopologyOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	s := startIngest(t, func(c *ingest.Config) { c.NATSURL = ns.ClientURL() })
	c, _ := s.newUser(t)
	ns.Shutdown()
	r := c.json("POST", "/api/v1/annotations", `{"annotation":{"x":1}}`)
	if msg := expectError(t, r, 503); !strings.Contains(msg, "JetStream") {
		t.Fatalf("publish without NATS: %s", msg)
	}
	if r := c.do("GET", "/readyz", nil, nil); r.Status != http.StatusServiceUnavailable {
		t.Fatalf("readyz without NATS: %d", r.Status)
	}
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestRunServesAndShutsDownGracefully(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ingest.Run(ctx, ingest.Config{Addr: addr, NATSURL: natsURL, MongoURI: mongoURI, Database: "ingest_run_test",
			JWTSecret: secret, SignupCode: "x", Logger: quiet, Registerer: prometheus.NewRegistry()})
	}()
	var res *http.Response
	eventually(t, "Run listening", 30*time.Second, func() bool {
		res, err = http.Get("http://" + addr + "/healthz")
		return err == nil
	})
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("healthz %d", res.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v after cancel", err)
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Fatal("still serving after shutdown")
	}
	// A bad config is reported, not served.
	if err := ingest.Run(context.Background(), ingest.Config{Addr: addr, NATSURL: natsURL, MongoURI: mongoURI, JWTSecret: []byte("short"), SignupCode: "x"}); err == nil {
		t.Fatal("Run accepted a short secret")
	}
}
