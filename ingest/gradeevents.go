package ingest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// GET /api/v1/grades/events streams the caller's grade results as
// Server-Sent Events. Each event's id is the result's sequence in the
// GRADES stream, so a client that reconnects with Last-Event-ID gets
// every result after it from the stream (none lost, none twice), then the
// live ones. An ordered consumer tails the stream from that sequence and
// the edge keeps the caller's results; results are small and the stream
// is read at the server's pace, so one stream per client is cheap.

// Server-Sent Events settings.
const (
	// sseHeartbeat is how often a comment line keeps proxies from closing
	// an idle stream and finds clients that went away.
	sseHeartbeat = 15 * time.Second
	// maxEventStreams bounds the event streams one edge replica serves at
	// once (each holds an ordered consumer on the server).
	maxEventStreams = 1000
	// sseBuffer is how many results wait for a slow client.
	sseBuffer = 64
)

// randomHex returns n random bytes in hex (a unique consumer name).
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startOfEvents reads where a stream of events starts: after
// Last-Event-ID (the header, or ?last_event_id= for clients that cannot
// set headers), or with the results to come when none is given.
func startOfEvents(c *fiber.Ctx) (uint64, error) {
	v := strings.TrimSpace(c.Get("Last-Event-ID"))
	if v == "" {
		v = strings.TrimSpace(c.Query("last_event_id"))
	}
	if v == "" {
		return 0, nil
	}
	seq, err := strconv.ParseUint(v, 10, 64)
	if err != nil || seq == 0 {
		return 0, &apiError{Status: http.StatusBadRequest, Message: "invalid Last-Event-ID",
			Details: []string{"Last-Event-ID: the id of an event of this stream (a positive integer)"}}
	}
	return seq, nil
}

func (s *Server) gradeEvents(c *fiber.Ctx) error {
	after, err := startOfEvents(c)
	if err != nil {
		return err
	}
	if c.Method() == fiber.MethodHead {
		// Headers only: no consumer for a body never sent.
		c.Set(fiber.HeaderContentType, "text/event-stream")
		return c.SendStatus(http.StatusOK)
	}
	if n := s.eventStreams.Add(1); n > maxEventStreams {
		s.eventStreams.Add(-1)
		c.Set(fiber.HeaderRetryAfter, "5")
		return errorf(http.StatusServiceUnavailable, "too many event streams on this server; retry")
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{bus.SubjectGradeCompleted, bus.SubjectGradeFailed},
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		InactiveThreshold: 30 * time.Second,
		NamePrefix:        "ingest-sse-" + randomHex(8),
	}
	if after > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	}
	ctx := c.UserContext()
	if after > 0 {
		// An id beyond the stream's end comes from before the stream was
		// made anew (its sequences restarted): the live results then,
		// rather than silence until the new stream catches up.
		if st, err := s.js.Stream(ctx, bus.StreamGrades); err == nil && after > st.CachedInfo().State.LastSeq {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverNewPolicy, 0
		}
	}
	cons, err := s.js.OrderedConsumer(ctx, bus.StreamGrades, cfg)
	if err != nil {
		s.eventStreams.Add(-1)
		s.log.Warn("event stream: ordered consumer", "err", err, "request_id", bus.RequestID(ctx))
		return errorf(http.StatusServiceUnavailable, "event stream unavailable; retry")
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(sseBuffer))
	if err != nil {
		s.eventStreams.Add(-1)
		return errorf(http.StatusServiceUnavailable, "event stream unavailable; retry")
	}
	user := userOf(c)
	conn := c.Context().Conn()
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	c.Status(http.StatusOK)
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.eventStreams.Add(-1)
		defer func() {
			it.Stop()
			// The consumer goes with the stream (InactiveThreshold is the fallback).
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if info := cons.CachedInfo(); info != nil {
				_ = s.js.DeleteConsumer(dctx, bus.StreamGrades, info.Name)
			}
			cancel()
		}()
		s.streamGrades(w, it, user, conn)
	})
	return nil
}

// streamGrades writes the user's results from it until the client goes
// away, the server stops, or the stream fails. The server's write timeout
// bounds a whole response; each write of the stream moves it on instead
// (a client that stops reading is dropped after two heartbeats).
func (s *Server) streamGrades(w *bufio.Writer, it jetstream.MessagesContext, user string, conn net.Conn) {
	flush := func() bool {
		_ = conn.SetWriteDeadline(time.Now().Add(2 * sseHeartbeat))
		return w.Flush() == nil
	}
	msgs := make(chan jetstream.Msg, sseBuffer)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(msgs)
		for {
			m, err := it.Next()
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					s.log.Warn("event stream ended", "err", err)
				}
				return
			}
			select {
			case msgs <- m:
			case <-stop:
				return
			}
		}
	}()
	// The retry hint and a first comment reach the client at once: it
	// knows the stream is open before any result.
	fmt.Fprintf(w, "retry: 2000\n: streaming grade results of %s\n\n", user)
	if !flush() {
		return
	}
	beat := time.NewTicker(sseHeartbeat)
	defer beat.Stop()
	for {
		select {
		case <-s.stopping:
			return
		case <-beat.C:
			if _, err := w.WriteString(": heartbeat\n\n"); err != nil || !flush() {
				return
			}
		case m, ok := <-msgs:
			if !ok {
				return
			}
			if !s.writeGradeEvent(w, m, user) {
				continue
			}
			if !flush() {
				return
			}
		}
	}
}

// writeGradeEvent writes m as an event when it is one of user's results;
// it reports whether it wrote anything.
func (s *Server) writeGradeEvent(w *bufio.Writer, m jetstream.Msg, user string) bool {
	ev, err := bus.Decode(m.Data())
	if err != nil {
		return false
	}
	var owner string
	switch e := ev.(type) {
	case *bus.GradeCompleted:
		owner = e.Owner
	case *bus.GradeFailed:
		owner = e.Owner
	default:
		return false
	}
	if owner != user {
		return false
	}
	md, err := m.Metadata()
	if err != nil {
		return false
	}
	g := bus.GradeFrom(nil, ev)
	data, err := json.Marshal(g)
	if err != nil {
		return false
	}
	fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", md.Sequence.Stream, ev.EventMeta().Type, data)
	return true
}
