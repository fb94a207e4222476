package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Delivery is one decoded message handed to a Handler.
type Delivery struct {
	// Event is the decoded, validated event.
	Event Event
	// Subject the message was published on.
	Subject string
	// NumDelivered counts deliveries of this message, starting at 1.
	NumDelivered uint64
	// NumPending is how many messages were on the server behind this one
	// for its consumer when it was delivered: 0 means nothing else was
	// waiting, which a batcher may take as "run now".
	NumPending uint64
	// Ctx carries the request id and trace context of the publisher.
	Ctx context.Context

	msg jetstream.Msg
	// seq is the message's stream sequence, read from its metadata once.
	seq     uint64
	outcome outcome
	reason  string
	// done settles a delivery of ConsumeStream (Done); nil for Consume.
	done func(error)
	// delay replaces the Backoff of a Retry when set (RetryAfter).
	delay time.Duration
}

type outcome int

const (
	outcomeAck outcome = iota
	outcomeRetry
	outcomeReject
)

// Reject sends the message to the dead-letter stream with the reason and
// terminates it: it can never succeed (bad image, bad reference).
func (d *Delivery) Reject(reason string) { d.outcome, d.reason = outcomeReject, reason }

// Retry naks the message with backoff because of a failure specific to it.
// After ConsumeOptions.MaxDeliveries such failures it is dead-lettered.
func (d *Delivery) Retry(err error) { d.outcome, d.reason = outcomeRetry, err.Error() }

// RetryAfter is Retry with the nak delay the handler knows better than the
// backoff (a receiver's Retry-After, say); delay <= 0 means the backoff.
// The delivery limit applies as for Retry.
func (d *Delivery) RetryAfter(err error, delay time.Duration) {
	d.Retry(err)
	d.delay = delay
}

// Handler processes a batch. Returning an error means the batch could not
// be handled at all (a dependency is down): every message is naked with
// backoff and no delivery limit applies, so nothing is lost during an
// outage. Returning nil acks every message not marked with Reject or Retry.
type Handler func(ctx context.Context, batch []*Delivery) error

// ConsumeOptions tune a consume loop.
type ConsumeOptions struct {
	// MaxBatch is the largest batch handed to the handler (default 256).
	MaxBatch int
	// MaxQueueDelay is how long a batch may wait for more messages after
	// its first one arrived, like Triton's max_queue_delay (default 20ms).
	MaxQueueDelay time.Duration
	// MaxDeliveries of a message marked Retry before it is dead-lettered
	// (default 8).
	MaxDeliveries uint64
	// Backoff returns the nak delay for the n-th delivery (default
	// exponential from 250ms, capped at 30s).
	Backoff func(n uint64) time.Duration
	// MaxInFlight bounds the deliveries ConsumeStream has handed out and
	// that are not yet Done (default DefaultMaxInFlight); Consume ignores
	// it (its bound is MaxBatch).
	MaxInFlight int
	// DrainTimeout bounds the handling of the last batch at shutdown.
	DrainTimeout time.Duration
	// Wants, when set, sees each message's body before it is decoded; a
	// message it answers false for is acked undecoded. A consumer that
	// acts on few of its stream's events (a callback_url) skips the cost
	// of decoding the others. It must answer true for every event the
	// handler needs: a false positive only costs the decode.
	Wants func(data []byte) bool
	// Existing reads the durable only if it is there, and never creates,
	// changes or repositions it: a draining consumer (DrainingConsumers).
	// Consume then returns an error wrapping jetstream.ErrConsumerNotFound
	// when it is missing, or jetstream.ErrConsumerDeleted once it is gone.
	Existing bool
	Logger   *slog.Logger
}

func (o *ConsumeOptions) defaults() {
	if o.MaxBatch <= 0 {
		o.MaxBatch = 256
	}
	if o.MaxQueueDelay <= 0 {
		o.MaxQueueDelay = 20 * time.Millisecond
	}
	if o.MaxDeliveries == 0 {
		o.MaxDeliveries = 8
	}
	if o.Backoff == nil {
		o.Backoff = Backoff
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Backoff is the default nak delay: 250ms doubled per delivery, at most 30s.
func Backoff(n uint64) time.Duration {
	if n < 1 {
		n = 1
	}
	if n > 8 {
		return 30 * time.Second
	}
	d := 250 * time.Millisecond << (n - 1)
	return min(d, 30*time.Second)
}

// Consume runs the durable pull consumer spec until ctx is cancelled,
// handing batches to h. On cancellation the batch in hand is finished
// (bounded by DrainTimeout) and acked; the rest stays on the server for
// another replica.
func Consume(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, opt ConsumeOptions, h Handler) error {
	opt.defaults()
	log := opt.Logger.With("consumer", spec.Durable)
	var (
		cons jetstream.Consumer
		err  error
	)
	if opt.Existing {
		if cons, err = js.Consumer(ctx, spec.Stream, spec.Durable); err != nil {
			return fmt.Errorf("bus: consume %s/%s: %w", spec.Stream, spec.Durable, err)
		}
	} else if cons, err = ensureConsumer(ctx, js, spec, log); err != nil {
		return err
	}
	c := &consumer{js: js, cons: cons, spec: spec, opt: opt, log: log, h: h, checked: time.Now()}
	for {
		batch, err := c.collect(ctx)
		if len(batch) > 0 {
			// The batch in hand is finished even when ctx is cancelled.
			hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opt.DrainTimeout)
			c.handle(hctx, batch)
			cancel()
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

type consumer struct {
	js   jetstream.JetStream
	cons jetstream.Consumer
	spec ConsumerSpec
	opt  ConsumeOptions
	log  *slog.Logger
	h    Handler
	// checked is when the consumer's position was last compared with the
	// end of its stream (see CheckPosition).
	checked time.Time
}

// positionCheckEvery is how often an idle consumer checks that it is not
// beyond the end of its stream, a state in which it would wait forever.
var positionCheckEvery = 30 * time.Second

// checkPosition repositions an idle consumer left beyond its stream's end
// (for example after the stream was cut while this service kept running).
func (c *consumer) checkPosition(ctx context.Context) {
	if time.Since(c.checked) < positionCheckEvery {
		return
	}
	c.checked = time.Now()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	moved, err := CheckPosition(cctx, c.js, c.spec, nil, c.log)
	if err != nil {
		c.log.Warn("consumer position check failed", "err", err)
		return
	}
	if moved {
		if cons, err := c.js.Consumer(cctx, c.spec.Stream, c.spec.Durable); err == nil {
			c.cons = cons
		}
	}
}

// collect blocks for the first message, then gathers more until the batch
// is full or MaxQueueDelay has passed. Nothing is prefetched beyond the
// batch, so at shutdown no message sits unhandled in a client buffer.
func (c *consumer) collect(ctx context.Context) ([]jetstream.Msg, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// A short pull: one lost in a leader change or reconnect is
		// replaced within seconds rather than at a long expiry.
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		first, err := c.cons.Next(jetstream.FetchContext(wctx))
		cancel()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return nil, ctx.Err()
			case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
				if !c.opt.Existing {
					c.checkPosition(ctx) // idle: nothing to deliver, or nothing deliverable
				}
				continue
			case errors.Is(err, nats.ErrConnectionClosed):
				return nil, fmt.Errorf("bus: consume %s: %w", c.spec.Durable, err)
			case c.opt.Existing && (errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound)):
				return nil, fmt.Errorf("bus: consume %s/%s: %w", c.spec.Stream, c.spec.Durable, err)
			}
			c.log.Warn("fetch failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		return c.gather(ctx, first), nil
	}
}

// gatherSlice bounds each pull of gather: shutdown waits at most this
// long for the batch in hand, however long MaxQueueDelay is.
const gatherSlice = 50 * time.Millisecond

// gather adds to first what arrives within MaxQueueDelay, up to MaxBatch,
// in pulls of at most gatherSlice that each run to their end: none is
// left open on the server to deliver into a subscription already gone,
// where its messages would wait for AckWait.
func (c *consumer) gather(ctx context.Context, first jetstream.Msg) []jetstream.Msg {
	batch := []jetstream.Msg{first}
	deadline := time.Now().Add(c.opt.MaxQueueDelay)
	for len(batch) < c.opt.MaxBatch && ctx.Err() == nil {
		wait := min(time.Until(deadline), gatherSlice)
		if wait < time.Millisecond {
			break
		}
		res, err := c.cons.Fetch(c.opt.MaxBatch-len(batch), jetstream.FetchMaxWait(wait))
		if err != nil {
			break
		}
		for m := range res.Messages() {
			batch = append(batch, m)
		}
	}
	return batch
}

// handle decodes the batch, dead-letters poison, runs the handler and
// settles every message.
func (c *consumer) handle(ctx context.Context, msgs []jetstream.Msg) {
	batch := make([]*Delivery, 0, len(msgs))
	var pending uint64
	for _, m := range msgs {
		d, md := c.decode(ctx, m)
		if md != nil {
			pending = md.NumPending
		}
		if d != nil {
			batch = append(batch, d)
		}
	}
	// The backlog after the batch's last message, set once per batch.
	consumerPending.WithLabelValues(c.spec.Durable).Set(float64(pending))
	if len(batch) == 0 {
		return
	}
	consumerBatchSize.WithLabelValues(c.spec.Durable).Observe(float64(len(batch)))
	start := time.Now()
	if err := c.h(ctx, batch); err != nil {
		observeSince(consumerHandleSeconds.WithLabelValues(c.spec.Durable, "error"), start)
		c.log.Warn("batch failed; will retry", "size", len(batch), "delivery", batch[0].NumDelivered, "err", err)
		for _, d := range batch {
			_ = d.msg.NakWithDelay(c.opt.Backoff(d.NumDelivered))
		}
		return
	}
	observeSince(consumerHandleSeconds.WithLabelValues(c.spec.Durable, "ok"), start)
	for _, d := range batch {
		c.settle(d)
	}
}

// decode turns a message into a Delivery, or dead-letters (or, without
// metadata, terminates) it, or acks it unwanted (Wants), and returns nil.
// md is nil when the message has no metadata.
func (c *consumer) decode(ctx context.Context, m jetstream.Msg) (d *Delivery, md *jetstream.MsgMetadata) {
	md, err := m.Metadata()
	if err != nil {
		c.log.Error("message without metadata", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return nil, nil
	}
	if md.NumDelivered > 1 {
		consumerRedeliveries.WithLabelValues(c.spec.Durable).Inc()
	}
	if c.opt.Wants != nil && !c.opt.Wants(m.Data()) {
		if err := m.Ack(); err != nil {
			c.log.Warn("ack failed", "subject", m.Subject(), "err", err)
		}
		return nil, md
	}
	ev, err := Decode(m.Data())
	if err != nil {
		c.deadLetter(ctx, m, md, err.Error())
		return nil, md
	}
	d = &Delivery{
		Event: ev, Subject: m.Subject(), NumDelivered: md.NumDelivered, NumPending: md.NumPending,
		Ctx: contextFrom(ctx, m.Headers()), msg: m, seq: md.Sequence.Stream,
	}
	if c.log.Enabled(ctx, slog.LevelDebug) {
		Log(d.Ctx, c.log).Debug("event received", "id", ev.EventMeta().ID, "type", ev.EventMeta().Type, "delivery", md.NumDelivered)
	}
	return d, md
}

// settle acks, dead-letters or naks a handled message by its outcome.
func (c *consumer) settle(d *Delivery) {
	switch d.outcome {
	case outcomeAck:
		// A lost ack only causes a redelivery, which the idempotent
		// effect absorbs, so the ack is not confirmed (one round trip less).
		if err := d.msg.Ack(); err != nil {
			c.log.Warn("ack failed", "id", d.Event.EventMeta().ID, "err", err)
		}
	case outcomeReject:
		md, _ := d.msg.Metadata()
		c.deadLetter(d.Ctx, d.msg, md, d.reason)
	case outcomeRetry:
		if d.NumDelivered >= c.opt.MaxDeliveries {
			md, _ := d.msg.Metadata()
			c.deadLetter(d.Ctx, d.msg, md, fmt.Sprintf("gave up after %d deliveries: %s", d.NumDelivered, d.reason))
			return
		}
		delay := c.opt.Backoff(d.NumDelivered)
		if d.delay > 0 {
			delay = d.delay
		}
		Log(d.Ctx, c.log).Warn("event will be retried", "id", d.Event.EventMeta().ID, "delivery", d.NumDelivered, "reason", d.reason, "delay", delay)
		_ = d.msg.NakWithDelay(delay)
	}
}

// deadLetter stores the message and reason on the dead-letter stream, then
// terminates it. If the dead-letter publish fails the message is naked, so
// it is never dropped without a record.
func (c *consumer) deadLetter(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, reason string) {
	dl := &DeadLetter{
		Meta:     NewMeta(TypeDeadLetter),
		Stream:   c.spec.Stream,
		Consumer: c.spec.Durable,
		Subject:  m.Subject(),
		Reason:   reason,
		Data:     m.Data(),
		Headers:  flatten(m.Headers()),
	}
	if md != nil {
		dl.Sequence, dl.Deliveries = md.Sequence.Stream, md.NumDelivered
		// A stable id makes the dead-letter publish idempotent too.
		dl.ID = fmt.Sprintf("%s-%s-%d", c.spec.Stream, c.spec.Durable, md.Sequence.Stream)
	}
	if _, err := Publish(ctx, c.js, dl); err != nil {
		c.log.Error("dead-letter publish failed; will retry", "subject", m.Subject(), "err", err)
		_ = m.NakWithDelay(c.opt.Backoff(dl.Deliveries))
		return
	}
	consumerDeadLettered.WithLabelValues(c.spec.Durable).Inc()
	Log(contextFrom(ctx, m.Headers()), c.log).Warn("message dead-lettered", "subject", m.Subject(), "seq", dl.Sequence, "reason", reason)
	_ = m.Term()
}

func flatten(h nats.Header) map[string]string {
	if len(h) == 0 {
		return nil
	}
	out := make(map[string]string, len(h))
	for k := range h {
		out[k] = h.Get(k)
	}
	return out
}

// StreamSeq is the message's sequence in its stream (0 when unknown): a
// writer's position that readers can wait for (see AnnotationsQuery.AfterSeq).
func (d *Delivery) StreamSeq() uint64 {
	if d.seq != 0 || d.msg == nil {
		return d.seq
	}
	md, err := d.msg.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}
