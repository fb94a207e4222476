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

	// Triton's per model and version statistics (nv_inference_*), with
	// durations as histograms rather than cumulative counters.
	success    *prometheus.CounterVec   // model, version
	failure    *prometheus.CounterVec   // model, version, reason
	infCount   *prometheus.CounterVec   // model, version: images run
	execCount  *prometheus.CounterVec   // model, version: ONNX Runtime calls
	queue      *prometheus.HistogramVec // model, version
	compInput  *prometheus.HistogramVec // model, version
	compInfer  *prometheus.HistogramVec // model, version
	compOutput *prometheus.HistogramVec // model, version
	loads      *prometheus.CounterVec   // model, version, result
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

// Label values of gradeline_inference_model_loads_total.
const (
	loadOK     = "ok"
	loadFailed = "failed"
)

// durationBuckets span 50 µs to about 100 s.
var durationBuckets = prometheus.ExponentialBuckets(50e-6, 2, 22)

// newMetrics registers the service's metrics; models counts the served
// models when scraped.
func newMetrics(r prometheus.Registerer, models func() float64) *metrics {
	if r == nil {
		r = prometheus.DefaultRegisterer
	}
	mv := []string{"model", "version"}
	hist := func(name, help string) *prometheus.HistogramVec {
		return admin.MustRegister(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: durationBuckets}, mv))
	}
	m := &metrics{
		success: admin.MustRegister(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gradeline_inference_request_success_total",
			Help: "Grades completed, per model and version served (Triton's nv_inference_request_success).",
		}, mv)),
		failure: admin.MustRegister(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gradeline_inference_request_failure_total",
			Help: "Grades failed for a served model version, by reason (Triton's nv_inference_request_failure).",
		}, []string{"model", "version", "reason"})),
		infCount: admin.MustRegister(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gradeline_inference_count_total",
			Help: "Images (inferences) run, per model and version (Triton's nv_inference_count); divided by gradeline_inference_exec_count_total it is the average batch size.",
		}, mv)),
		execCount: admin.MustRegister(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gradeline_inference_exec_count_total",
			Help: "ONNX Runtime calls (batches executed), per model and version (Triton's nv_inference_exec_count).",
		}, mv)),
		queue: hist("gradeline_inference_queue_seconds",
			"Time a grade waited from its submission until its batch was taken in hand (cut from its model version's queue to run), per model and version."),
		compInput: hist("gradeline_inference_compute_input_seconds",
			"Decoding and preprocessing one image (or checking one submitted tensor), per model and version."),
		compInfer: hist("gradeline_inference_compute_infer_seconds",
			"One ONNX Runtime call (a whole batch), per model and version."),
		compOutput: hist("gradeline_inference_compute_output_seconds",
			"Turning one call's output tensor into scores per label, per model and version."),
		loads: admin.MustRegister(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gradeline_inference_model_loads_total",
			Help: "Loads of a model version from its folder (at start, by the watcher or the repository API): ok (checked and swapped in) or failed (not served; the previous copy keeps serving).",
		}, []string{"model", "version", "result"})),
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
			Help:    "Fetching, decoding and preprocessing one submission's image (or the images of one Registry.Grade call), until it is queued.",
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
	}
	admin.MustRegister(r, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gradeline_inference_models_loaded",
		Help: "Models served by the registry (with at least one version).",
	}, models))
	return m
}
