package analytics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus/admin"
)

type metrics struct {
	insertSeconds *prometheus.HistogramVec
	rowsInserted  *prometheus.CounterVec
	insertErrors  *prometheus.CounterVec
	querySeconds  *prometheus.HistogramVec
}

func newMetrics(r prometheus.Registerer) *metrics {
	if r == nil {
		r = prometheus.DefaultRegisterer
	}
	return &metrics{
		insertSeconds: admin.MustRegister(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "gradeline", Subsystem: "analytics", Name: "insert_duration_seconds",
			Help:    "Latency of successful ClickHouse inserts, per table.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"table"})),
		rowsInserted: admin.MustRegister(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gradeline", Subsystem: "analytics", Name: "rows_inserted_total",
			Help: "Rows sent in successful ClickHouse inserts, per table (a deduplicated redelivery counts again).",
		}, []string{"table"})),
		insertErrors: admin.MustRegister(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gradeline", Subsystem: "analytics", Name: "insert_errors_total",
			Help: "Failed ClickHouse inserts, per table; the batch is retried.",
		}, []string{"table"})),
		querySeconds: admin.MustRegister(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "gradeline", Subsystem: "analytics", Name: "query_duration_seconds",
			Help:    "Latency of analytics queries, per query and outcome (ok, invalid, error).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"query", "outcome"})),
	}
}
