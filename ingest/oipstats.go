package ingest

// The statistics extension (GET /v2/models[/{m}[/versions/{v}]]/stats):
// Triton's shape, counted by this edge replica over the inference requests
// it answered. success and fail count requests with their whole duration;
// compute_input is the edge's parsing of the request into events,
// compute_infer each request's share of the ONNX Runtime runs its rows
// took part in (a run of batch size b counts 1/b per row), queue the rest
// of the time from publish to the last result (JetStream, the batcher's
// wait, decoding), compute_output the encoding of the response.
// execution_count is the ONNX Runtime runs, from the same shares.

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
)

// oipDuration is the protocol's $duration_stat: a count and a total.
type oipDuration struct {
	Count uint64 `json:"count"`
	NS    uint64 `json:"ns"`
}

func (d *oipDuration) add(t time.Duration) {
	d.Count++
	d.NS += uint64(max(t, 0))
}

// oipBatch accumulates the runs of one batch size.
type oipBatch struct {
	executions float64
	inferNS    float64
}

// oipModelStats are the statistics of one model version.
type oipModelStats struct {
	mu                                                              sync.Mutex
	name, version                                                   string
	lastInference                                                   int64 // ms since the epoch
	inferenceCount                                                  uint64
	executions                                                      float64
	success, fail, queue, computeInput, computeInfer, computeOutput oipDuration
	batches                                                         map[int]*oipBatch
}

// oipStatsTable holds the statistics of every model version this edge
// answered inferences for.
type oipStatsTable struct {
	mu sync.Mutex
	m  map[[2]string]*oipModelStats
}

func newOIPStats() *oipStatsTable { return &oipStatsTable{m: map[[2]string]*oipModelStats{}} }

// of returns the statistics of a model version, made on first use.
func (t *oipStatsTable) of(name, version string) *oipModelStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := [2]string{name, version}
	st, ok := t.m[k]
	if !ok {
		st = &oipModelStats{name: name, version: version, batches: map[int]*oipBatch{}}
		t.m[k] = st
	}
	return st
}

// all returns every model version's statistics, by name and version.
func (t *oipStatsTable) all() []*oipModelStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*oipModelStats, 0, len(t.m))
	for _, st := range t.m {
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b *oipModelStats) int {
		return cmp.Or(cmp.Compare(a.name, b.name), cmp.Compare(a.version, b.version))
	})
	return out
}

func (s *Server) oipStatsOf(info bus.ModelInfo) *oipModelStats {
	return s.oip.of(info.Name, info.Version)
}

// record counts one request that started at start and took total: n
// inferences answered, or failed with err.
func (st *oipModelStats) record(start time.Time, total time.Duration, n int, tm oipTiming, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if err != nil {
		st.fail.add(total)
		return
	}
	st.success.add(total)
	st.lastInference = start.UnixMilli()
	st.inferenceCount += uint64(n)
	var share time.Duration
	for i, bs := range tm.batchSizes {
		part := tm.inferences[i] / time.Duration(bs)
		share += part
		st.executions += 1 / float64(bs)
		b, ok := st.batches[bs]
		if !ok {
			b = &oipBatch{}
			st.batches[bs] = b
		}
		b.executions += 1 / float64(bs)
		b.inferNS += float64(part)
	}
	st.computeInput.add(tm.input)
	st.computeInfer.add(share)
	st.queue.add(tm.wait - share)
	st.computeOutput.add(tm.output)
}

// json is the protocol's $model_stat.
func (st *oipModelStats) json() fiber.Map {
	st.mu.Lock()
	defer st.mu.Unlock()
	sizes := make([]int, 0, len(st.batches))
	for bs := range st.batches {
		sizes = append(sizes, bs)
	}
	slices.Sort(sizes)
	batches := make([]fiber.Map, 0, len(sizes))
	for _, bs := range sizes {
		b := st.batches[bs]
		runs := uint64(math.Round(b.executions))
		batches = append(batches, fiber.Map{"batch_size": bs,
			"compute_input":  oipDuration{Count: runs},
			"compute_infer":  oipDuration{Count: runs, NS: uint64(b.inferNS)},
			"compute_output": oipDuration{Count: runs}})
	}
	return fiber.Map{
		"name": st.name, "version": st.version,
		"last_inference":  st.lastInference,
		"inference_count": st.inferenceCount,
		"execution_count": uint64(math.Round(st.executions)),
		"inference_stats": fiber.Map{
			"success": st.success, "fail": st.fail, "queue": st.queue,
			"compute_input": st.computeInput, "compute_infer": st.computeInfer, "compute_output": st.computeOutput,
			"cache_hit": oipDuration{}, "cache_miss": oipDuration{},
		},
		"batch_stats": batches,
	}
}

// oipStats answers the statistics of one model (its version, when the
// path names one) or, without a model in the path, of every model served.
func (s *Server) oipStats(c *fiber.Ctx) error {
	var infos []bus.ModelInfo
	if c.Params("model") != "" {
		info, err := s.oipModel(c)
		if err != nil {
			return err
		}
		infos = []bus.ModelInfo{info}
	} else {
		models, err := s.models.get(c.UserContext(), s)
		if err != nil {
			return err
		}
		infos = models
	}
	for _, m := range infos {
		s.oip.of(m.Name, m.Version) // a served model without inferences reports zeros
	}
	out := []fiber.Map{}
	for _, st := range s.oip.all() {
		if c.Params("model") == "" || slices.ContainsFunc(infos, func(m bus.ModelInfo) bool { return m.Name == st.name && m.Version == st.version }) {
			out = append(out, st.json())
		}
	}
	return c.JSON(fiber.Map{"model_stats": out})
}
