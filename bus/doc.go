// Package bus is the contract every gradeline service shares: the event
// types and their subjects, the JetStream streams and durable consumers
// (one table, applied idempotently by EnsureTopology), the publish and
// consume helpers that enforce the delivery rules, typed request-reply for
// query services, and an embedded NATS server for local runs and tests.
//
// Rules enforced here so that no service has to remember them:
//   - every event carries an id (UUIDv7), a type, a schema version and a time;
//     the id is the Nats-Msg-Id so a retried publish is dropped by the stream;
//   - Publish returns only after the stream acknowledged the message;
//   - Consume acks only after the handler succeeded, naks with backoff on
//     transient failure, and dead-letters poison messages with the reason.
package bus
