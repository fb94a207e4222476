package ingest

// Liveness and readiness of the edge.

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gradeline/gradeline/bus"
)

func (s *Server) healthz(c *fiber.Ctx) error {
	return c.JSON(fiber.Map{"status": "ok"})
}

func (s *Server) readyz(c *fiber.Ctx) error {
	checks := map[string]string{}
	ready := true
	if s.isStopping() {
		// Load balancers stop sending before the listener goes.
		checks["http"] = "shutting down"
		ready = false
	}
	if s.nc.IsConnected() {
		checks["nats"] = "ok"
	} else {
		checks["nats"] = "not connected: " + s.nc.Status().String()
		ready = false
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), 2*time.Second)
	defer cancel()
	if err := s.mongo.Ping(ctx, nil); err != nil {
		// The driver's text goes to the log, not to whoever asks.
		s.log.Warn("readiness: mongodb ping failed", "err", err, "request_id", bus.RequestID(c.UserContext()))
		checks["mongodb"] = "ping failed"
		ready = false
	} else {
		checks["mongodb"] = "ok"
	}
	if !ready {
		var failing []string
		for k, v := range checks {
			if v != "ok" {
				failing = append(failing, k)
			}
		}
		return &apiError{Status: http.StatusServiceUnavailable, Message: "not ready: " + joinSorted(failing), Extra: map[string]any{"checks": checks}}
	}
	return c.JSON(fiber.Map{"status": "ready", "checks": checks})
}

// joinSorted lists names in a stable order for messages.
func joinSorted(names []string) string {
	slices.Sort(names)
	return strings.Join(names, ", ")
}
