package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Code says why a query service refused or failed a request, in the style
// of nats.go/micro's Nats-Service-Error-Code header, which carries it. The
// codes are transport-neutral: a service answering over NATS needs no
// HTTP. Their values are HTTP's status numbers, so the edge maps them one
// to one (and a reply from an older version reads the same).
type Code int

// The codes query services answer with.
const (
	// CodeBadRequest: the request could not be decoded.
	CodeBadRequest Code = 400
	// CodeNotFound: what the request names does not exist, or the caller
	// may not see it (the two are not told apart).
	CodeNotFound Code = 404
	// CodeUnprocessable: the request was decoded but breaks a rule of the
	// contract (a missing field, a bound out of range, an invalid cursor).
	CodeUnprocessable Code = 422
	// CodeInternal: the service failed; the message says no more.
	CodeInternal Code = 500
	// CodeUnavailable: a store behind the service is down or the query
	// timed out; a retry may succeed.
	CodeUnavailable Code = 503
)

// Error is the error a query service answers with.
type Error struct {
	Code    Code     `json:"code"`
	Message string   `json:"message"`
	Details []string `json:"details,omitempty"`
}

// Error renders the code and the message, e.g. "404: annotation not found".
func (e *Error) Error() string { return fmt.Sprintf("%d: %s", e.Code, e.Message) }

// Errorf returns an *Error with the given code.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// IsCode reports whether err is (or wraps) an *Error with the given code.
func IsCode(err error, code Code) bool {
	var be *Error
	return errors.As(err, &be) && be.Code == code
}

// ErrUnavailable is returned by Request when no service instance answered.
var ErrUnavailable = errors.New("bus: service unavailable")

// List is the reply of a record listing (annotations, images, grades),
// paginated by key: Next is an opaque cursor for the following page, empty
// on the last one. Total is set only when it is exact and free (the whole
// result fits this page); counting on every page would cost a scan.
type List[T any] struct {
	Data    []T    `json:"data"`
	Next    string `json:"next,omitempty"`
	Total   *int64 `json:"total,omitempty"`
	PerPage int    `json:"per_page"`
}

// Page is the reply of a paginated analytics query, where a count is cheap.
type Page[T any] struct {
	Data    []T   `json:"data"`
	Total   int64 `json:"total"`
	Page    int   `json:"page"`
	PerPage int   `json:"per_page"`
}

// Endpoint binds a typed handler to a service subject.
type Endpoint struct {
	Name    string
	Subject string
	Handler micro.Handler
}

// Handle adapts a typed function to a micro handler: it decodes the JSON
// request, runs f in its own goroutine (so one slow query does not hold up
// the subscription), and encodes the reply or the *Error. Any other error
// is answered as 500 with a generic message and logged.
func Handle[Req, Resp any](log *slog.Logger, timeout time.Duration, f func(context.Context, Req) (Resp, error)) micro.Handler {
	h := handle(log, timeout, f)
	return micro.HandlerFunc(func(r micro.Request) { go h(r) })
}

// HandleInOrder is Handle without the goroutine: the endpoint answers its
// requests one at a time, in the order they arrived, for actions whose
// order matters (the model repository's unload then load must not swap).
func HandleInOrder[Req, Resp any](log *slog.Logger, timeout time.Duration, f func(context.Context, Req) (Resp, error)) micro.Handler {
	return micro.HandlerFunc(handle(log, timeout, f))
}

func handle[Req, Resp any](log *slog.Logger, timeout time.Duration, f func(context.Context, Req) (Resp, error)) func(micro.Request) {
	if log == nil {
		log = slog.Default()
	}
	return func(r micro.Request) {
		var req Req
		if err := json.Unmarshal(r.Data(), &req); err != nil {
			respondError(r, &Error{Code: CodeBadRequest, Message: "malformed request", Details: []string{err.Error()}})
			return
		}
		ctx, cancel := context.WithTimeout(contextFrom(context.Background(), nats.Header(r.Headers())), timeout)
		defer cancel()
		resp, err := f(ctx, req)
		if err != nil {
			var be *Error
			if !errors.As(err, &be) {
				log.Error("query failed", "subject", r.Subject(), "err", err, "request_id", RequestID(ctx))
				be = &Error{Code: CodeInternal, Message: "query failed"}
				if errors.Is(err, context.DeadlineExceeded) {
					be = &Error{Code: CodeUnavailable, Message: "query timed out"}
				}
			}
			respondError(r, be)
			return
		}
		if err := r.RespondJSON(resp); err != nil {
			log.Warn("respond failed", "subject", r.Subject(), "err", err)
		}
	}
}

func respondError(r micro.Request, e *Error) {
	data, _ := json.Marshal(e)
	_ = r.Error(strconv.Itoa(int(e.Code)), e.Message, data)
}

// AddService registers a queue-group service with its endpoints. Every
// replica of a service joins the same queue group, so each request is
// answered once.
func AddService(nc *nats.Conn, name, version, description string, eps ...Endpoint) (micro.Service, error) {
	svc, err := micro.AddService(nc, micro.Config{Name: name, Version: version, Description: description})
	if err != nil {
		return nil, fmt.Errorf("bus: service %s: %w", name, err)
	}
	for _, ep := range eps {
		if err := svc.AddEndpoint(ep.Name, ep.Handler, micro.WithEndpointSubject(ep.Subject)); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("bus: service %s endpoint %s: %w", name, ep.Name, err)
		}
	}
	return svc, nil
}

// Request sends req to a query service and decodes the reply into Resp. A
// service error is returned as *Error; no responder or a timeout as
// ErrUnavailable (wrapped).
func Request[Resp any](ctx context.Context, nc *nats.Conn, subject string, req any) (Resp, error) {
	var resp Resp
	data, err := json.Marshal(req)
	if err != nil {
		return resp, fmt.Errorf("bus: encode request: %w", err)
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	headersFrom(ctx, msg.Header)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	reply, err := nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return resp, fmt.Errorf("%w: %s: %v", ErrUnavailable, subject, err)
		}
		return resp, fmt.Errorf("bus: request %s: %w", subject, err)
	}
	if code := reply.Header.Get(micro.ErrorCodeHeader); code != "" {
		be := &Error{}
		if json.Unmarshal(reply.Data, be) != nil || be.Code == 0 {
			n, _ := strconv.Atoi(code)
			be = &Error{Code: Code(n), Message: reply.Header.Get(micro.ErrorHeader)}
		}
		return resp, be
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return resp, fmt.Errorf("bus: decode reply of %s: %w", subject, err)
	}
	return resp, nil
}
