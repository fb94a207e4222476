package bus

import "time"

// Hooks for the external tests (package bus_test): they start their server
// with bus/natsserver, which imports bus, so they cannot live in package bus.

// ConsumerDeadLettered counts the messages each consumer dead-lettered.
var ConsumerDeadLettered = consumerDeadLettered

// SetPositionCheckEvery shortens how often an idle consumer checks its
// position; the returned func restores it.
func SetPositionCheckEvery(d time.Duration) (restore func()) {
	old := positionCheckEvery
	positionCheckEvery = d
	return func() { positionCheckEvery = old }
}
