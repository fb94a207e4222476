package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/internal/fixture"
	"github.com/gradeline/gradeline/deploy/local"
	"github.com/gradeline/gradeline/inference"
)

// startLocal runs the whole local stack (embedded NATS, FerretDB on
// PostgreSQL, the ClickHouse engine, every service with the built-in
// models) on a fresh directory until the test ends.
func startLocal(t *testing.T) local.Endpoints {
	t.Helper()
	for _, n := range []string{"ONNXRUNTIME_LIB", "GRADELINE_CHDB_LAUNCHER"} {
		if os.Getenv(n) == "" {
			t.Skipf("%s not set: run `make install` (make test sets it)", n)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan local.Endpoints, 1)
	done := make(chan error, 1)
	go func() {
		done <- local.Run(ctx, local.Config{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", AdminAddr: "-", NATSAddr: "127.0.0.1:0",
			ORTLib: os.Getenv("ONNXRUNTIME_LIB"), ChdbLauncher: os.Getenv("GRADELINE_CHDB_LAUNCHER"),
			Logger: testLogger(), OnReady: func(ep local.Endpoints) { ready <- ep }})
	}()
	var ep local.Endpoints
	select {
	case ep = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("local stack: %v", err)
	case <-time.After(3 * time.Minute):
		cancel()
		t.Fatal("local stack did not start within 3 minutes")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("local stack: %v", err)
		}
	})
	return ep
}

// apiUser is a registered user of the stack's HTTP API.
type apiUser struct {
	t           *testing.T
	base, token string
}

func register(t *testing.T, base, name string) *apiUser {
	t.Helper()
	u := &apiUser{t: t, base: base}
	var tok struct {
		Token string `json:"token"`
	}
	u.call("POST", "/api/v1/auth/register", "application/json",
		fmt.Sprintf(`{"username":%q,"password":"correct horse battery","signupCode":%q}`, name, local.DefaultSignupCode), &tok)
	if tok.Token == "" {
		t.Fatalf("no token for %s", name)
	}
	u.token = tok.Token
	return u
}

// call sends a request, fails the test on a status above 299, and
// decodes the JSON answer into out.
func (u *apiUser) call(method, path, ctype, body string, out any) {
	u.t.Helper()
	req, err := http.NewRequest(method, u.base+path, strings.NewReader(body))
	if err != nil {
		u.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if u.token != "" {
		req.Header.Set("Authorization", "Bearer "+u.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		u.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode > 299 {
		u.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			u.t.Fatalf("%s %s: %s: %v", method, path, raw, err)
		}
	}
}

// upload adds a PNG with tags to the user's catalogue and returns its id.
func (u *apiUser) upload(png []byte, tags ...string) string {
	u.t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	for _, tag := range tags {
		_ = w.WriteField("tags", tag)
	}
	fw, _ := w.CreateFormFile("image", "img.png")
	_, _ = fw.Write(png)
	_ = w.Close()
	var img struct {
		ID string `json:"img_id"`
	}
	u.call("POST", "/api/v1/images", w.FormDataContentType(), b.String(), &img)
	return img.ID
}

// waitTagged waits until the user's catalogue lists n images tagged tag
// (the catalogue is stored asynchronously).
func (u *apiUser) waitTagged(tag string, n int) {
	u.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var l struct {
			Data []json.RawMessage `json:"data"`
		}
		u.call("GET", "/api/v1/images?tag="+tag, "", "", &l)
		if len(l.Data) == n {
			return
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("%d images tagged %s listed, want %d", len(l.Data), tag, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// grade grades a catalogue image with the served fashion model and
// returns the grade once it is stored.
func (u *apiUser) grade(imageID string) (id, label string) {
	u.t.Helper()
	var g struct {
		ID     string `json:"id"`
		Status string `json:"status"`
		Label  string `json:"label"`
	}
	u.call("POST", "/api/v1/grades?wait=60s", "application/json", fmt.Sprintf(`{"model":"fashion","image_id":%q}`, imageID), &g)
	if g.Status != bus.GradeStatusCompleted {
		u.t.Fatalf("grade of %s: %+v", imageID, g)
	}
	// Read back: stored in the grade history (what regrade compares with).
	u.call("GET", "/api/v1/grades/"+g.ID, "", "", &g)
	if g.Status != bus.GradeStatusCompleted {
		u.t.Fatalf("grade %s read back %+v", g.ID, g)
	}
	return g.ID, g.Label
}

// twoFashionVersions writes a models folder holding the built-in fashion
// model as versions 1 and 2 (the same network), both served.
func twoFashionVersions(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	onnx, err := fs.ReadFile(inference.BuiltinModels(), "fashion/model.onnx")
	if err != nil {
		t.Fatal(err)
	}
	yaml, err := fs.ReadFile(inference.BuiltinModels(), "fashion/model.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var man []string
	for _, line := range strings.Split(string(yaml), "\n") {
		if !strings.HasPrefix(line, "version:") {
			man = append(man, line)
		}
	}
	man = append(man, "version_policy: {all: {}}")
	for _, v := range []string{"1", "2"} {
		if err := os.MkdirAll(filepath.Join(dir, "fashion", v), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "fashion", v, "model.onnx"), onnx, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "fashion", "model.yaml"), []byte(strings.Join(man, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRegradeTag runs `gradeline regrade --tag` end to end on the local
// stack (NATS JetStream, FerretDB on PostgreSQL, the ClickHouse engine,
// ONNX Runtime): every owner's images with the tag are graded again by
// another version, read from the catalogue and the image bucket, compared
// with what the serving version gave each, the shadows published once per
// run id and stored by analytics, whose agreement route then compares
// the two versions per owner. A tag no image carries, --since narrowing
// the tagged images, and an unknown version are refused with a message.
func TestRegradeTag(t *testing.T) {
	t.Setenv("GRADELINE_MODELS_DIR", twoFashionVersions(t))
	ep := startLocal(t)
	t.Setenv("NATS_URL", ep.NATSAdmin)
	ctx := context.Background()

	alice, bob := register(t, ep.HTTP, "alice"), register(t, ep.HTTP, "bob")
	a := []string{alice.upload(fixture.DigitPNG(0), "shirts"), alice.upload(fixture.DigitPNG(1), "shirts", "summer"),
		alice.upload(fixture.DigitPNG(2), "shirts")}
	alice.upload(fixture.DigitPNG(3), "other")
	b := []string{bob.upload(fixture.DigitPNG(4), "shirts"), bob.upload(fixture.DigitPNG(5), "shirts")}
	// Served: two of alice's, one of bob's.
	served := map[string]string{} // image → served label
	gradeOf := map[string]string{}
	for _, g := range []struct {
		u   *apiUser
		img string
	}{{alice, a[0]}, {alice, a[1]}, {bob, b[0]}} {
		gradeOf[g.img], served[g.img] = g.u.grade(g.img)
	}
	// The catalogue is stored asynchronously: wait for every upload.
	alice.waitTagged("shirts", 3)
	bob.waitTagged("shirts", 2)

	// A tag no image carries: said, and an error (the exit code).
	err := run(ctx, []string{"regrade", "--model", "fashion@2", "--tag", "nosuch"}, io.Discard, time.Now())
	if err == nil || !strings.Contains(err.Error(), `no catalogue image carries the tag "nosuch"`) {
		t.Fatalf("a tag without images: %v", err)
	}
	// An unknown version is refused before anything is read.
	if err := run(ctx, []string{"regrade", "--model", "fashion@9", "--tag", "shirts"}, io.Discard, time.Now()); err == nil ||
		!strings.Contains(err.Error(), "fashion@9 is not in the repository") {
		t.Fatalf("an unknown version: %v", err)
	}

	for range 2 { // the same run id twice publishes nothing twice
		var out bytes.Buffer
		if err := run(ctx, []string{"regrade", "--model", "fashion@2", "--tag", "shirts", "--run", "tag-run"}, &out, time.Now()); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		for _, want := range []string{"compared with the grades of fashion@1", "regrade fashion@2: 5 images, 5 graded",
			"5 images, 5 graded, 0 failed, 0 images gone", "agreement with what was served: 3 of 3 (100.0%)"} {
			if !strings.Contains(out.String(), want) {
				t.Fatalf("output lacks %q:\n%s", want, out.String())
			}
		}
	}
	nc, js, err := bus.Connect(ctx, ep.NATSAdmin, "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	st, err := js.Stream(ctx, bus.StreamRegrades)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.Msgs != 5 {
		t.Fatalf("shadow grades on the stream: %+v %v, want 5 (one per image, the rerun none)", info.State, err)
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	owners := map[string]string{a[0]: "alice", a[1]: "alice", a[2]: "alice", b[0]: "bob", b[1]: "bob"}
	for range 5 {
		m, err := c.Next(jetstream.FetchMaxWait(30 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := bus.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		sh := ev.(*bus.GradeShadow)
		owner, ok := owners[sh.ImageID]
		delete(owners, sh.ImageID)
		switch {
		case !ok || sh.Owner != owner || sh.Run != "tag-run" || sh.Model != "fashion" || sh.ModelVersion != "2":
			t.Fatalf("shadow %+v", sh)
		case gradeOf[sh.ImageID] != "" && (sh.Of != gradeOf[sh.ImageID] || sh.Label != served[sh.ImageID]):
			t.Fatalf("shadow %+v of a served grade %s labelled %s", sh, gradeOf[sh.ImageID], served[sh.ImageID])
		case gradeOf[sh.ImageID] == "" && (sh.Of != sh.ImageID || sh.Label == ""):
			t.Fatalf("shadow %+v of an image never graded", sh)
		}
	}

	// --since and --tag: both filters. An image tagged after `since` is
	// the only one; a period after every upload holds none.
	since := time.Now()
	late := bob.upload(fixture.DigitPNG(6), "shirts")
	bob.waitTagged("shirts", 3)
	var out bytes.Buffer
	err = run(ctx, []string{"regrade", "--model", "fashion@2", "--tag", "shirts", "--since", since.UTC().Format(time.RFC3339Nano)}, &out, time.Now())
	if err != nil || !strings.Contains(out.String(), "1 images, 1 graded") {
		var l json.RawMessage
		bob.call("GET", "/api/v1/images?tag=shirts", "", "", &l)
		t.Fatalf("--since %s with --tag (image %s): %v\n%s\nbob's images: %s", since.UTC().Format(time.RFC3339Nano), late, err, out.String(), l)
	}
	err = run(ctx, []string{"regrade", "--model", "fashion@2", "--tag", "shirts", "--since", "1m"}, io.Discard, time.Now().Add(time.Hour))
	if err == nil || !strings.Contains(err.Error(), `no catalogue image carries the tag "shirts" catalogued since`) {
		t.Fatalf("a period without tagged images: %v", err)
	}

	// Analytics stored the shadows: each owner sees the two versions
	// compared on their own served grades.
	for _, c := range []struct {
		u *apiUser
		n float64
	}{{alice, 2}, {bob, 1}} {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			var res struct {
				Data bus.RegradeAgreement `json:"data"`
			}
			c.u.call("GET", "/api/v1/stats/agreement?model=fashion&a=1&b=2", "", "", &res)
			if float64(res.Data.Compared) == c.n && res.Data.Agree == res.Data.Compared && res.Data.Rate == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("agreement %+v, want %v compared, all agreeing", res.Data, c.n)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// testLogger discards the stack's log unless GRADELINE_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("GRADELINE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}
