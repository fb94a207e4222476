package ingest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest"
)

// allowLoopback admits the test receivers (httptest, 127.0.0.1).
func allowLoopback(c *ingest.Config) {
	c.CallbackAllow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
}

// received is one request a receiver got.
type received struct {
	header http.Header
	body   []byte
	at     time.Time
}

// receiver is a real HTTP server that answers the i-th request (from 0)
// with statuses[i] (the last one for every later request) and keeps them.
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	requests []received
	arrived  chan struct{} // one value per request
}

func newReceiver(t *testing.T, statuses ...int) *receiver {
	return newAnsweringReceiver(t, func(i int, _ http.Header) int { return statuses[min(i, len(statuses)-1)] })
}

// newAnsweringReceiver is a receiver whose answer to the i-th request
// (from 0) is what answer sets in the headers and returns as the status.
func newAnsweringReceiver(t *testing.T, answer func(i int, h http.Header) int) *receiver {
	rc := &receiver{arrived: make(chan struct{}, 64)}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		i := len(rc.requests)
		rc.requests = append(rc.requests, received{header: r.Header.Clone(), body: body, at: time.Now()})
		rc.mu.Unlock()
		w.WriteHeader(answer(i, w.Header()))
		_, _ = w.Write([]byte(strings.Repeat("x", 4096))) // more than the deliverer reads
		rc.arrived <- struct{}{}
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) got() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.requests...)
}

// waitRequests waits for the n-th request.
func (rc *receiver) waitRequests(t *testing.T, n int) []received {
	t.Helper()
	timeout := time.After(2 * time.Minute)
	for len(rc.got()) < n {
		select {
		case <-rc.arrived:
		case <-timeout:
			t.Fatalf("receiver got %d requests, want %d", len(rc.got()), n)
		}
	}
	return rc.got()
}

// submitWithCallback grades a small image with a callback and returns the grade id.
func submitWithCallback(t *testing.T, c *client, callback string) string {
	t.Helper()
	r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}, {"callback_url", callback}}, filePart{"image", "x.png", pngImage(t, 28, 28)})
	if r.Status != http.StatusOK {
		t.Fatalf("grade with callback: %d %s", r.Status, r.Body)
	}
	return r.JSON(t)["id"].(string)
}

// gradeCallbacks polls the grade until it lists n callback attempts, the
// last of them final (delivered or gave_up) when final is set.
func gradeCallbacks(t *testing.T, c *client, id string, n int) []bus.CallbackAttempt {
	t.Helper()
	var g bus.Grade
	eventually(t, "callback attempts on the grade", time.Minute, func() bool {
		r := c.do("GET", "/api/v1/grades/"+id, nil, nil)
		if r.Status != http.StatusOK {
			return false
		}
		g = bus.Grade{}
		if err := json.Unmarshal(r.Body, &g); err != nil {
			t.Fatalf("grade: %v", err)
		}
		return len(g.Callbacks) >= n
	})
	if len(g.Callbacks) != n {
		t.Fatalf("grade lists %d callback attempts, want %d: %+v", len(g.Callbacks), n, g.Callbacks)
	}
	return g.Callbacks
}

func webhookSecret(t *testing.T, c *client, method string) string {
	t.Helper()
	r := c.do(method, "/api/v1/auth/webhook-secret", nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("%s webhook-secret: %d %s", method, r.Status, r.Body)
	}
	sec, _ := r.JSON(t)["secret"].(string)
	if !strings.HasPrefix(sec, "whsec_") {
		t.Fatalf("secret %q", sec)
	}
	return sec
}

// TestCallbackRetriedSignedAndRecorded: a receiver that fails twice and
// then accepts gets three signed POSTs of the grade, and the grade lists
// the three attempts.
func TestCallbackRetriedSignedAndRecorded(t *testing.T) {
	needInference(t)
	s := startIngest(t, allowLoopback)
	c, _ := s.newUser(t)
	other, _ := s.newUser(t)
	rc := newReceiver(t, http.StatusServiceUnavailable, http.StatusInternalServerError, http.StatusOK)

	secret := webhookSecret(t, c, "GET")
	if again := webhookSecret(t, c, "GET"); again != secret {
		t.Fatal("the secret changed between two reads")
	}
	if webhookSecret(t, other, "GET") == secret {
		t.Fatal("two users share a secret")
	}
	id := submitWithCallback(t, c, rc.URL+"/hook?x=1")
	reqs := rc.waitRequests(t, 3)

	r := c.do("GET", "/api/v1/grades/"+id, nil, nil)
	var want map[string]any
	if err := json.Unmarshal(r.Body, &want); err != nil {
		t.Fatal(err)
	}
	delete(want, "callbacks")
	for i, rq := range reqs {
		if err := bus.VerifyCallback(secret, rq.header.Get(bus.HeaderCallbackSignature), rq.body, time.Now(), 5*time.Minute); err != nil {
			t.Fatalf("request %d: signature: %v (%s)", i+1, err, rq.header.Get(bus.HeaderCallbackSignature))
		}
		if err := bus.VerifyCallback(webhookSecret(t, other, "GET"), rq.header.Get(bus.HeaderCallbackSignature), rq.body, time.Now(), 5*time.Minute); err == nil {
			t.Fatal("another user's secret verifies the signature")
		}
		if rq.header.Get(bus.HeaderCallbackEventID) == "" || rq.header.Get(bus.HeaderCallbackEventID) != reqs[0].header.Get(bus.HeaderCallbackEventID) {
			t.Fatalf("request %d: event id %q, first %q", i+1, rq.header.Get(bus.HeaderCallbackEventID), reqs[0].header.Get(bus.HeaderCallbackEventID))
		}
		var got map[string]any
		if err := json.Unmarshal(rq.body, &got); err != nil {
			t.Fatalf("request %d: body: %v", i+1, err)
		}
		if gj, _ := json.Marshal(got); string(gj) != string(mustJSON(t, want)) {
			t.Fatalf("request %d: body\n%s\nwant the grade\n%s", i+1, gj, mustJSON(t, want))
		}
	}
	// A tampered body fails verification.
	if bus.VerifyCallback(secret, reqs[2].header.Get(bus.HeaderCallbackSignature), append(reqs[2].body, ' '), time.Now(), 5*time.Minute) == nil {
		t.Fatal("a changed body verifies")
	}

	attempts := gradeCallbacks(t, c, id, 3)
	wantOutcome := []string{bus.CallbackRetrying, bus.CallbackRetrying, bus.CallbackDelivered}
	wantStatus := []int{503, 500, 200}
	for i, a := range attempts {
		if a.Attempt != i+1 || a.Outcome != wantOutcome[i] || a.StatusCode != wantStatus[i] || a.URL != rc.URL+"/hook?x=1" || a.At.IsZero() {
			t.Fatalf("attempt %d: %+v", i+1, a)
		}
		if (a.Outcome == bus.CallbackRetrying) == a.NextAttemptAt.IsZero() {
			t.Fatalf("attempt %d: next_attempt_at %v with outcome %s", i+1, a.NextAttemptAt, a.Outcome)
		}
	}
	// The other user cannot see the grade, nor its attempts.
	if r := other.do("GET", "/api/v1/grades/"+id, nil, nil); r.Status != http.StatusNotFound {
		t.Fatalf("another user's grade: %d", r.Status)
	}

	// Rotation: a new secret, which signs the next callback.
	rotated := webhookSecret(t, c, "POST")
	if rotated == secret || webhookSecret(t, c, "GET") != rotated {
		t.Fatal("rotation did not replace the secret")
	}
	submitWithCallback(t, c, rc.URL+"/hook")
	last := rc.waitRequests(t, 4)[3]
	if err := bus.VerifyCallback(rotated, last.header.Get(bus.HeaderCallbackSignature), last.body, time.Now(), 5*time.Minute); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCallbackGoneGivesUp: a 4xx other than 408/429 is final; one attempt.
func TestCallbackGoneGivesUp(t *testing.T) {
	needInference(t)
	s := startIngest(t, allowLoopback)
	c, _ := s.newUser(t)
	rc := newReceiver(t, http.StatusGone)
	id := submitWithCallback(t, c, rc.URL)
	a := gradeCallbacks(t, c, id, 1)[0]
	if a.Outcome != bus.CallbackGaveUp || a.StatusCode != http.StatusGone || !a.NextAttemptAt.IsZero() {
		t.Fatalf("attempt %+v", a)
	}
	if n := len(rc.got()); n != 1 {
		t.Fatalf("receiver got %d requests, want 1", n)
	}
}

// TestCallbackURLRefused: a callback URL of another scheme, or to an
// address that is not public, is refused at submission with 422 naming
// the reason; the allow-list admits loopback.
func TestCallbackURLRefused(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	c, _ := s.newUser(t)
	img := newImage(t, c)
	tests := []struct {
		url, want string
	}{
		{"ftp://example.com/x", "only http and https"},
		{"/relative", "only http and https"},
		{"http://user:pw@example.com/", "credentials"},
		{"http://127.0.0.1:9/hook", "loopback"},
		{"http://[::1]/hook", "loopback"},
		{"http://localhost:9/hook", "loopback"},
		{"http://10.1.2.3/hook", "private"},
		{"http://192.168.0.1/hook", "private"},
		{"http://169.254.169.254/latest/meta-data", "link-local"},
		{"http://0.0.0.0/", "unspecified"},
		{"http://[::ffff:10.0.0.1]/", "private"},
		{"http://100.64.0.1/", "carrier-grade"},
		{"https://no-such-host.invalid/", "does not resolve"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}, {"callback_url", tt.url}}, filePart{"image", "x.png", pngImage(t, 28, 28)})
			if msg := expectError(t, r, http.StatusUnprocessableEntity); !strings.Contains(msg, tt.want) || !strings.Contains(msg, "callback_url") {
				t.Fatalf("message %q does not name %q", msg, tt.want)
			}
			r = c.json("POST", "/api/v1/grades", map[string]string{"model": "fashion", "image_id": img, "callback_url": tt.url})
			if msg := expectError(t, r, http.StatusUnprocessableEntity); !strings.Contains(msg, tt.want) {
				t.Fatalf("JSON body: message %q does not name %q", msg, tt.want)
			}
		})
	}
}

// TestCallbackAllowList: GRADELINE_CALLBACK_ALLOW admits loopback (a
// grade of a catalogue image, JSON body), and nothing else.
func TestCallbackAllowList(t *testing.T) {
	needInference(t)
	s := startIngest(t, allowLoopback)
	c, _ := s.newUser(t)
	rc := newReceiver(t, http.StatusNoContent)
	img := newImage(t, c)
	r := c.json("POST", "/api/v1/grades", map[string]string{"model": "fashion", "image_id": img, "callback_url": rc.URL + "/json"})
	if r.Status != http.StatusOK {
		t.Fatalf("grade: %d %s", r.Status, r.Body)
	}
	a := gradeCallbacks(t, c, r.JSON(t)["id"].(string), 1)[0]
	if a.Outcome != bus.CallbackDelivered || a.StatusCode != http.StatusNoContent {
		t.Fatalf("attempt %+v", a)
	}
	// Still refused: private addresses outside the list.
	r = c.json("POST", "/api/v1/grades", map[string]string{"model": "fashion", "image_id": img, "callback_url": "http://10.0.0.1/"})
	if msg := expectError(t, r, http.StatusUnprocessableEntity); !strings.Contains(msg, "private") {
		t.Fatalf("message %q", msg)
	}
}

// TestCallbackSurvivesEdgeRestart: the retry of a failed delivery is kept
// by the stream, not by the edge: an edge stopped after the first attempt
// and another started after it delivers the second.
func TestCallbackSurvivesEdgeRestart(t *testing.T) {
	needInference(t)
	a := startIngest(t, allowLoopback)
	c, _ := a.newUser(t)
	rc := newReceiver(t, http.StatusBadGateway, http.StatusOK)
	id := submitWithCallback(t, c, rc.URL)
	rc.waitRequests(t, 1)
	// Close first: it stops the deliverer at once (the retry is due a
	// second after the first attempt), then the HTTP side.
	a.Close()
	closedAt := time.Now()
	if err := a.Shutdown(10 * time.Second); err != nil {
		t.Fatal(err)
	}

	b := startIngest(t, allowLoopback)
	second := rc.waitRequests(t, 2)[1]
	if !second.at.After(closedAt) || second.header.Get(bus.HeaderCallbackAttempt) != "2" {
		t.Fatalf("second attempt at %v, the first edge closed at %v (attempt header %q)", second.at, closedAt, second.header.Get(bus.HeaderCallbackAttempt))
	}
	cb := b.client(t)
	cb.token = c.token
	attempts := gradeCallbacks(t, cb, id, 2)
	if attempts[0].Outcome != bus.CallbackRetrying || attempts[0].StatusCode != http.StatusBadGateway ||
		attempts[1].Outcome != bus.CallbackDelivered || attempts[1].StatusCode != http.StatusOK {
		t.Fatalf("attempts %+v", attempts)
	}
}

// TestCallbackRetryAfter: a 429 or 503 with Retry-After (seconds, or an
// HTTP date) sets when the next attempt comes instead of the backoff
// (1 s, then 2 s), and the attempt records the header and that time; a
// 503 without one keeps the backoff.
func TestCallbackRetryAfter(t *testing.T) {
	needInference(t)
	s := startIngest(t, allowLoopback)
	c, _ := s.newUser(t)
	const wait = 4 * time.Second // above both backoffs it replaces
	var dateSent string
	rc := newAnsweringReceiver(t, func(i int, h http.Header) int {
		switch i {
		case 0:
			h.Set("Retry-After", "4")
			return http.StatusTooManyRequests
		case 1:
			// A date one second further: its whole seconds are cut.
			dateSent = time.Now().Add(wait + time.Second).UTC().Format(http.TimeFormat)
			h.Set("Retry-After", dateSent)
			return http.StatusServiceUnavailable
		case 2:
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	id := submitWithCallback(t, c, rc.URL)
	reqs := rc.waitRequests(t, 4)
	// No sooner than asked (the server holds the redelivery that long);
	// the third attempt follows the backoff of the 503 without a header.
	for i, min := range []time.Duration{wait - wait/8, wait - time.Second} {
		if gap := reqs[i+1].at.Sub(reqs[i].at); gap < min {
			t.Errorf("attempt %d came %s after attempt %d; Retry-After asked for %s", i+2, gap, i+1, min)
		}
	}
	attempts := gradeCallbacks(t, c, id, 4)
	want := []struct {
		status     int
		retryAfter string
		outcome    string
	}{
		{http.StatusTooManyRequests, "4", bus.CallbackRetrying},
		{http.StatusServiceUnavailable, dateSent, bus.CallbackRetrying},
		{http.StatusServiceUnavailable, "", bus.CallbackRetrying},
		{http.StatusOK, "", bus.CallbackDelivered},
	}
	for i, a := range attempts {
		w := want[i]
		if a.StatusCode != w.status || a.RetryAfter != w.retryAfter || a.Outcome != w.outcome {
			t.Fatalf("attempt %d: %+v, want status %d, retry_after %q, %s", i+1, a, w.status, w.retryAfter, w.outcome)
		}
	}
	// The record says when the next attempt was due: after the wait asked
	// for (its start plus the wait, at least), and the backoff's 4 s is
	// not what a header-less 503 after two attempts gets (2 s).
	for i := range 2 {
		if due := attempts[i].NextAttemptAt.Sub(attempts[i].At); due < wait-time.Second || due > callbackCeiling {
			t.Errorf("attempt %d: next attempt due %s after it, want at least %s", i+1, due, wait-time.Second)
		}
	}
}

// callbackCeiling is the bound of a Retry-After (the backoff's ceiling).
const callbackCeiling = 30 * time.Minute

// TestCallbackFromOlderInference: a result an older inference published
// with its callback_url in GRADES (before gradeline.callbacks.due) is
// still delivered, through the draining consumer an older edge left; a
// result of this inference, whose URL is not in GRADES, is delivered once.
func TestCallbackFromOlderInference(t *testing.T) {
	needInference(t)
	js := testJS(t)
	ctx := context.Background()
	legacy := bus.ConsumerIngestCallbacksLegacy
	if _, err := js.CreateOrUpdateConsumer(ctx, legacy.Stream, legacy.Config()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteConsumer(ctx, legacy.Stream, legacy.Durable) })

	s := startIngest(t, allowLoopback)
	c, name := s.newUser(t)
	secret := webhookSecret(t, c, "GET")
	rc := newReceiver(t, http.StatusOK)

	old := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: bus.NewID(), ImageID: bus.NewID(),
		Owner: name, Model: "fashion", Label: "Bag", Score: 1, Scores: map[string]float64{"Bag": 1},
		CallbackURL: rc.URL + "/old", SubmittedAt: time.Now().UTC()}
	if _, err := bus.Publish(ctx, js, old); err != nil {
		t.Fatal(err)
	}
	first := rc.waitRequests(t, 1)[0]
	if err := bus.VerifyCallback(secret, first.header.Get(bus.HeaderCallbackSignature), first.body, time.Now(), 5*time.Minute); err != nil {
		t.Fatalf("older result's callback: %v", err)
	}
	if a := gradeCallbacks(t, c, old.GradeID, 1)[0]; a.Outcome != bus.CallbackDelivered || a.URL != rc.URL+"/old" {
		t.Fatalf("older result's attempt %+v", a)
	}

	id := submitWithCallback(t, c, rc.URL+"/new")
	if a := gradeCallbacks(t, c, id, 1)[0]; a.Outcome != bus.CallbackDelivered || a.URL != rc.URL+"/new" {
		t.Fatalf("attempt %+v", a)
	}
	if got := rc.got(); len(got) != 2 {
		t.Fatalf("receiver got %d requests, want 2 (one per result)", len(got))
	}
}
