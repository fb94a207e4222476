package ingest

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/gradeline/gradeline/bus"
)

var (
	validRequestID   = regexp.MustCompile(`^[A-Za-z0-9._:\-]{1,128}$`)
	validTraceparent = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)
)

// observe is the outermost middleware: it assigns the request id and trace
// context (carried into every published event and bus request), turns a
// returned error into the JSON error response, and records the access log
// and metrics with the final status.
func (s *Server) observe(c *fiber.Ctx) error {
	start := time.Now()
	rid := c.Get(fiber.HeaderXRequestID)
	if !validRequestID.MatchString(rid) {
		rid = newRequestID()
	}
	c.Set(fiber.HeaderXRequestID, rid)
	tp := c.Get("traceparent")
	if !validTraceparent.MatchString(tp) || tp[3:35] == "00000000000000000000000000000000" || tp[36:52] == "0000000000000000" {
		tp = newTraceparent()
	}
	ctx := bus.WithTraceparent(bus.WithRequestID(c.UserContext(), rid), tp)
	c.SetUserContext(ctx)
	// Nothing the edge serves is meant to be sniffed into another type.
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")

	// Every JSON body is UTF-8; one declaring another charset is refused
	// before any handler reads it.
	err := checkJSONCharset(c.Get(fiber.HeaderContentType))
	if err == nil {
		err = c.Next()
	}
	if err != nil {
		if herr := s.handleError(c, err); herr != nil {
			s.log.Error("writing error response", "err", herr)
		}
	}
	status := c.Response().StatusCode()
	route := s.routeLabel(c)
	elapsed := time.Since(start)
	code := strconv.Itoa(status)
	s.metrics.requests.WithLabelValues(route, c.Method(), code).Inc()
	s.metrics.latency.WithLabelValues(route, c.Method(), code).Observe(elapsed.Seconds())
	if ctx := c.Context(); s.log.Enabled(ctx, slog.LevelInfo) {
		// Typed attributes: one access line per request is on the hot path.
		user, _ := c.Locals(localUser).(string)
		s.log.LogAttrs(ctx, slog.LevelInfo, "http request",
			slog.String("method", c.Method()), slog.String("path", c.Path()), slog.String("route", route),
			slog.Int("status", status), slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
			slog.Int("bytes_in", bytesIn(c)), slog.Int("bytes_out", len(c.Response().Body())),
			slog.String("ip", s.clientIP(c)), slog.String("user", user),
			slog.String("request_id", rid), slog.String("traceparent", tp))
	}
	return nil
}

// bytesIn is the size of the request's body for the access log. fasthttp
// parses a multipart form straight from the connection, and asking it for
// the body then marshals the whole form again (every upload paid a copy of
// its image for one number): the declared Content-Length is that size.
func bytesIn(c *fiber.Ctx) int {
	if n := c.Request().Header.ContentLength(); n >= 0 {
		return n
	}
	return len(c.Request().Body())
}

// routeLabel names the matched route template, or "unmatched", so that
// metric labels stay bounded whatever paths clients send.
func (s *Server) routeLabel(c *fiber.Ctx) string {
	r := c.Route()
	// An unmatched request reports the middleware mounted at "/", the
	// web page's path too: only the page itself is "/".
	if r != nil && (r.Path != "/" || c.Path() == "/") {
		if _, ok := s.routeSet[r.Method+" "+r.Path]; ok {
			return r.Path
		}
	}
	return "unmatched"
}

// newTraceparent starts a new W3C trace for a request that came without
// one. Trace and request ids need uniqueness, not secrecy: the runtime's
// ChaCha8 generator avoids a getrandom call per request.
func newTraceparent() string {
	var b [24]byte
	binary.LittleEndian.PutUint64(b[0:], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	binary.LittleEndian.PutUint64(b[16:], rand.Uint64()|1) // never all zero
	b[0] |= 1
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-01"
}

// newRequestID returns 32 hex characters.
func newRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// jsonForUnknownMethods answers a method Fiber does not route (PROPFIND,
// BREW, ...) with the JSON error every other response has: Fiber itself
// would answer a text/plain 400 before any middleware runs.
func (s *Server) jsonForUnknownMethods(app *fiber.App, next fasthttp.RequestHandler) fasthttp.RequestHandler {
	known := map[string]bool{}
	for _, m := range app.Config().RequestMethods {
		known[m] = true
	}
	return func(ctx *fasthttp.RequestCtx) {
		if known[string(ctx.Method())] {
			next(ctx)
			return
		}
		rid := newRequestID()
		body, _ := json.Marshal(errorBody{Code: http.StatusMethodNotAllowed,
			Message: fmt.Sprintf("method %.32q is not supported", ctx.Method())})
		ctx.Response.Header.Set(fiber.HeaderXRequestID, rid)
		ctx.Response.Header.Set(fiber.HeaderXContentTypeOptions, "nosniff")
		ctx.Response.Header.Set(fiber.HeaderAllow, "GET, HEAD, POST, PUT, PATCH, DELETE")
		ctx.SetContentType(fiber.MIMEApplicationJSONCharsetUTF8)
		ctx.SetStatusCode(http.StatusMethodNotAllowed)
		ctx.SetBody(body)
	}
}
