package store

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus/admin"
)

// Metrics of the MongoDB writes. Several stores in one process (tests, a
// restarted service) share the collectors of one registry.
type Metrics struct {
	writeSeconds *prometheus.HistogramVec
	written      *prometheus.CounterVec
	duplicates   *prometheus.CounterVec
}

// NewMetrics registers the collectors on reg (nil = the default registry),
// reusing collectors a previous call already registered there.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	m := &Metrics{
		writeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "gradeline", Subsystem: "annotator", Name: "mongo_write_seconds",
			Help:    "Latency of MongoDB write operations (one per batch or per fallback update).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"collection", "op"}),
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gradeline", Subsystem: "annotator", Name: "documents_written_total",
			Help: "Documents inserted or changed in MongoDB.",
		}, []string{"collection"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gradeline", Subsystem: "annotator", Name: "documents_duplicate_total",
			Help: "Inserts that found the document already stored (redelivery or replay).",
		}, []string{"collection"}),
	}
	var err error
	m.writeSeconds, err = admin.Register(reg, m.writeSeconds)
	if err != nil {
		return nil, err
	}
	if m.written, err = admin.Register(reg, m.written); err != nil {
		return nil, err
	}
	if m.duplicates, err = admin.Register(reg, m.duplicates); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Metrics) observe(coll, op string, start time.Time) {
	m.writeSeconds.WithLabelValues(coll, op).Observe(time.Since(start).Seconds())
}

func (m *Metrics) add(coll string, written, dups int) {
	if written > 0 {
		m.written.WithLabelValues(coll).Add(float64(written))
	}
	if dups > 0 {
		m.duplicates.WithLabelValues(coll).Add(float64(dups))
	}
}
