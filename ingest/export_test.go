package ingest

import "time"

// SetModelListTTL shortens how long the edge trusts its model list, so a
// test sees refreshes.
func SetModelListTTL(s *Server, ttl time.Duration) {
	s.models.mu.Lock()
	defer s.models.mu.Unlock()
	s.models.ttl = ttl
}

// IsStopping reports whether Shutdown has begun.
func IsStopping(s *Server) bool { return s.isStopping() }
