package bus

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the publish and consume helpers. They are package-level so
// every service in a process shares them; Register adds them to a registry.
var (
	publishSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gradeline_publish_seconds",
		Help:    "Time from publish to the stream's acknowledgement (PubAck).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	}, []string{"subject"})
	publishErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gradeline_publish_errors_total",
		Help: "Publishes that got no acknowledgement.",
	}, []string{"subject"})
	consumerPending = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gradeline_consumer_pending_messages",
		Help: "Messages in the stream not yet delivered to the durable consumer (lag), as of its last batch.",
	}, []string{"consumer"})
	consumerRedeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gradeline_consumer_redeliveries_total",
		Help: "Messages delivered more than once.",
	}, []string{"consumer"})
	consumerDeadLettered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gradeline_consumer_dead_lettered_total",
		Help: "Messages sent to the dead-letter stream.",
	}, []string{"consumer"})
	consumerRepositioned = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gradeline_consumer_repositioned_total",
		Help: "Times a durable consumer was found beyond the end of its stream (the stream lost messages) and replayed from its first message.",
	}, []string{"consumer"})
	consumerBatchSize = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gradeline_consumer_batch_size",
		Help:    "Messages per batch handed to a handler.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 12),
	}, []string{"consumer"})
	consumerHandleSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gradeline_consumer_handle_seconds",
		Help:    "Time a handler took for one batch.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"consumer", "result"})
)

// Collectors returns the bus metrics.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{publishSeconds, publishErrors, consumerPending, consumerRedeliveries,
		consumerDeadLettered, consumerRepositioned, consumerBatchSize, consumerHandleSeconds}
}

func observeSince(h prometheus.Observer, start time.Time) { h.Observe(time.Since(start).Seconds()) }
