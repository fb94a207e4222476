package annotator

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// applied tracks, per consumer, the highest stream sequence this replica
// has stored, so a query carrying AfterSeq (the writer's PubAck sequence)
// answers once that write is readable: read-your-writes without the edge
// polling. Another replica may have stored it: then the consumer's ack
// floor on the server says so.
type applied struct {
	js jetstream.JetStream

	mu      sync.Mutex
	max     map[string]uint64 // durable name -> highest stored sequence
	changed chan struct{}     // closed and replaced on every advance
}

func newApplied(js jetstream.JetStream) *applied {
	return &applied{js: js, max: map[string]uint64{}, changed: make(chan struct{})}
}

// stored records that the deliveries with nil results are in the store.
func (a *applied) stored(durable string, ds []*bus.Delivery, results []error) {
	var top uint64
	for i, d := range ds {
		if results[i] == nil {
			top = max(top, d.StreamSeq())
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if top > a.max[durable] {
		a.max[durable] = top
		close(a.changed)
		a.changed = make(chan struct{})
	}
}

// wait returns once sequence seq of spec's stream is stored, or after
// bus.ReadYourWritesWait (the query then answers with what is stored).
func (a *applied) wait(ctx context.Context, spec bus.ConsumerSpec, seq uint64) {
	if seq == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, bus.ReadYourWritesWait)
	defer cancel()
	for checkedServer := false; ; {
		a.mu.Lock()
		done, changed := a.max[spec.Durable] >= seq, a.changed
		a.mu.Unlock()
		if done {
			return
		}
		if !checkedServer {
			// Stored by another replica (or before this one started)?
			if c, err := a.js.Consumer(ctx, spec.Stream, spec.Durable); err == nil {
				if info := c.CachedInfo(); info != nil && info.AckFloor.Stream >= seq {
					return
				}
			}
			checkedServer = true
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(50 * time.Millisecond):
			checkedServer = false
		}
	}
}
