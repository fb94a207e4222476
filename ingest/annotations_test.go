package ingest_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest"
)

// The end-to-end path of issue 2: register, login (bearer and cookie),
// annotate, read back from MongoDB through the annotator.
func TestAnnotationsEndToEnd(t *testing.T) {
	s := startIngest(t)
	anon := s.client(t)
	if r := anon.json("POST", "/api/v1/auth/register", map[string]string{"username": "Heidi", "password": "longenough", "signupCode": "letmein"}); r.Status != 201 {
		t.Fatalf("register: %d %s", r.Status, r.Body)
	}

	// Bearer.
	bearer := s.client(t)
	r := bearer.json("POST", "/api/v1/auth/login", map[string]string{"username": "heidi", "password": "longenough"})
	if r.Status != 200 {
		t.Fatalf("login: %d %s", r.Status, r.Body)
	}
	bearer.token = r.JSON(t)["token"].(string)
	bearer.hc.Jar = nil // the bearer client must not ride on the cookie
	imageID := newImage(t, bearer)
	r = bearer.json("POST", "/api/v1/annotations", map[string]any{"image_id": imageID, "annotation": map[string]any{"label": "cat", "box": []int{1, 2, 3, 4}}})
	if r.Status != http.StatusAccepted {
		t.Fatalf("annotate: %d %s", r.Status, r.Body)
	}
	acc := r.JSON(t)
	id, _ := acc["id"].(string)
	if id == "" || acc["status"] != "accepted" || acc["message"] != "Annotation received." {
		t.Fatalf("accepted body %v", acc)
	}
	if r.Header.Get("Location") != "/api/v1/annotations/"+id {
		t.Fatalf("Location %q", r.Header.Get("Location"))
	}

	// Cookie (no Authorization header at all).
	cookie := s.client(t)
	if r := cookie.json("POST", "/api/v1/auth/login", map[string]string{"username": "heidi", "password": "longenough"}); r.Status != 200 {
		t.Fatalf("login: %d", r.Status)
	}
	r = cookie.json("POST", "/api/v1/annotations", map[string]any{"image_id": imageID, "annotation": map[string]any{"label": "dog"}, "username": "HEIDI"})
	if r.Status != http.StatusAccepted {
		t.Fatalf("cookie annotate: %d %s", r.Status, r.Body)
	}
	cookieID, _ := r.JSON(t)["id"].(string)

	// Read your writes: the writer's very next reads include the writes,
	// with no retry loop (the annotator answers once it stored them).
	r = bearer.do("GET", "/api/v1/annotations/"+id, nil, nil)
	if r.Status != 200 {
		t.Fatalf("get right after the write: %d %s", r.Status, r.Body)
	}
	got := r.JSON(t)
	if got["id"] != id || got["author"] != "heidi" || got["image_id"] != imageID {
		t.Fatalf("stored annotation %v", got)
	}
	if ann, _ := got["annotation"].(map[string]any); ann["label"] != "cat" {
		t.Fatalf("annotation body %v", got["annotation"])
	}
	r = bearer.do("GET", "/api/v1/annotations?image_id="+imageID+"&author=Heidi&per_page=10", nil, nil)
	if r.Status != 200 {
		t.Fatalf("list: %d %s", r.Status, r.Body)
	}
	page := r.JSON(t)
	// The whole result fits the page: its total is exact, and there is no next.
	if page["total"] != float64(2) || page["per_page"] != float64(10) || len(page["data"].([]any)) != 2 || page["next"] != nil {
		t.Fatalf("page %v", page)
	}
	// Keyset pages: one per request, following next, newest first.
	r = bearer.do("GET", "/api/v1/annotations?image_id="+imageID+"&per_page=1", nil, nil)
	first := r.JSON(t)
	next, _ := first["next"].(string)
	if r.Status != 200 || len(first["data"].([]any)) != 1 || next == "" || first["total"] != nil {
		t.Fatalf("page 1: %d %s", r.Status, r.Body)
	}
	r = bearer.do("GET", "/api/v1/annotations?image_id="+imageID+"&per_page=1&cursor="+next, nil, nil)
	second := r.JSON(t)
	if r.Status != 200 || len(second["data"].([]any)) != 1 || second["next"] != nil {
		t.Fatalf("page 2: %d %s", r.Status, r.Body)
	}
	a1 := first["data"].([]any)[0].(map[string]any)["id"]
	a2 := second["data"].([]any)[0].(map[string]any)["id"]
	if a1 == a2 || a1 != cookieID {
		t.Fatalf("pages %v then %v; want the newer (%s) first", a1, a2, cookieID)
	}
	// The page=N form still works.
	r = bearer.do("GET", "/api/v1/annotations?image_id="+imageID+"&page=2&per_page=1", nil, nil)
	if r.Status != 200 || len(r.JSON(t)["data"].([]any)) != 1 {
		t.Fatalf("page 2: %d %s", r.Status, r.Body)
	}
	expectError(t, bearer.do("GET", "/api/v1/annotations?image_id="+imageID+"&cursor=bm90LWEtY3Vyc29y", nil, nil), 422)
	expectError(t, bearer.do("GET", "/api/v1/annotations?cursor="+strings.Repeat("A", 600), nil, nil), 422)
	expectError(t, bearer.do("GET", "/api/v1/annotations/0190f0f0-0000-7000-8000-000000000000", nil, nil), 404)
	expectError(t, bearer.do("GET", "/api/v1/annotations?page=0", nil, nil), 422)
	expectError(t, bearer.do("GET", "/api/v1/annotations?per_page=1001", nil, nil), 422)
	expectError(t, bearer.do("GET", "/api/v1/annotations?page=abc", nil, nil), 422)
	expectError(t, bearer.do("GET", "/api/v1/annotations?image_id=a%20b", nil, nil), 422)
	expectError(t, bearer.do("GET", "/api/v1/annotations?author=%7B%22%24ne%22%3A1%7D", nil, nil), 422)
}

// The seed's POST /api/annotation with the seed's body {username, annotation}.
func TestSeedAnnotationAlias(t *testing.T) {
	s := startIngest(t)
	c, name := s.newUser(t)
	r := c.json("POST", "/api/annotation", `{"username": "`+name+`", "annotation": {"lesion": "exudate", "x": 10, "y": 20}}`)
	if r.Status != http.StatusOK {
		t.Fatalf("seed annotation: %d %s", r.Status, r.Body)
	}
	b := r.JSON(t)
	if b["message"] != "Annotation received." || b["id"] == "" {
		t.Fatalf("body %v", b)
	}
	if r := c.do("GET", "/api/v1/annotations/"+b["id"].(string), nil, nil); r.Status != 200 {
		t.Fatalf("seed annotation not readable right after the write: %d %s", r.Status, r.Body)
	}
	// The seed tolerated extra fields; the alias does too. A foreign username is still 403.
	if r := c.json("POST", "/api/annotation", `{"username": "`+name+`", "annotation": {"a": 1}, "extra": true}`); r.Status != 200 {
		t.Fatalf("extra field on alias: %d %s", r.Status, r.Body)
	}
	expectError(t, c.json("POST", "/api/annotation", `{"username": "mallory", "annotation": {"a": 1}}`), 403)
}

func TestAnnotationBadInputs(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	big := `{"annotation":{"blob":"` + strings.Repeat("x", bus.MaxAnnotationBytes) + `"}}`
	huge := `{"annotation":{"blob":"` + strings.Repeat("x", 1<<20) + `"}}`
	for _, tc := range []struct {
		name   string
		body   string
		ct     string
		status int
		detail string
	}{
		{"malformed JSON", `{"annotation": {"a": 1}`, "", 400, "malformed"},
		{"not JSON", `annotation=1`, "", 400, "malformed"},
		{"annotation is a string", `{"annotation": "cat"}`, "", 422, "annotation: must be a JSON object"},
		{"annotation is an array", `{"annotation": [1,2]}`, "", 422, "annotation: must be a JSON object"},
		{"annotation is null", `{"annotation": null}`, "", 422, "annotation: required"},
		{"annotation missing", `{"image_id": "x"}`, "", 422, "annotation: required"},
		{"empty body", ``, "", 422, "annotation: required"},
		{"image_id wrong type", `{"image_id": 5, "annotation": {}}`, "", 422, "image_id"},
		{"image_id injection", `{"image_id": "x\"; db.dropDatabase()", "annotation": {}}`, "", 422, "image_id"},
		{"username wrong type", `{"username": 5, "annotation": {}}`, "", 422, "username"},
		{"unknown field", `{"annotation": {}, "author": "someone-else"}`, "", 422, "author: unknown field"},
		{"foreign username", `{"username": "mallory", "annotation": {}}`, "", 403, "does not match"},
		{"annotation over 64 KiB", big, "", 413, "annotation"},
		{"body over 1 MiB", huge, "", 413, ""},
		{"wrong content type", `{"annotation": {}}`, "text/plain", 415, "application/json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct := tc.ct
			if ct == "" {
				ct = "application/json"
			}
			r := c.do("POST", "/api/v1/annotations", strings.NewReader(tc.body), map[string]string{"Content-Type": ct})
			got := expectError(t, r, tc.status)
			if !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
	t.Run("body over the server limit", func(t *testing.T) {
		small := startIngest(t, func(c *ingest.Config) { c.MaxBodyBytes = 2 << 20 })
		cl, _ := small.newUser(t)
		r := cl.do("POST", "/api/v1/annotations", strings.NewReader(strings.Repeat(" ", 3<<20)), map[string]string{"Content-Type": "application/json"})
		expectError(t, r, 413)
	})
}

// 202 comes only after the PubAck, and the event carries the request id
// and trace context.
func TestAnnotationEventCarriesRequestIDAndTrace(t *testing.T) {
	s := startIngest(t)
	c, name := s.newUser(t)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync(bus.SubjectAnnotationCreated)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	r := c.do("POST", "/api/v1/annotations", strings.NewReader(`{"annotation":{"k":"v"}}`), map[string]string{
		"Content-Type": "application/json", "X-Request-Id": "req-12345", "traceparent": tp})
	if r.Status != 202 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	if r.Header.Get("X-Request-Id") != "req-12345" {
		t.Fatalf("X-Request-Id echoed as %q", r.Header.Get("X-Request-Id"))
	}
	id := r.JSON(t)["id"].(string)
	for {
		msg, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatal("no event on the subject:", err)
		}
		var ev bus.AnnotationCreated
		if err := json.Unmarshal(msg.Data, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.ID != id {
			continue
		}
		if msg.Header.Get(bus.HeaderRequestID) != "req-12345" || msg.Header.Get(bus.HeaderTraceparent) != tp {
			t.Fatalf("event headers %v", msg.Header)
		}
		if msg.Header.Get("Nats-Msg-Id") != id || ev.Author != name {
			t.Fatalf("event %+v headers %v", ev, msg.Header)
		}
		break
	}
	// The event is in the stream (replayable), not just on the wire.
	js, _ := nc.JetStream()
	info, err := js.StreamInfo(bus.StreamAnnotations)
	if err != nil || info.State.Msgs == 0 {
		t.Fatalf("stream: %v %+v", err, info)
	}
	// Without headers: a request id is generated, a trace started.
	r = c.json("POST", "/api/v1/annotations", `{"annotation":{}}`)
	if rid := r.Header.Get("X-Request-Id"); len(rid) < 16 {
		t.Fatalf("generated request id %q", rid)
	}
	_ = context.Background
}
