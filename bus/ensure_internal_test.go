package bus

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestTransientAPIError: what ensureConsumer tries again (no answer in
// time) and what it returns at once (an answer that refuses).
func TestTransientAPIError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("bus: stream CALLBACKS: %w", context.DeadlineExceeded), true},
		{nats.ErrTimeout, true},
		{fmt.Errorf("x: %w", nats.ErrNoResponders), true},
		{jetstream.ErrNoStreamResponse, true},
		{jetstream.ErrStreamNotFound, false},
		{jetstream.ErrConsumerNotFound, false},
		{context.Canceled, false},
		{errors.New("nats: insufficient resources"), false},
	} {
		if got := transientAPIError(tc.err); got != tc.want {
			t.Errorf("transientAPIError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
