package inference

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus/admin"
)

type metrics struct {
	batchSize  *prometheus.HistogramVec
	inference  *prometheus.HistogramVec
	preprocess prometheus.Histogram
	completed  *prometheus.CounterVec
	failed     *prometheus.CounterVec
	models     prometheus.Gauge
}

// Reasons a grade fails, the label of gradeline_inference_grades_failed_total
// (model names are user input, so they are not a label of failures).
const (
	failUndecodable   = "undecodable"
	failUnknownModel  = "unknown_model"
	failMissingObject = "missing_object"
	failChecksum      = "checksum"
	failModelOutput   = "model_output"
)

func newMetrics(r prometheus.Registerer) *metrics {
	if r == nil {
		r = prometheus.DefaultRegisterer
	}
	m := &metrics{
		batchSize: admin.MustRegister(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gradeline_inference_batch_size",
			Help:    "Images per ONNX Runtime call.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024},
		}, []string{"model"})),
		inference: admin.MustRegister(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gradeline_inference_seconds",
			Help:    "Duration of one ONNX Runtime call (a whole batch).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}, []string{"model"})),
		preprocess: admin.MustRegister(r, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "gradeline_inference_preprocess_seconds",
			Help:    "Fetching, decoding and preprocessing the images of one consumed batch.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		})),
		completed: admin.MustRegister(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gradeline_inference_grades_completed_total",
			Help: "Grades published as completed.",
		}, []string{"model"})),
		failed: admin.MustRegister(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gradeline_inference_grades_failed_total",
			Help: "Grades published as failed, by reason.",
		}, []string{"reason"})),
		models: admin.MustRegister(r, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gradeline_inference_models_loaded",
			Help: "Models loaded by the registry.",
		})),
	}
	return m
}
