package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamHandler takes one delivery as it arrives (ConsumeStream). It is
// called on the consume loop, so it hands the delivery off and returns;
// whoever holds the delivery then calls its Done exactly once, from any
// goroutine. ctx is cancelled at shutdown: the handler then finishes what
// is in hand and returns the rest with Done(ErrShutdown).
type StreamHandler func(ctx context.Context, d *Delivery)

// ErrShutdown, passed to Delivery.Done, returns the message to the server
// at once (a nak without delay) for another replica: it was not handled.
var ErrShutdown = errors.New("bus: shutting down")

// Done settles a delivery of ConsumeStream: with nil by its outcome (ack,
// or Reject and Retry as marked), with ErrShutdown by returning it to the
// server at once, with any other error by a nak with backoff and no
// delivery limit (a dependency is down, as when a Handler fails). Later
// calls do nothing, as does Done on a delivery of Consume (its batch is
// settled when the Handler returns).
func (d *Delivery) Done(err error) {
	if d.done != nil {
		d.done(err)
	}
}

// DefaultMaxInFlight is ConsumeOptions.MaxInFlight's default.
const DefaultMaxInFlight = 256

// streamPullWait is how long one pull request of ConsumeStream waits for
// messages. Short, because at shutdown the pull in progress is read to its
// end (the messages it brings are returned to the server): at a second it
// was most of a clean stop of the local stack. A pull lost in a leader
// change or reconnect is replaced as soon. An idle consumer makes four
// pulls a second.
var streamPullWait = 250 * time.Millisecond

// ConsumeStream runs the durable pull consumer spec until ctx is
// cancelled, handing each message to h as it arrives: the streaming mode,
// for handlers that batch by their own rules (the inference service's
// queue per model version). At most MaxInFlight deliveries are handed out
// and not yet Done; nothing is pulled beyond that. On cancellation it
// pulls no more, returns what the last pull brings, and waits for every
// delivery in flight to be Done (bounded by DrainTimeout, after which the
// rest is returned to the server).
func ConsumeStream(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, opt ConsumeOptions, h StreamHandler) error {
	opt.defaults()
	if opt.MaxInFlight <= 0 {
		opt.MaxInFlight = DefaultMaxInFlight
	}
	log := opt.Logger.With("consumer", spec.Durable)
	cons, err := ensureConsumer(ctx, js, spec, log)
	if err != nil {
		return err
	}
	c := &consumer{js: js, cons: cons, spec: spec, opt: opt, log: log, checked: time.Now()}
	f := &flight{slots: make(chan struct{}, opt.MaxInFlight), held: map[*Delivery]struct{}{}}
	// Deliveries outlive ctx: what is in hand is finished and settled
	// after cancellation.
	base := context.WithoutCancel(ctx)
	err = c.stream(ctx, base, f, h)
	f.drain(c, opt.DrainTimeout)
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// flight counts the deliveries handed out and not yet Done.
type flight struct {
	slots chan struct{} // one per delivery in flight (or reserved by a pull)
	mu    sync.Mutex
	held  map[*Delivery]struct{}
	idle  chan struct{} // closed when held empties during drain
}

// stream pulls while there is room in flight and hands each message to h.
func (c *consumer) stream(ctx, base context.Context, f *flight, h StreamHandler) error {
	for {
		// Reserve room for at least one message, then for as many more as
		// are free: one pull asks for all of them.
		select {
		case f.slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		n := 1
	more:
		for n < cap(f.slots) {
			select {
			case f.slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		got, err := c.pull(ctx, base, f, h, n)
		for range n - got {
			<-f.slots // reserved but not used
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case err == nil:
			if got == 0 {
				c.checkPosition(ctx) // idle: nothing to deliver, or nothing deliverable
			}
		case errors.Is(err, nats.ErrConnectionClosed):
			return fmt.Errorf("bus: consume %s: %w", c.spec.Durable, err)
		default:
			c.log.Warn("fetch failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
}

// pull makes one pull request for up to n messages and hands each to h as
// it arrives; it returns how many took a slot. Messages that arrive after
// ctx is cancelled are returned to the server at once.
func (c *consumer) pull(ctx, base context.Context, f *flight, h StreamHandler, n int) (int, error) {
	res, err := c.cons.Fetch(n, jetstream.FetchMaxWait(streamPullWait))
	if err != nil {
		return 0, err
	}
	got := 0
	for m := range res.Messages() {
		if ctx.Err() != nil {
			_ = m.Nak()
			continue
		}
		d, md := c.decode(base, m)
		if md != nil {
			consumerPending.WithLabelValues(c.spec.Durable).Set(float64(md.NumPending))
		}
		if d == nil {
			continue // dead-lettered or terminated: its slot stays free
		}
		got++
		f.hold(c, d)
		h(ctx, d)
	}
	err = res.Error()
	if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
		err = nil
	}
	return got, err
}

// hold counts d in flight and arms its Done.
func (f *flight) hold(c *consumer, d *Delivery) {
	var once sync.Once
	d.done = func(err error) {
		once.Do(func() {
			if f.release(d) {
				c.settleStream(d, err)
			}
		})
	}
	f.mu.Lock()
	f.held[d] = struct{}{}
	f.mu.Unlock()
}

// release takes d out of flight; false when the drain already returned it
// to the server.
func (f *flight) release(d *Delivery) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.held[d]; !ok {
		return false
	}
	delete(f.held, d)
	<-f.slots
	if len(f.held) == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
	return true
}

// drain waits for the deliveries in flight to be Done, at most timeout,
// then returns the rest to the server.
func (f *flight) drain(c *consumer, timeout time.Duration) {
	f.mu.Lock()
	var idle chan struct{}
	if len(f.held) > 0 {
		idle = make(chan struct{})
		f.idle = idle
	}
	f.mu.Unlock()
	if idle == nil {
		return
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-idle:
		return
	case <-t.C:
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c.log.Warn("shutdown: deliveries not done in time returned to the server", "count", len(f.held), "timeout", timeout)
	for d := range f.held {
		delete(f.held, d)
		_ = d.msg.Nak()
	}
}

// settleStream settles a delivery of ConsumeStream when its Done is called.
func (c *consumer) settleStream(d *Delivery, err error) {
	switch {
	case err == nil:
		c.settle(d)
	case errors.Is(err, ErrShutdown):
		_ = d.msg.Nak()
	default:
		Log(d.Ctx, c.log).Warn("event not handled; will retry", "id", d.Event.EventMeta().ID, "delivery", d.NumDelivered, "err", err)
		_ = d.msg.NakWithDelay(c.opt.Backoff(d.NumDelivered))
	}
}
