package bus

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Callbacks: a grade submission may name a callback_url; the edge POSTs
// the grade's result there when it is known, signed with a secret of the
// submitting user, and records every attempt as a GradeCallbackAttempted
// event (stream CALLBACKS), which the annotator stores and lists on the
// grade (Grade.Callbacks).

// TypeGradeCallbackAttempted names GradeCallbackAttempted events.
const TypeGradeCallbackAttempted = "grade.callback_attempted"

func init() {
	register(TypeGradeCallbackAttempted, 1, SubjectGradeCallbackAttempted, &GradeCallbackAttempted{})
}

// BucketWebhookSecrets is the key-value bucket of the edge holding each
// user's callback signing secret (no expiry; one key per user).
const BucketWebhookSecrets = "gradeline-webhook-secrets"

// Outcomes of a callback attempt.
const (
	// CallbackDelivered: the receiver answered 2xx.
	CallbackDelivered = "delivered"
	// CallbackRetrying: the attempt failed and another is scheduled:
	// after the backoff, or when the receiver's Retry-After says (429, 503).
	CallbackRetrying = "retrying"
	// CallbackGaveUp: the attempt failed and no other follows (a 4xx
	// other than 408 and 429, a refused address, or the last attempt).
	CallbackGaveUp = "gave_up"
)

// CallbackAttempt is one attempt to deliver a grade's result to its
// callback_url, as a grade lists it.
type CallbackAttempt struct {
	// Attempt counts from 1.
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	URL     string    `json:"url"`
	// StatusCode is the receiver's HTTP status (0 when none came back).
	StatusCode int `json:"status_code,omitempty"`
	// Error says why no response came back, or why the response failed.
	Error      string  `json:"error,omitempty"`
	DurationMS float64 `json:"duration_ms"`
	Outcome    string  `json:"outcome"`
	// NextAttemptAt is when the next attempt is due (retrying only).
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	// RetryAfter is the receiver's Retry-After header as it came (a 429
	// or 503 that had one): NextAttemptAt then follows it, within bounds.
	RetryAfter string `json:"retry_after,omitempty"`
}

// GradeCallbackAttempted records one attempt to deliver the result of
// grade GradeID (owned by Owner) to its callback URL.
type GradeCallbackAttempted struct {
	Meta
	GradeID    string  `json:"grade_id"`
	Owner      string  `json:"owner"`
	URL        string  `json:"url"`
	Attempt    int     `json:"attempt"`
	StatusCode int     `json:"status_code,omitempty"`
	Error      string  `json:"error,omitempty"`
	DurationMS float64 `json:"duration_ms"`
	Outcome    string  `json:"outcome"`
	// NextAttemptAt is when the next attempt is due (retrying only).
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	// RetryAfter is the receiver's Retry-After header as it came (a 429
	// or 503 that had one): NextAttemptAt then follows it, within bounds.
	RetryAfter string `json:"retry_after,omitempty"`
}

// Validate requires the grade id, owner, URL, an attempt number from 1 and
// a known outcome.
func (e *GradeCallbackAttempted) Validate() error {
	if e.GradeID == "" || e.Owner == "" || e.URL == "" {
		return errors.New("grade_id, owner and url are required")
	}
	if e.Attempt < 1 {
		return errors.New("attempt must be 1 or more")
	}
	switch e.Outcome {
	case CallbackDelivered, CallbackRetrying, CallbackGaveUp:
		return nil
	}
	return fmt.Errorf("outcome %q: want %s, %s or %s", e.Outcome, CallbackDelivered, CallbackRetrying, CallbackGaveUp)
}

// Record is the attempt as a grade lists it; the event's time is when the
// attempt started.
func (e *GradeCallbackAttempted) Record() CallbackAttempt {
	return CallbackAttempt{Attempt: e.Attempt, At: e.Time.UTC(), URL: e.URL, StatusCode: e.StatusCode, Error: e.Error,
		DurationMS: e.DurationMS, Outcome: e.Outcome, NextAttemptAt: e.NextAttemptAt, RetryAfter: e.RetryAfter}
}

// MaxCallbackURL bounds the length of a callback URL.
const MaxCallbackURL = 2048

// CheckCallbackURL checks the form of a callback URL: absolute http or
// https with a host, no credentials, no fragment, at most MaxCallbackURL
// bytes. Where the host points is checked by the edge (it resolves it).
func CheckCallbackURL(raw string) error {
	if len(raw) > MaxCallbackURL {
		return fmt.Errorf("longer than %d bytes", MaxCallbackURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("scheme %q: only http and https are allowed", u.Scheme)
	case u.Hostname() == "":
		return errors.New("no host")
	case u.User != nil:
		return errors.New("credentials in the URL are not allowed (the signature authenticates gradeline)")
	case u.Fragment != "" || strings.HasSuffix(raw, "#"):
		return errors.New("a fragment is not allowed")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q out of range", p)
		}
	}
	return nil
}

// Headers of a callback request.
const (
	// HeaderCallbackSignature carries "t=<unix seconds>,v1=<hex>", the
	// HMAC-SHA256 of "<t>.<body>" under the user's webhook secret.
	HeaderCallbackSignature = "Gradeline-Signature"
	// HeaderCallbackEventID is the same for every attempt of one result:
	// a receiver drops a repeat by it.
	HeaderCallbackEventID = "Gradeline-Event-Id"
	// HeaderCallbackAttempt counts the attempts from 1.
	HeaderCallbackAttempt = "Gradeline-Attempt"
)

// SignCallback returns the HeaderCallbackSignature value for body sent at t.
func SignCallback(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + callbackMAC(secret, ts, body)
}

func callbackMAC(secret, ts string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// VerifyCallback checks a HeaderCallbackSignature value against body and
// secret, and that its time is within tolerance of now (replays of an old
// request fail); it is what a receiver written in Go calls.
func VerifyCallback(secret, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return errors.New("signature header: want t=<unix>,v1=<hex>")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("signature time %s is more than %s from now", time.Unix(sec, 0).UTC().Format(time.RFC3339), tolerance)
	}
	want := callbackMAC(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal([]byte(s), []byte(want)) {
			return nil
		}
	}
	return errors.New("signature does not match")
}
