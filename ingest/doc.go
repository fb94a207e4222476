// Package ingest is gradeline's HTTP edge: the one place clients talk to.
// It is a Fiber app that turns requests into events on NATS JetStream
// (answering 2xx only once JetStream acknowledged them) and queries to the
// services behind the bus (annotator, inference, analytics).
//
// The package is laid out by capability; each file holds its routes (the
// entries of the route table, from which the OpenAPI document is built
// too) next to their handlers:
//
//   - users.go: register, login, logout and the authentication of every
//     other route; the users, passwords, tokens, login throttle and
//     revocation list themselves are internal/auth's
//   - grades.go: grade an image with a model, read a grade, list models
//     (their route entries are in routes.go until grades.go takes them)
//   - annotations.go: submit, list, read, change and delete annotations
//   - catalog.go, shares.go: the image catalogue, its tags and shares;
//     uploads.go inspects and stores image bytes (claim check)
//   - iris.go: iris measurements, range and statistics queries
//   - stats.go: grade and annotation statistics (own, or everyone's for admins)
//   - seed.go: the seed project's routes, bodies and answers
//   - oip.go, oiptensor.go, oipstats.go: the Open Inference Protocol v2
//     (/v2/...): metadata, inference with JSON or binary tensors (one
//     grade per row through JetStream), statistics; its errors are the
//     protocol's {"error": "..."}
//
// The HTTP plumbing every capability shares: server.go (the app and its
// lifecycle), backend.go (publishing events, querying services), health.go
// (/healthz, /readyz), routes.go (the route table), request.go
// (decoding and checking bodies and query parameters), errors.go (the one
// JSON error shape), middleware.go (request ids, traces, access log,
// metrics), clientip.go (trusted proxies), idempotency.go
// (Idempotency-Key), writes.go (read-your-writes marks), openapi.go
// (/openapi.json and /docs), metrics.go and config.go.
//
// Requests are checked once, by the contract's rule where there is one
// (bus.ValidateAnnotation through the event's Validate, bus.IrisFilter's
// Validate, bus.ValidatePage); replies of the query services are decoded
// into the contract's types.
package ingest
