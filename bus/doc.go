// Package bus is the contract every gradeline service shares, and what a
// downstream Go program imports to publish or subscribe:
//
//   - the event types (AnnotationCreated, ImageSubmitted, GradeCompleted, ...)
//     and their subjects; Decode turns a message into its typed event;
//   - the one table of streams (Streams) and durable consumers (Consumers),
//     and what each service may do on the bus (Access, Permissions), from
//     which the NATS users' permissions derive;
//   - the request and reply types of the query services (AnnotationsQuery,
//     Grade, IrisStatsQuery, ...) with their subjects (Svc*), and the
//     transport-neutral error codes they answer with (Code);
//   - the JetStream helpers that enforce the delivery rules: Connect,
//     Publish, Consume, Request, Handle and AddService, EnsureTopology.
//
// Rules enforced here so that no service has to remember them:
//   - every event carries an id (UUIDv7), a type, a schema version and a time;
//     the id is the Nats-Msg-Id so a retried publish is dropped by the stream;
//   - Publish returns only after the stream acknowledged the message;
//   - Consume acks only after the handler succeeded, naks with backoff on
//     transient failure, and dead-letters poison messages with the reason.
//
// bus links no server: the embedded NATS server of the local stack and the
// tests lives in bus/natsserver, the process kit of the service binaries
// (logger, metrics, health endpoints) in bus/admin. The events and channels
// are documented for other languages in asyncapi.yaml, which a test keeps in
// step with the Go types.
package bus
