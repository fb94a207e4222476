package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest/internal/auth"
)

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

// startAuthState opens the key-value buckets of login throttling and token
// revocation and loads the revocation list.
func (s *Server) startAuthState(ctx context.Context) error {
	kv, err := bus.KVBucket(ctx, s.js, bus.LoginThrottleBucket, bus.LoginThrottleTTL, s.cfg.Replicas)
	if err != nil {
		return err
	}
	s.throttle = auth.NewThrottle(kv, s.log)
	rkv, err := bus.KVBucket(ctx, s.js, bus.RevokedTokensBucket, bus.RevokedTokensTTL, s.cfg.Replicas)
	if err != nil {
		return err
	}
	s.revoked = auth.NewRevocations(rkv)
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.revoked.Start(lctx); err != nil {
		return err
	}
	s.tokens = auth.NewTokens(s.cfg.JWTSecret, s.cfg.JWTIssuer, s.cfg.JWTAudience, s.revoked)
	return nil
}

// joinSorted lists names in a stable order for messages.
func joinSorted(names []string) string {
	slices.Sort(names)
	return strings.Join(names, ", ")
}
