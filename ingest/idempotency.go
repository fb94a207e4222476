package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// Idempotency-Key (the IETF httpapi draft, as Stripe uses it) on every POST
// that publishes: a client that lost the answer (reset, EOF at a crash,
// timeout) retries with the same key and gets the first answer, and
// nothing is stored twice.
//
//   - The key, scoped to the user, decides the ids the request creates
//     (event ids, image ids): a retry publishes the same Nats-Msg-Id, which
//     the stream drops within its duplicate window, even when the first
//     answer never got recorded (the edge crashed after the PubAck).
//   - The first answer (status, Location, body) is kept in the key-value
//     bucket bus.IdempotencyBucket for bus.IdempotencyTTL and replayed,
//     with Idempotent-Replayed: true.
//   - The same key with another request (other route or other content) is
//     422; while the first request with the key is still running, 409.
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	headerReplayed       = "Idempotent-Replayed"
	maxIdempotencyKey    = 255
	// A pending entry older than this is taken over by a retry: its edge
	// crashed or the request is stuck. Running the request again is safe
	// (the ids are the same); the 409 only saves doing the work twice.
	idemPendingStale = 10 * time.Second
)

// idempotentRoutes are the POSTs that publish events.
var idempotentRoutes = []string{
	"/api/v1/annotations", "/api/annotation",
	"/api/v1/grades", "/api/grade",
	"/api/v1/images", "/api/images",
	"/api/v1/iris/measurements",
}

// publishes reports whether the route takes an Idempotency-Key.
func publishes(r route) bool {
	return r.Method == fiber.MethodPost && slices.Contains(idempotentRoutes, r.Path)
}

// idempotencyParam is the header parameter in the OpenAPI document.
var idempotencyParam = M{
	"name": HeaderIdempotencyKey, "in": "header", "required": false,
	"schema": M{"type": "string", "minLength": 1, "maxLength": maxIdempotencyKey, "example": "0f8fad5b-d9cb-469f-a165-70867728950e"},
	"description": "A unique key per operation (a UUID is a good choice), scoped to your account. Retrying with the same key within " +
		bus.IdempotencyTTL.String() + " returns the first answer (with `Idempotent-Replayed: true`) and stores nothing twice. " +
		"The same key with a different request answers 422; while the first request with the key is still running, 409.",
}

// idemRecord is what the bucket holds per key.
type idemRecord struct {
	State       string            `json:"state"` // pending | done
	Fingerprint string            `json:"fingerprint"`
	Since       time.Time         `json:"since"`
	Status      int               `json:"status,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
	Body        []byte            `json:"body,omitempty"`
}

type idemKey struct{}

// idemScope is what a request's ids derive from.
type idemScope struct{ user, key string }

// idFor returns the id of the thing labelled label that the request
// creates: derived from the user and the Idempotency-Key when the request
// carries one (the same on every retry), else a new UUIDv7.
func idFor(ctx context.Context, label string) string {
	sc, ok := ctx.Value(idemKey{}).(idemScope)
	if !ok {
		return bus.NewID()
	}
	h := sha256.Sum256([]byte("gradeline.idempotency/" + sc.user + "\x00" + sc.key + "\x00" + label))
	var u uuid.UUID
	copy(u[:], h[:16])
	u[6] = u[6]&0x0f | 0x80 // version 8: custom, derived
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u.String()
}

// hasIdempotencyKey reports whether the request's ids derive from a key: an
// object stored under such an id may belong to an earlier, accepted try, so
// a failed retry must not delete it.
func hasIdempotencyKey(ctx context.Context) bool {
	_, ok := ctx.Value(idemKey{}).(idemScope)
	return ok
}

// idempotent runs after authenticate on the routes that publish.
func (s *Server) idempotent(c *fiber.Ctx) error {
	key := c.Get(HeaderIdempotencyKey)
	if key == "" {
		return c.Next()
	}
	if len(key) > maxIdempotencyKey || strings.ContainsFunc(key, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		return invalid("invalid Idempotency-Key",
			fmt.Sprintf("Idempotency-Key: 1 to %d visible ASCII characters (a UUID is a good choice)", maxIdempotencyKey))
	}
	user := userOf(c)
	fp, err := fingerprint(c)
	if err != nil {
		return err
	}
	ctx := c.UserContext()
	sum := sha256.Sum256([]byte(user + "\x00" + key))
	kvKey := hex.EncodeToString(sum[:])
	rev, err := s.claimKey(ctx, kvKey, fp)
	if err != nil {
		if writeReplay(c, err) {
			return nil
		}
		return err
	}
	c.SetUserContext(context.WithValue(ctx, idemKey{}, idemScope{user: user, key: key}))
	if err := c.Next(); err != nil {
		// Render the error here, so the answer can be recorded.
		if herr := s.handleError(c, err); herr != nil {
			return herr
		}
	}
	res := c.Response()
	status := res.StatusCode()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if status >= 500 {
		// Nothing (or not everything) was accepted: the client may retry
		// with the same key, and the same ids make the retry complete it.
		if err := s.idem.Delete(sctx, kvKey, jetstream.LastRevision(rev)); err != nil {
			s.log.Warn("idempotency: releasing key failed", "err", err, "request_id", bus.RequestID(ctx))
		}
		return nil
	}
	rec := idemRecord{State: "done", Fingerprint: fp, Since: time.Now(), Status: status,
		Headers: map[string]string{}, Body: bytes.Clone(res.Body())}
	for _, h := range []string{fiber.HeaderContentType, fiber.HeaderLocation, fiber.HeaderRetryAfter} {
		if v := res.Header.Peek(h); len(v) > 0 {
			rec.Headers[h] = string(v)
		}
	}
	data, _ := json.Marshal(rec)
	if _, err := s.idem.Update(sctx, kvKey, data, rev); err != nil {
		// A retry then runs the request again; its ids are the same, so
		// the streams still store each event once.
		s.log.Warn("idempotency: recording the answer failed", "err", err, "request_id", bus.RequestID(ctx))
	}
	return nil
}

// claimKey marks the key as in progress for this request, or answers the
// retry: the first answer (returned as errReplayed after writing it), 409
// while the first request runs, 422 for a different request.
func (s *Server) claimKey(ctx context.Context, kvKey, fp string) (uint64, error) {
	pending, _ := json.Marshal(idemRecord{State: "pending", Fingerprint: fp, Since: time.Now()})
	unavailable := func(err error) error {
		return &apiError{Status: http.StatusServiceUnavailable,
			Message: "the idempotency store (NATS key-value bucket " + bus.IdempotencyBucket + ") is unavailable; nothing was accepted",
			Details: []string{err.Error()}}
	}
	for range 3 {
		rev, err := s.idem.Create(ctx, kvKey, pending)
		if err == nil {
			return rev, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, unavailable(err)
		}
		entry, err := s.idem.Get(ctx, kvKey)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // released or expired meanwhile
		} else if err != nil {
			return 0, unavailable(err)
		}
		var rec idemRecord
		if err := json.Unmarshal(entry.Value(), &rec); err != nil {
			return 0, unavailable(fmt.Errorf("undecodable entry: %w", err))
		}
		if rec.Fingerprint != fp {
			return 0, &apiError{Status: http.StatusUnprocessableEntity,
				Message: "Idempotency-Key was already used with a different request",
				Details: []string{"Idempotency-Key: reused with another route or other parameters; use a new key for a new request"}}
		}
		switch {
		case rec.State == "done":
			return 0, replay(rec)
		case time.Since(rec.Since) < idemPendingStale:
			return 0, &apiError{Status: http.StatusConflict,
				Message: "a request with this Idempotency-Key is still being processed; retry later",
				Headers: map[string]string{fiber.HeaderRetryAfter: "1"}}
		}
		// Stale: take it over; a concurrent retry taking it too loses the race.
		if rev, err := s.idem.Update(ctx, kvKey, pending, entry.Revision()); err == nil {
			return rev, nil
		}
	}
	return 0, &apiError{Status: http.StatusConflict, Message: "a request with this Idempotency-Key is still being processed; retry later",
		Headers: map[string]string{fiber.HeaderRetryAfter: "1"}}
}

// replayed carries a recorded answer to the client as an error, so the
// handler never runs.
type replayed struct{ rec idemRecord }

func (r *replayed) Error() string { return fmt.Sprintf("replayed answer %d", r.rec.Status) }

func replay(rec idemRecord) error { return &replayed{rec: rec} }

// writeReplay writes a recorded answer.
func writeReplay(c *fiber.Ctx, err error) bool {
	var r *replayed
	if !errors.As(err, &r) {
		return false
	}
	for k, v := range r.rec.Headers {
		c.Set(k, v)
	}
	c.Set(headerReplayed, "true")
	c.Status(r.rec.Status)
	_ = c.Send(r.rec.Body)
	return true
}

// fingerprint identifies the request's content independently of how the
// client encoded it (a retried multipart body has a new boundary; JSON
// may be re-serialised).
func fingerprint(c *fiber.Ctx) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", c.Method(), c.Route().Path)
	ct := strings.ToLower(c.Get(fiber.HeaderContentType))
	switch {
	case strings.HasPrefix(ct, fiber.MIMEMultipartForm):
		form, err := c.MultipartForm()
		if err != nil {
			return "", &apiError{Status: http.StatusBadRequest, Message: "malformed multipart body", Details: []string{err.Error()}}
		}
		for _, k := range sortedKeys(form.Value) {
			fmt.Fprintf(h, "field %q %q\n", k, form.Value[k])
		}
		for _, k := range sortedKeys(form.File) {
			for _, fh := range form.File[k] {
				f, err := fh.Open()
				if err != nil {
					return "", &apiError{Status: http.StatusBadRequest, Message: "malformed multipart body", Details: []string{err.Error()}}
				}
				fs := sha256.New()
				_, err = io.Copy(fs, f)
				_ = f.Close()
				if err != nil {
					return "", &apiError{Status: http.StatusBadRequest, Message: "malformed multipart body", Details: []string{err.Error()}}
				}
				fmt.Fprintf(h, "file %q %q %x\n", k, fh.Filename, fs.Sum(nil))
			}
		}
	default:
		body := c.Body()
		var v any
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber() // numbers as written, not rounded to float64
		if dec.Decode(&v) == nil {
			// Canonical: keys sorted, no spacing.
			if canon, err := json.Marshal(v); err == nil {
				body = canon
			}
		}
		fmt.Fprintf(h, "%s\n", ct)
		h.Write(body)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
