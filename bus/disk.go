package bus

// ImageBucketMaxBytes bounds the image bucket; JetStream reserves it.
const ImageBucketMaxBytes = 5 << 30

// IdempotencyBucketMaxBytes bounds the idempotency bucket.
const IdempotencyBucketMaxBytes = 256 << 20

// StoreReservation is the file storage JetStream reserves for the topology:
// the size bound of every stream (scaled) and of the buckets with a bound.
// A server whose store is smaller refuses a stream at creation; the local
// stack checks it up front (natsserver.CheckStoreReservation).
func StoreReservation(opt TopologyOptions) int64 {
	var sum int64
	for _, s := range Streams {
		sum += StreamMaxBytes(s, opt)
	}
	return sum + ImageBucketMaxBytes + IdempotencyBucketMaxBytes + ModelStateBucketMaxBytes
}

// StreamMaxBytes is the size bound of stream s under opt (its MaxBytes
// times MaxBytesScale, 1 when unset).
func StreamMaxBytes(s StreamSpec, opt TopologyOptions) int64 {
	scale := opt.MaxBytesScale
	if scale <= 0 {
		scale = 1
	}
	return int64(float64(s.MaxBytes) * scale)
}
