package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header names that travel with events and requests.
const (
	HeaderRequestID   = "X-Request-Id"
	HeaderTraceparent = "traceparent"
)

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyTraceparent
)

// WithRequestID returns a context carrying the request id, which Publish
// copies into the message headers and Consume restores for handlers.
func WithRequestID(ctx context.Context, id string) context.Context {
	if id == "" {
		return ctx
	}
	return context.WithValue(ctx, keyRequestID, id)
}

// RequestID returns the request id carried by ctx, or "".
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(keyRequestID).(string)
	return s
}

// WithTraceparent returns a context carrying a W3C traceparent header value.
func WithTraceparent(ctx context.Context, tp string) context.Context {
	if tp == "" {
		return ctx
	}
	return context.WithValue(ctx, keyTraceparent, tp)
}

// Traceparent returns the W3C traceparent carried by ctx, or "".
func Traceparent(ctx context.Context) string {
	s, _ := ctx.Value(keyTraceparent).(string)
	return s
}

// Log returns log annotated with the request id and trace context carried
// by ctx, so a line logged while handling an event names the HTTP request
// that caused it.
func Log(ctx context.Context, log *slog.Logger) *slog.Logger {
	if id := RequestID(ctx); id != "" {
		log = log.With("request_id", id)
	}
	if tp := Traceparent(ctx); tp != "" {
		log = log.With("traceparent", tp)
	}
	return log
}

// headersFrom copies the tracing values of ctx into h.
func headersFrom(ctx context.Context, h nats.Header) {
	if id := RequestID(ctx); id != "" {
		h.Set(HeaderRequestID, id)
	}
	if tp := Traceparent(ctx); tp != "" {
		h.Set(HeaderTraceparent, tp)
	}
}

// contextFrom restores the tracing values of h into ctx.
func contextFrom(ctx context.Context, h nats.Header) context.Context {
	ctx = WithRequestID(ctx, h.Get(HeaderRequestID))
	return WithTraceparent(ctx, h.Get(HeaderTraceparent))
}

// Connect dials NATS with reconnects that never give up, names the client,
// and logs connection changes.
func Connect(ctx context.Context, url, name string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	if log == nil {
		log = slog.Default()
	}
	nc, err := nats.Connect(url,
		nats.Name(name),
		// A service's replies arrive under a prefix only its own user may
		// subscribe to (see Permissions); others keep the default.
		nats.CustomInboxPrefix(InboxPrefixOf(userOfURL(url))),
		CAOption(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrl()) }),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("bus: connect %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	return nc, js, nil
}

// encodeBuffers hold the encoding of events being published; buffers that
// grew past maxPooledEncode (an image inline) are left to the collector.
var encodeBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledEncode = 64 << 10

// Publish stores ev on its subject and returns once the stream acknowledged
// it. The event id is the Nats-Msg-Id, so retrying a publish whose ack was
// lost stores the event once. The deadline of ctx bounds the wait.
func Publish(ctx context.Context, js jetstream.JetStream, ev Event) (*jetstream.PubAck, error) {
	// The event is encoded into a pooled buffer: the connection copies
	// the bytes before PublishMsg returns, so the buffer is reused.
	buf := encodeBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= maxPooledEncode {
			encodeBuffers.Put(buf)
		}
	}()
	msg, err := message(ctx, ev, buf)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		publishErrors.WithLabelValues(msg.Subject).Inc()
		return nil, fmt.Errorf("bus: publish %s %s: %w", ev.EventMeta().Type, ev.EventMeta().ID, err)
	}
	observeSince(publishSeconds.WithLabelValues(msg.Subject), start)
	return ack, nil
}

// PublishAll stores the events as Publish does, all sent at once and
// their acknowledgements awaited together: a batch costs one round trip
// to the stream instead of one each. ctxs[i] carries the tracing headers
// of evs[i] and bounds its wait. errs[i] is evs[i]'s outcome.
func PublishAll(ctxs []context.Context, js jetstream.JetStream, evs []Event) (errs []error) {
	errs = make([]error, len(evs))
	futures := make([]jetstream.PubAckFuture, len(evs))
	start := time.Now()
	for i, ev := range evs {
		// Not pooled: the client keeps an async message until its ack,
		// to send it again when the stream had no responder yet.
		msg, err := message(ctxs[i], ev, new(bytes.Buffer))
		if err != nil {
			errs[i] = err
			continue
		}
		if futures[i], err = js.PublishMsgAsync(msg); err != nil {
			publishErrors.WithLabelValues(msg.Subject).Inc()
			errs[i] = fmt.Errorf("bus: publish %s %s: %w", ev.EventMeta().Type, ev.EventMeta().ID, err)
		}
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		subject := f.Msg().Subject
		select {
		case <-f.Ok():
			observeSince(publishSeconds.WithLabelValues(subject), start)
			continue
		case err := <-f.Err():
			errs[i] = err
		case <-ctxs[i].Done():
			errs[i] = ctxs[i].Err()
		}
		publishErrors.WithLabelValues(subject).Inc()
		errs[i] = fmt.Errorf("bus: publish %s %s: %w", evs[i].EventMeta().Type, evs[i].EventMeta().ID, errs[i])
	}
	return errs
}

// SplitCallback returns what is published of a result (a *GradeCompleted
// or *GradeFailed): the result for GRADES without its callback_url, and,
// when it has one, the result as it is for SubjectGradeCallbackDue (due is
// nil otherwise). Publish and PublishAll send due there, under the
// result's id. The URL stays out of GRADES, which every downstream
// subscriber reads: the edge reads only the results it delivers, and a
// URL with a token in it is not broadcast.
func SplitCallback(result Event) (grades, due Event) {
	switch e := result.(type) {
	case *GradeCompleted:
		if e.CallbackURL != "" {
			c := *e
			c.CallbackURL = ""
			return &c, callbackDue{e}
		}
	case *GradeFailed:
		if e.CallbackURL != "" {
			c := *e
			c.CallbackURL = ""
			return &c, callbackDue{e}
		}
	}
	return result, nil
}

// callbackDue is a result to publish on SubjectGradeCallbackDue.
type callbackDue struct{ Event }

// message is the NATS message of ev, encoded into buf: on its subject,
// with its id as Nats-Msg-Id and the tracing headers of ctx.
func message(ctx context.Context, ev Event, buf *bytes.Buffer) (*nats.Msg, error) {
	due, isDue := ev.(callbackDue)
	if isDue {
		ev = due.Event
	}
	m := ev.EventMeta()
	subject, err := SubjectOf(m.Type)
	if err != nil {
		return nil, err
	}
	if isDue {
		subject = SubjectGradeCallbackDue
	}
	if m.Type == TypeDeadLetter {
		subject = SubjectDeadLetterPrefix + ev.(*DeadLetter).Consumer
	}
	// The hot event types without reflection (appendEvent, the same
	// bytes); the others through encoding/json.
	if b, ok := appendEvent(buf.AvailableBuffer(), ev); ok {
		buf.Write(b)
	} else if err := json.NewEncoder(buf).Encode(ev); err != nil {
		return nil, fmt.Errorf("bus: encode %s: %w", m.Type, err)
	}
	msg := nats.NewMsg(subject)
	msg.Data = bytes.TrimSuffix(buf.Bytes(), []byte("\n")) // as json.Marshal writes it
	msg.Header.Set(jetstream.MsgIDHeader, m.ID)
	headersFrom(ctx, msg.Header)
	return msg, nil
}
