package ingest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	ID, Event string
	Data      map[string]any
}

// sseStream reads the events of one GET /api/v1/grades/events.
type sseStream struct {
	events chan sseEvent
	opened chan struct{} // closed at the first comment: the stream is live
	ended  chan error    // the reader's end: io.EOF when the server closed it
	cancel context.CancelFunc
}

func openEvents(t *testing.T, c *client, lastEventID string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/api/v1/grades/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		body, _ := io.ReadAll(res.Body)
		cancel()
		t.Fatalf("events: %d %s %s", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	st := &sseStream{events: make(chan sseEvent, 64), opened: make(chan struct{}), ended: make(chan error, 1), cancel: cancel}
	t.Cleanup(cancel)
	go func() {
		defer res.Body.Close()
		r := bufio.NewReader(res.Body)
		var ev sseEvent
		var opened bool
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				st.ended <- err
				close(st.events)
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, ":"):
				if !opened {
					opened = true
					close(st.opened)
				}
			case strings.HasPrefix(line, "id: "):
				ev.ID = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				ev.Event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev.Data); err != nil {
					st.ended <- err
					close(st.events)
					return
				}
			case line == "" && ev.ID != "":
				st.events <- ev
				ev = sseEvent{}
			}
		}
	}()
	select {
	case <-st.opened:
	case err := <-st.ended:
		t.Fatalf("event stream ended before it opened: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("event stream did not open")
	}
	return st
}

// next returns the next event.
func (st *sseStream) next(t *testing.T) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-st.events:
		if !ok {
			t.Fatal("event stream ended")
		}
		return ev
	case <-time.After(2 * time.Minute):
		t.Fatal("no event")
	}
	return sseEvent{}
}

// gradeNow submits a grade and waits for its result.
func gradeNow(t *testing.T, c *client) string {
	t.Helper()
	r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "x.png", pngImage(t, 28, 28)})
	if r.Status != http.StatusOK {
		t.Fatalf("grade: %d %s", r.Status, r.Body)
	}
	return r.JSON(t)["id"].(string)
}

// TestGradeEventsStreamsOwnResultsAndResumes: the stream carries the
// caller's results and no one else's, in order, with the GRADES sequence
// as id; reconnecting with Last-Event-ID replays exactly what came after;
// the stream ends when the server stops.
func TestGradeEventsStreamsOwnResultsAndResumes(t *testing.T) {
	needInference(t)
	s := startIngest(t)
	alice, aliceName := s.newUser(t)
	bob, _ := s.newUser(t)

	aliceStream := openEvents(t, alice, "")
	bobStream := openEvents(t, bob, "")

	// Alice, Bob, Alice: each result is in the stream before the next submission.
	a1 := gradeNow(t, alice)
	b1 := gradeNow(t, bob)
	a2 := gradeNow(t, alice)

	e1, e2 := aliceStream.next(t), aliceStream.next(t)
	for i, tc := range []struct {
		ev sseEvent
		id string
	}{{e1, a1}, {e2, a2}} {
		if tc.ev.Data["id"] != tc.id || tc.ev.Data["owner"] != aliceName || tc.ev.Event != "grade.completed" || tc.ev.Data["status"] != "completed" {
			t.Fatalf("alice's event %d: %+v, want grade %s (bob's %s must not appear)", i+1, tc.ev, tc.id, b1)
		}
	}
	s1, _ := strconv.ParseUint(e1.ID, 10, 64)
	s2, _ := strconv.ParseUint(e2.ID, 10, 64)
	if s1 == 0 || s2 <= s1+1 {
		// Bob's result lies between them in the stream.
		t.Fatalf("event ids %s, %s: want increasing GRADES sequences with bob's between", e1.ID, e2.ID)
	}
	if ev := bobStream.next(t); ev.Data["id"] != b1 {
		t.Fatalf("bob's event %+v, want grade %s", ev, b1)
	}
	aliceStream.cancel()

	// While Alice is away: a result of hers and one of Bob's.
	a3 := gradeNow(t, alice)
	gradeNow(t, bob)
	resumed := openEvents(t, alice, e1.ID)
	a4 := gradeNow(t, alice) // live, after the replay
	for i, want := range []string{a2, a3, a4} {
		ev := resumed.next(t)
		if ev.Data["id"] != want {
			t.Fatalf("resumed event %d: grade %v, want %s", i+1, ev.Data["id"], want)
		}
		if i == 0 && ev.ID != e2.ID {
			t.Fatalf("replayed event id %s, want %s", ev.ID, e2.ID)
		}
	}

	t.Run("bad Last-Event-ID", func(t *testing.T) {
		for _, v := range []string{"x", "-1", "0", "1.5"} {
			r := alice.do("GET", "/api/v1/grades/events", nil, map[string]string{"Last-Event-ID": v})
			expectError(t, r, http.StatusBadRequest)
		}
	})
	t.Run("an id beyond the stream's end opens with the live results", func(t *testing.T) {
		st := openEvents(t, alice, "999999999999")
		st.cancel()
	})
	t.Run("HEAD", func(t *testing.T) {
		r := alice.do("HEAD", "/api/v1/grades/events", nil, nil)
		if r.Status != http.StatusOK || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("HEAD: %d %s", r.Status, r.Header.Get("Content-Type"))
		}
	})
	t.Run("no token", func(t *testing.T) {
		r := s.client(t).do("GET", "/api/v1/grades/events", nil, nil)
		expectError(t, r, http.StatusUnauthorized)
	})

	// The server stops: the stream ends cleanly (EOF), not by a timeout.
	if err := s.Shutdown(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-resumed.ended:
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("stream ended with %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the stream outlived the server")
	}
}
