package ingest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// Callbacks: a grade submitted with a callback_url has its result POSTed
// there, signed with its owner's webhook secret. The submission carries
// the URL and inference publishes the result with it on
// gradeline.callbacks.due (CALLBACKS), beside the result in GRADES
// without it; the edge's durable consumer ingest-callbacks-due reads only
// those. (Results from an older inference carry the URL in GRADES: the
// draining consumer ingest-callbacks there delivers them.) A
// failed attempt is naked with the next retry's delay (the backoff, or
// the receiver's Retry-After on a 429 or 503): the schedule lives on the
// server and survives a restart of the edge. Every attempt is
// published as grade.callback_attempted, which the annotator stores and
// lists on the grade.

// Delivery settings.
const (
	// callbackTimeout bounds one attempt: connect, TLS, request, answer.
	callbackTimeout = 5 * time.Second
	// callbackAttempts bounds the attempts per result: with
	// callbackBackoff the last one comes about 34 minutes after the first.
	callbackAttempts = 12
	// callbackBodyLimit is how much of a receiver's answer is read.
	callbackBodyLimit = 1 << 10
	// callbackParallel bounds the deliveries in flight per edge replica;
	// a batch holds twice as many, so its last delivery starts well
	// within the consumer's AckWait (two rounds of recordWait plus
	// callbackTimeout).
	callbackParallel = 32
	// callbackResolveTimeout bounds the look-up of a callback host at submission.
	callbackResolveTimeout = 3 * time.Second
	// callbackRetryAfterMin and callbackRetryAfterMax bound the delay a
	// receiver's Retry-After sets: no sooner than the first backoff (a
	// "0" or a past date must not make a busy loop), no later than the
	// backoff's ceiling (a receiver cannot park a result for days).
	callbackRetryAfterMin = time.Second
	callbackRetryAfterMax = 30 * time.Minute
	// callbackRetryAfterLen bounds the Retry-After text kept on the record.
	callbackRetryAfterLen = 64
)

// retryAfter reads a Retry-After value (RFC 9110: delay-seconds or an
// HTTP-date) at now as a delay within [callbackRetryAfterMin,
// callbackRetryAfterMax]; ok is false when v is neither form.
func retryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if strings.Trim(v, "0123456789") == "" {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil || secs > uint64(callbackRetryAfterMax/time.Second) {
			// Digits beyond uint64 or beyond the ceiling: the ceiling.
			return callbackRetryAfterMax, true
		}
		d = time.Duration(secs) * time.Second
	} else {
		t, err := http.ParseTime(v)
		if err != nil {
			return 0, false
		}
		d = t.Sub(now)
	}
	return min(max(d, callbackRetryAfterMin), callbackRetryAfterMax), true
}

// callbackBackoff is the delay before attempt n+1: 1s doubled per
// attempt (1s, 2s, 4s ...), at most 30 minutes.
func callbackBackoff(n uint64) time.Duration {
	if n < 1 {
		n = 1
	}
	if n > 12 {
		return 30 * time.Minute
	}
	return min(time.Second<<(n-1), 30*time.Minute)
}

// callbackPolicy decides which addresses a callback may reach: public
// unicast addresses, and those of the allow-list (GRADELINE_CALLBACK_ALLOW).
type callbackPolicy struct {
	allow []netip.Prefix
}

// refusedAddrError is an address a callback may not reach; it is final.
type refusedAddrError struct {
	addr netip.Addr
	kind string
}

func (e *refusedAddrError) Error() string {
	return fmt.Sprintf("%s is a %s address; only public addresses are allowed (GRADELINE_CALLBACK_ALLOW admits others)", e.addr, e.kind)
}

// Special-purpose ranges the standard library does not name (RFC 6890).
var (
	sharedNAT   = netip.MustParsePrefix("100.64.0.0/10")
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	ietfV4      = netip.MustParsePrefix("192.0.0.0/24")
	benchmarkV4 = netip.MustParsePrefix("198.18.0.0/15")
	reservedV4  = netip.MustParsePrefix("240.0.0.0/4")
	nat64       = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour   = netip.MustParsePrefix("2002::/16")
)

// addrKind names why an address is not public, or "" when it is.
func addrKind(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case a.IsUnspecified() || thisNetwork.Contains(a):
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast():
		return "link-local"
	case a.IsMulticast() || a.IsInterfaceLocalMulticast():
		return "multicast"
	case sharedNAT.Contains(a):
		return "shared (carrier-grade NAT)"
	case ietfV4.Contains(a) || benchmarkV4.Contains(a) || reservedV4.Contains(a):
		return "reserved"
	case nat64.Contains(a) || sixToFour.Contains(a):
		// They embed an IPv4 address that may be private.
		return "translated (NAT64/6to4)"
	}
	return ""
}

// check refuses an address that is not public, unless allowed.
func (p callbackPolicy) check(a netip.Addr) error {
	a = a.Unmap()
	kind := addrKind(a)
	if kind == "" {
		return nil
	}
	for _, pre := range p.allow {
		if pre.Contains(a) {
			return nil
		}
	}
	return &refusedAddrError{addr: a, kind: kind}
}

// checkURL is the submission's check of a callback URL: its form
// (bus.CheckCallbackURL), then every address its host resolves to. The
// deliverer checks the address it dials again (DNS may answer otherwise
// later); this one gives the client a 422 instead of a grade whose
// callback can never be delivered.
func (p callbackPolicy) checkURL(ctx context.Context, raw string) error {
	if err := bus.CheckCallbackURL(raw); err != nil {
		return invalid("invalid callback_url", "callback_url: "+err.Error())
	}
	u, _ := url.Parse(raw)
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		if err := p.check(a); err != nil {
			return invalid("callback_url refused", "callback_url: "+err.Error())
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, callbackResolveTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return invalid("callback_url refused", fmt.Sprintf("callback_url: host %q does not resolve", host))
	}
	for _, a := range addrs {
		if err := p.check(a); err != nil {
			return invalid("callback_url refused", fmt.Sprintf("callback_url: host %q resolves to %s", host, err))
		}
	}
	return nil
}

// checkCallback refuses a submission's callback URL (422) that is
// malformed or reaches an address it may not; "" (none) passes.
func (s *Server) checkCallback(ctx context.Context, raw string) error {
	if raw == "" {
		return nil
	}
	return callbackPolicy{allow: s.cfg.CallbackAllow}.checkURL(ctx, raw)
}

// client is the HTTP client of the deliveries: every connection's address
// is checked after DNS resolution, right before it is dialed (so a name
// that resolved to a public address at submission cannot be rebound to a
// private one), no proxy from the environment, no redirects followed.
func (p callbackPolicy) client() *http.Client {
	dialer := &net.Dialer{Timeout: callbackTimeout, Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("callback address %q: %w", address, err)
		}
		return p.check(ap.Addr())
	}}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            dialer.DialContext,
			TLSHandshakeTimeout:    callbackTimeout,
			ResponseHeaderTimeout:  callbackTimeout,
			MaxResponseHeaderBytes: 16 << 10,
			MaxIdleConnsPerHost:    4,
			IdleConnTimeout:        30 * time.Second,
			ForceAttemptHTTP2:      true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       callbackTimeout,
	}
}

// webhookSecrets keeps each user's callback signing secret in a NATS
// key-value bucket of the edge, so every replica signs with the same one;
// a secret is made on first use.
type webhookSecrets struct {
	kv jetstream.KeyValue
}

func newWebhookSecrets(ctx context.Context, js jetstream.JetStream, replicas int) (*webhookSecrets, error) {
	kv, err := bus.KVBucket(ctx, js, bus.BucketWebhookSecrets, 0, replicas)
	if err != nil {
		return nil, err
	}
	return &webhookSecrets{kv: kv}, nil
}

// secretKey is a user's key: user names may hold characters keys may not.
func secretKey(user string) string {
	return "u." + base64.RawURLEncoding.EncodeToString([]byte(user))
}

func newWebhookSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("webhook secret: %w", err)
	}
	return "whsec_" + hex.EncodeToString(b), nil
}

// get returns user's secret, making one when there is none; two replicas
// making one at once agree on the first stored.
func (w *webhookSecrets) get(ctx context.Context, user string) (string, error) {
	key := secretKey(user)
	for range 3 {
		e, err := w.kv.Get(ctx, key)
		if err == nil {
			return string(e.Value()), nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return "", fmt.Errorf("webhook secret: %w", err)
		}
		sec, err := newWebhookSecret()
		if err != nil {
			return "", err
		}
		if _, err := w.kv.Create(ctx, key, []byte(sec)); err == nil {
			return sec, nil
		} else if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", fmt.Errorf("webhook secret: %w", err)
		}
	}
	return "", errors.New("webhook secret: could not read or create")
}

// rotate replaces user's secret; deliveries from now on use the new one.
func (w *webhookSecrets) rotate(ctx context.Context, user string) (string, error) {
	sec, err := newWebhookSecret()
	if err != nil {
		return "", err
	}
	if _, err := w.kv.Put(ctx, secretKey(user), []byte(sec)); err != nil {
		return "", fmt.Errorf("webhook secret: %w", err)
	}
	return sec, nil
}

// callbackRoutes read and rotate the secret that signs the caller's callbacks.
func (s *Server) callbackRoutes() []route {
	secret := M{"type": "object", "required": []string{"secret"}, "properties": M{
		"secret":    M{"type": "string", "description": "The key of the HMAC (the whole string, whsec_ included)."},
		"algorithm": M{"type": "string", "example": "HMAC-SHA256"},
		"header":    M{"type": "string", "example": bus.HeaderCallbackSignature},
		"signed":    M{"type": "string", "description": "What is signed, and the header's format."},
	}}
	return []route{
		{Method: "GET", Path: "/api/v1/auth/webhook-secret", Tag: "auth", Summary: "Your callback signing secret", Auth: true, Handler: s.getWebhookSecret,
			Description: "Made on first use. Every callback of your grades carries `" + bus.HeaderCallbackSignature + ": t=<unix>,v1=<hex>`: " +
				"the HMAC-SHA256 of `<t>.<body>` keyed with this secret. Check it, and that t is recent, before trusting a callback.",
			Responses: withErrors(map[int]resp{200: {Desc: "The secret.", Schema: secret}}, 401, 503)},
		{Method: "POST", Path: "/api/v1/auth/webhook-secret", Tag: "auth", Summary: "Rotate your callback signing secret", Auth: true, Handler: s.rotateWebhookSecret,
			Description: "A new secret signs every callback from now on, retries of earlier results included; the old one stops at once.",
			Responses:   withErrors(map[int]resp{200: {Desc: "The new secret.", Schema: secret}}, 401, 503)},
	}
}

// webhookSecretAnswer is the body of the webhook-secret routes.
func webhookSecretAnswer(secret string) fiber.Map {
	return fiber.Map{"secret": secret, "algorithm": "HMAC-SHA256", "header": bus.HeaderCallbackSignature,
		"signed": "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\" keyed with the secret>"}
}

func (s *Server) getWebhookSecret(c *fiber.Ctx) error {
	sec, err := s.secrets.get(c.UserContext(), userOf(c))
	if err != nil {
		return errorf(http.StatusServiceUnavailable, "webhook secret unavailable; retry")
	}
	return c.JSON(webhookSecretAnswer(sec))
}

func (s *Server) rotateWebhookSecret(c *fiber.Ctx) error {
	sec, err := s.secrets.rotate(c.UserContext(), userOf(c))
	if err != nil {
		return errorf(http.StatusServiceUnavailable, "webhook secret unavailable; retry")
	}
	return c.JSON(webhookSecretAnswer(sec))
}

// callbacker delivers results to their callback URLs.
type callbacker struct {
	s       *Server
	log     *slog.Logger
	client  *http.Client
	secrets *webhookSecrets
	// Attempts when the record of the result (the body) or the secret
	// cannot be read are recorded like failed requests: no request left.
}

// startCallbacks starts delivering callbacks until Close.
func (s *Server) startCallbacks() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopCallbacks, s.callbacksDone = cancel, make(chan struct{})
	cb := &callbacker{s: s, log: s.log.With("component", "callbacks"), secrets: s.secrets,
		client: callbackPolicy{allow: s.cfg.CallbackAllow}.client()}
	go func() {
		defer close(s.callbacksDone)
		cb.run(ctx)
	}()
}

// run consumes ingest-callbacks-due until ctx ends, and beside it the
// draining consumer of results from before gradeline.callbacks.due while
// it exists; each starts over after a failure of the consumer itself (a
// lost connection).
func (cb *callbacker) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cb.consume(ctx, bus.ConsumerIngestCallbacks, false)
	}()
	cb.consume(ctx, bus.ConsumerIngestCallbacksLegacy, true)
	wg.Wait()
}

// consume delivers the callbacks of spec until ctx ends; a draining
// consumer (existing) until it is gone.
func (cb *callbacker) consume(ctx context.Context, spec bus.ConsumerSpec, existing bool) {
	opt := bus.ConsumeOptions{MaxBatch: 2 * callbackParallel, MaxDeliveries: callbackAttempts, Backoff: callbackBackoff,
		DrainTimeout: 2 * callbackTimeout, Logger: cb.log, Existing: existing}
	if existing {
		// Only the draining consumer reads results without a URL.
		opt.Wants = mayHaveCallback
	}
	for ctx.Err() == nil {
		err := bus.Consume(ctx, cb.s.js, spec, opt, cb.handle)
		if err == nil || ctx.Err() != nil {
			return
		}
		if existing && (errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted)) {
			cb.log.Debug("no draining callback consumer (any more)", "stream", spec.Stream, "consumer", spec.Durable)
			return
		}
		cb.log.Error("callback consumer stopped; restarting", "stream", spec.Stream, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// mayHaveCallback is false for a result that certainly names no callback
// URL: in the draining consumer, most carry none, and then need not be
// decoded. The inference service, the only publisher of results, writes
// the member as "callback_url" when it is set (encoding/json, omitempty).
func mayHaveCallback(data []byte) bool { return bytes.Contains(data, callbackMember) }

var callbackMember = []byte(`"callback_url"`)

// callbackOf is the callback URL a result carries, with its grade and owner.
func callbackOf(ev bus.Event) (u, grade, owner string) {
	switch e := ev.(type) {
	case *bus.GradeCompleted:
		return e.CallbackURL, e.GradeID, e.Owner
	case *bus.GradeFailed:
		return e.CallbackURL, e.GradeID, e.Owner
	}
	return "", "", ""
}

// handle delivers the results of the batch that carry a callback URL, a
// few at once; the others are acked as they are.
func (cb *callbacker) handle(ctx context.Context, batch []*bus.Delivery) error {
	var wg sync.WaitGroup
	sem := make(chan struct{}, callbackParallel)
	for _, d := range batch {
		u, grade, owner := callbackOf(d.Event)
		if u == "" || grade == "" || owner == "" {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			cb.deliver(ctx, d, u, grade, owner)
		}()
	}
	wg.Wait()
	return nil
}

// deliver makes one attempt, records it and settles the delivery: acked
// when delivered or given up, naked with the next delay otherwise.
func (cb *callbacker) deliver(ctx context.Context, d *bus.Delivery, u, grade, owner string) {
	n := int(d.NumDelivered)
	rec := &bus.GradeCallbackAttempted{Meta: bus.NewMeta(bus.TypeGradeCallbackAttempted), GradeID: grade, Owner: owner, URL: u, Attempt: n}
	start := time.Now()
	status, after, err := cb.attempt(ctx, d, u, grade, owner, n)
	rec.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	rec.StatusCode = status
	// A 429 or 503 that says when to come back sets the next delay
	// instead of the backoff (0: the backoff).
	var delay time.Duration
	if (status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable) && after != "" {
		rec.RetryAfter = after
		if len(after) > callbackRetryAfterLen {
			rec.RetryAfter = after[:callbackRetryAfterLen]
		}
		delay, _ = retryAfter(after, time.Now())
	}
	var refused *refusedAddrError
	switch {
	case err == nil && status >= 200 && status < 300:
		rec.Outcome = bus.CallbackDelivered
	case err == nil && status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests:
		rec.Outcome, rec.Error = bus.CallbackGaveUp, fmt.Sprintf("receiver answered %d: not retried", status)
	case errors.As(err, &refused):
		rec.Outcome, rec.Error = bus.CallbackGaveUp, err.Error()
	case n >= callbackAttempts:
		rec.Outcome = bus.CallbackGaveUp
	default:
		rec.Outcome = bus.CallbackRetrying
		next := delay
		if next <= 0 {
			next = callbackBackoff(d.NumDelivered)
		}
		rec.NextAttemptAt = time.Now().Add(next).UTC().Truncate(time.Millisecond)
	}
	if rec.Error == "" {
		switch {
		case err != nil:
			rec.Error = err.Error()
		case status < 200 || status >= 300:
			rec.Error = fmt.Sprintf("receiver answered %d", status)
		}
	}
	log := bus.Log(d.Ctx, cb.log).With("grade_id", grade, "attempt", n, "outcome", rec.Outcome)
	if _, perr := bus.Publish(ctx, cb.s.js, rec); perr != nil {
		log.Warn("callback attempt not recorded", "err", perr)
		if rec.Outcome != bus.CallbackDelivered {
			// Try again (and record it then) rather than lose the record
			// of the last attempt; a delivered result is not sent twice
			// for the sake of its record.
			d.Retry(fmt.Errorf("record of callback attempt %d: %w", n, perr))
			return
		}
	}
	switch rec.Outcome {
	case bus.CallbackRetrying:
		log.Info("callback failed; will retry", "status", status, "err", rec.Error, "next", rec.NextAttemptAt, "retry_after", rec.RetryAfter)
		d.RetryAfter(errors.New(rec.Error), delay)
	case bus.CallbackGaveUp:
		log.Warn("callback given up", "status", status, "err", rec.Error)
	}
}

// recordWait bounds how long a delivery waits for the annotator to store
// both halves of the grade (it reads the same events at the same time).
const recordWait = 5 * time.Second

// record is the grade as GET /api/v1/grades/{id} answers it, once the
// annotator has stored its result and submission; after recordWait a
// grade without its submission is sent as it is (no submitted_at), and
// one without its result not at all.
func (cb *callbacker) record(ctx context.Context, grade, owner string) (bus.Grade, error) {
	deadline := time.Now().Add(recordWait)
	for pause := 50 * time.Millisecond; ; pause = min(2*pause, time.Second) {
		g, err := request[bus.Grade](ctx, cb.s, bus.SvcGradesGet, bus.GradeGetQuery{ID: grade, Owner: owner})
		var be *bus.Error
		switch {
		case err != nil && !(errors.As(err, &be) && be.Code == bus.CodeNotFound):
			return g, fmt.Errorf("grade record unavailable, no request made: %w", err)
		case err == nil && g.Status != bus.GradeStatusPending && g.Status != "" && !g.SubmittedAt.IsZero():
			return g, nil
		case time.Now().After(deadline):
			if err == nil && g.Status != bus.GradeStatusPending && g.Status != "" {
				return g, nil
			}
			return g, errors.New("grade record not stored yet, no request made")
		}
		select {
		case <-ctx.Done():
			return g, fmt.Errorf("grade record: %w", ctx.Err())
		case <-time.After(pause):
		}
	}
}

// attempt POSTs the grade's record (GET /api/v1/grades/{id} without its
// callbacks) to u, signed; it returns the receiver's status and its
// Retry-After header, if any.
func (cb *callbacker) attempt(ctx context.Context, d *bus.Delivery, u, grade, owner string, n int) (status int, after string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 2*callbackTimeout)
	defer cancel()
	g, err := cb.record(ctx, grade, owner)
	if err != nil {
		return 0, "", err
	}
	g.Callbacks = nil
	body, err := json.Marshal(g)
	if err != nil {
		return 0, "", fmt.Errorf("encode grade: %w", err)
	}
	secret, err := cb.secrets.get(ctx, owner)
	if err != nil {
		return 0, "", fmt.Errorf("no request made: %w", err)
	}
	actx, acancel := context.WithTimeout(ctx, callbackTimeout)
	defer acancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, "", fmt.Errorf("callback request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "gradeline-callbacks/1")
	req.Header.Set(bus.HeaderCallbackSignature, bus.SignCallback(secret, time.Now(), body))
	// One id per result, the same on every attempt: receivers drop repeats by it.
	req.Header.Set(bus.HeaderCallbackEventID, d.Event.EventMeta().ID)
	req.Header.Set(bus.HeaderCallbackAttempt, strconv.Itoa(n))
	if tp := bus.Traceparent(d.Ctx); tp != "" {
		req.Header.Set("traceparent", tp)
	}
	res, err := cb.client.Do(req)
	if err != nil {
		var refused *refusedAddrError
		if errors.As(err, &refused) {
			return 0, "", refused
		}
		return 0, "", err
	}
	// Only the status (and Retry-After) matter; a little of the body is
	// read so a short answer leaves the connection reusable, never more.
	_, _ = io.CopyN(io.Discard, res.Body, callbackBodyLimit)
	_ = res.Body.Close()
	return res.StatusCode, res.Header.Get("Retry-After"), nil
}
