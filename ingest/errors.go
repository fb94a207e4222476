package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
)

// apiError is an error answered to the client as
// {"code", "message", "details"?} plus optional extra fields.
type apiError struct {
	Status  int
	Message string
	Details []string
	// Extra fields merged into the body (e.g. a failed grade's id).
	Extra map[string]any
	// Headers set on the response (Retry-After, WWW-Authenticate).
	Headers map[string]string
	// Cause is the underlying error (driver, library, bus): logged with the
	// request id, never sent. The client gets the request id in X-Request-Id.
	Cause error
}

func (e *apiError) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Message) }

func (e *apiError) Unwrap() error { return e.Cause }

func errorf(status int, format string, args ...any) *apiError {
	return &apiError{Status: status, Message: fmt.Sprintf(format, args...)}
}

func invalid(message string, details ...string) *apiError {
	return &apiError{Status: http.StatusUnprocessableEntity, Message: message, Details: details}
}

// errorBody is the JSON shape of every error.
type errorBody struct {
	Code    int      `json:"code"`
	Message string   `json:"message"`
	Details []string `json:"details,omitempty"`
}

// handleError is the Fiber error handler: every error, including 404, 405,
// 413, parse errors and recovered panics, leaves as errorBody JSON.
func (s *Server) handleError(c *fiber.Ctx, err error) error {
	e := s.classify(c, err)
	if e.Cause != nil || (e.Status >= 500 && len(e.Details) > 0) {
		// Server-side failures carry driver, library or subject text: it
		// goes to the log under the request id, the client keeps the message.
		level := slog.LevelWarn
		if e.Status >= 500 {
			level = slog.LevelError
		}
		s.log.Log(c.UserContext(), level, "request failed", "method", c.Method(), "path", c.Path(), "status", e.Status,
			"message", e.Message, "details", e.Details, "cause", e.Cause, "request_id", bus.RequestID(c.UserContext()))
		if e.Status >= 500 {
			e = &apiError{Status: e.Status, Message: e.Message, Extra: e.Extra, Headers: e.Headers}
		}
	}
	for k, v := range e.Headers {
		c.Set(k, v)
	}
	if isOIPPath(c.Path()) {
		// What fails before the protocol's routes see the request (a body
		// over the limit) still answers in the protocol's shape.
		return c.Status(e.Status).JSON(fiber.Map{"error": e.Message})
	}
	body := map[string]any{"code": e.Status, "message": e.Message}
	if len(e.Details) > 0 {
		body["details"] = e.Details
	}
	for k, v := range e.Extra {
		if _, taken := body[k]; !taken {
			body[k] = v
		}
	}
	data, merr := json.Marshal(body)
	if merr != nil {
		data = []byte(`{"code":500,"message":"internal server error"}`)
		e.Status = http.StatusInternalServerError
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSONCharsetUTF8)
	return c.Status(e.Status).Send(data)
}

func (s *Server) classify(c *fiber.Ctx, err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var be *bus.Error
	if errors.As(err, &be) {
		return &apiError{Status: httpStatus(be.Code), Message: be.Message, Details: be.Details}
	}
	var fe *fiber.Error
	if errors.As(err, &fe) {
		switch fe.Code {
		case http.StatusNotFound:
			return errorf(http.StatusNotFound, "no route for %s %s", c.Method(), c.Path())
		case http.StatusMethodNotAllowed:
			return errorf(http.StatusMethodNotAllowed, "method %s is not allowed on %s", c.Method(), c.Path())
		case http.StatusRequestEntityTooLarge:
			s.drainRejectedBody(c)
			return errorf(http.StatusRequestEntityTooLarge, "request body exceeds the limit of %d bytes", s.cfg.MaxBodyBytes)
		}
		msg := fe.Message
		if msg == "" {
			msg = http.StatusText(fe.Code)
		}
		return &apiError{Status: fe.Code, Message: msg}
	}
	if errors.Is(err, bus.ErrUnavailable) {
		return &apiError{Status: http.StatusServiceUnavailable, Message: "a backing service is unavailable", Cause: err}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return errorf(http.StatusServiceUnavailable, "a backing service did not answer in time")
	}
	s.log.Error("request failed", "method", c.Method(), "path", c.Path(), "err", err,
		"request_id", bus.RequestID(c.UserContext()))
	return errorf(http.StatusInternalServerError, "internal server error")
}

// httpStatus maps the code of a query service's error to the edge's
// answer, the one place the transport-neutral bus.Code meets HTTP: the
// codes carry HTTP's numbers, so an error code passes unchanged; anything
// else is a fault of the service behind the edge, a bad gateway.
func httpStatus(c bus.Code) int {
	if c < 400 || c > 599 {
		return http.StatusBadGateway
	}
	return int(c)
}

// drainRejectedBody reads and discards the rest of a body fasthttp
// rejected for its size before the 413 is written. Without it the
// connection closes with unread data, the kernel answers the client with a
// reset, and the client sees "broken pipe" instead of the 413. Bounded in
// bytes and by an idle timeout.
func (s *Server) drainRejectedBody(c *fiber.Ctx) {
	conn := c.Context().Conn()
	if conn == nil || len(c.Body()) > 0 {
		return
	}
	limit := min(4*s.cfg.MaxBodyBytes, 256<<20)
	buf := make([]byte, 64<<10)
	var read int64
	for read < limit {
		if err := conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond)); err != nil {
			return
		}
		n, err := conn.Read(buf)
		read += int64(n)
		if err != nil {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
}
