package ingest

// The edge's calls over the bus: events published (answered only once
// JetStream acknowledged them) and queries to the services behind it.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
)

// publish stores ev in JetStream and returns once the PubAck arrived.
func (s *Server) publish(ctx context.Context, ev bus.Event) error {
	// A full disk refuses at once; a publish would wait out its timeout.
	if p := s.storageProblemText(); p != "" {
		return &apiError{Status: http.StatusServiceUnavailable, Message: "nothing was accepted: " + p}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// bus.Publish times the publish and counts its failures.
	ack, err := bus.Publish(ctx, s.js, ev)
	if err == nil {
		if u := writerOf(ev); u != "" {
			s.writes.note(u, ack.Stream, ack.Sequence)
		}
	}
	if err != nil {
		s.log.Error("publish failed", "type", ev.EventMeta().Type, "id", ev.EventMeta().ID, "err", err,
			"request_id", bus.RequestID(ctx))
		msg := "the event store (NATS JetStream) did not acknowledge the event; nothing was accepted"
		if p := s.storageProblemText(); p != "" {
			msg = "nothing was accepted: " + p
		}
		return &apiError{Status: http.StatusServiceUnavailable, Message: msg, Details: []string{err.Error()}}
	}
	return nil
}

// serviceOf names the service answering a query subject, for 503 messages.
func serviceOf(subject string) string {
	switch subject {
	case bus.SvcAnnotationsList, bus.SvcAnnotationsGet, bus.SvcImagesList, bus.SvcImagesGet, bus.SvcGradesGet, bus.SvcGradesList:
		return "annotator"
	case bus.SvcModelsList:
		return "inference"
	default:
		return "analytics"
	}
}

// listReply asks a listing query service and answers its page (an empty
// list, never null, when nothing matched).
func listReply[T any](c *fiber.Ctx, s *Server, subject string, q any) error {
	resp, err := request[bus.List[T]](c.UserContext(), s, subject, q)
	if err != nil {
		return err
	}
	if resp.Data == nil {
		resp.Data = []T{}
	}
	return c.JSON(resp)
}

// request asks a query service; a *bus.Error passes through with its code,
// no responder becomes 503 naming the service.
func request[Resp any](ctx context.Context, s *Server, subject string, req any) (Resp, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := bus.Request[Resp](ctx, s.nc, subject, req)
	outcome := "ok"
	defer func() { s.metrics.requestsBus.WithLabelValues(subject, outcome).Observe(time.Since(start).Seconds()) }()
	if err == nil {
		return resp, nil
	}
	var be *bus.Error
	if errors.As(err, &be) {
		outcome = "service_error"
		return resp, be
	}
	outcome = "unavailable"
	if errors.Is(err, bus.ErrUnavailable) {
		return resp, &apiError{Status: http.StatusServiceUnavailable,
			Message: fmt.Sprintf("the %s service is unavailable (no answer on %s)", serviceOf(subject), subject)}
	}
	return resp, &apiError{Status: http.StatusServiceUnavailable,
		Message: fmt.Sprintf("the %s service could not be reached", serviceOf(subject)), Details: []string{err.Error()}}
}
