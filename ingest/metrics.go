package ingest

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus/admin"
)

type metrics struct {
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	objectPut   *prometheus.HistogramVec
	requestsBus *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{}
	var err error
	if m.requests, err = admin.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "gradeline", Subsystem: "ingest", Name: "http_requests_total",
		Help: "HTTP requests by route template, method and status.",
	}, []string{"route", "method", "status"})); err != nil {
		return nil, err
	}
	if m.latency, err = admin.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "gradeline", Subsystem: "ingest", Name: "http_request_duration_seconds",
		Help:    "HTTP request latency by route template, method and status.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"route", "method", "status"})); err != nil {
		return nil, err
	}
	// An event's publish is timed by bus.Publish (gradeline_publish_seconds
	// and gradeline_publish_errors_total, by subject), registered here so
	// the edge's registry carries them whoever built it; the image put
	// before a publish is the edge's own.
	if err := admin.RegisterBus(reg); err != nil {
		return nil, err
	}
	if m.objectPut, err = admin.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "gradeline", Subsystem: "ingest", Name: "object_put_duration_seconds",
		Help:    "Time to store an image in the object store, by outcome.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5},
	}, []string{"outcome"})); err != nil {
		return nil, err
	}
	if m.requestsBus, err = admin.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "gradeline", Subsystem: "ingest", Name: "bus_request_duration_seconds",
		Help:    "Latency of NATS request-reply queries by subject and outcome.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 15},
	}, []string{"subject", "outcome"})); err != nil {
		return nil, err
	}
	return m, nil
}
