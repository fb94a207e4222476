package ingest

// The statistics extension (GET /v2/models[/{m}[/versions/{v}]]/stats):
// Triton's shape, counted over the inference requests every edge replica
// answered. success and fail count requests with their whole duration;
// compute_input is the edge's parsing of the request into events,
// compute_infer each request's share of the ONNX Runtime runs its rows
// took part in (a run of batch size b counts 1/b per row), queue the rest
// of the time from publish to the last result (JetStream, the batcher's
// wait, decoding), compute_output the encoding of the response.
// execution_count is the ONNX Runtime runs, from the same shares.
//
// The counts are cluster-wide: they live in the edge's key-value bucket
// bus.BucketOIPStats, one entry per model version, so every replica
// answers the same numbers (and a restart loses none). A request adds
// its counts to its replica's pending deltas; before it is answered the
// deltas are merged into the entries (compare-and-set on the revision,
// retried on a conflict with another replica), several requests' deltas
// in one merge when they finish together. A statistics request merges its
// replica's pending deltas first, then reads the entries.

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// Bounds of a merge into the bucket.
const (
	// oipStatsFlushTimeout bounds the merge a request waits for; past it
	// the request is answered and its counts wait for the next merge.
	oipStatsFlushTimeout = 5 * time.Second
	// oipStatsCASAttempts bounds the compare-and-set retries of one entry
	// (each conflict means another replica's merge went through).
	oipStatsCASAttempts = 50
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

func (d *oipDuration) merge(o oipDuration) {
	d.Count += o.Count
	d.NS += o.NS
}

// oipBatch accumulates the runs of one batch size.
type oipBatch struct {
	Executions float64 `json:"executions"`
	InferNS    float64 `json:"infer_ns"`
}

// oipCounters are the statistics of one model version: a replica's
// pending delta, or the total an entry of the bucket holds (its JSON).
type oipCounters struct {
	LastInference  int64             `json:"last_inference"` // ms since the epoch
	InferenceCount uint64            `json:"inference_count"`
	Executions     float64           `json:"executions"`
	Success        oipDuration       `json:"success"`
	Fail           oipDuration       `json:"fail"`
	Queue          oipDuration       `json:"queue"`
	ComputeInput   oipDuration       `json:"compute_input"`
	ComputeInfer   oipDuration       `json:"compute_infer"`
	ComputeOutput  oipDuration       `json:"compute_output"`
	Batches        map[int]*oipBatch `json:"batches,omitempty"`
}

// merge adds the counts of o.
func (c *oipCounters) merge(o *oipCounters) {
	c.LastInference = max(c.LastInference, o.LastInference)
	c.InferenceCount += o.InferenceCount
	c.Executions += o.Executions
	c.Success.merge(o.Success)
	c.Fail.merge(o.Fail)
	c.Queue.merge(o.Queue)
	c.ComputeInput.merge(o.ComputeInput)
	c.ComputeInfer.merge(o.ComputeInfer)
	c.ComputeOutput.merge(o.ComputeOutput)
	for bs, b := range o.Batches {
		c.batch(bs).Executions += b.Executions
		c.batch(bs).InferNS += b.InferNS
	}
}

// batch returns the runs of batch size bs, made on first use.
func (c *oipCounters) batch(bs int) *oipBatch {
	if c.Batches == nil {
		c.Batches = map[int]*oipBatch{}
	}
	b, ok := c.Batches[bs]
	if !ok {
		b = &oipBatch{}
		c.Batches[bs] = b
	}
	return b
}

// record counts one request that started at start and took total: n
// inferences answered, or failed with err.
func (c *oipCounters) record(start time.Time, total time.Duration, n int, tm oipTiming, err error) {
	if err != nil {
		c.Fail.add(total)
		return
	}
	c.Success.add(total)
	c.LastInference = start.UnixMilli()
	c.InferenceCount += uint64(n)
	var share time.Duration
	for i, bs := range tm.batchSizes {
		part := tm.inferences[i] / time.Duration(bs)
		share += part
		c.Executions += 1 / float64(bs)
		b := c.batch(bs)
		b.Executions += 1 / float64(bs)
		b.InferNS += float64(part)
	}
	c.ComputeInput.add(tm.input)
	c.ComputeInfer.add(share)
	c.Queue.add(tm.wait - share)
	c.ComputeOutput.add(tm.output)
}

// json is the protocol's $model_stat of model version name, version.
func (c *oipCounters) json(name, version string) fiber.Map {
	sizes := make([]int, 0, len(c.Batches))
	for bs := range c.Batches {
		sizes = append(sizes, bs)
	}
	slices.Sort(sizes)
	batches := make([]fiber.Map, 0, len(sizes))
	for _, bs := range sizes {
		b := c.Batches[bs]
		runs := uint64(math.Round(b.Executions))
		batches = append(batches, fiber.Map{"batch_size": bs,
			"compute_input":  oipDuration{Count: runs},
			"compute_infer":  oipDuration{Count: runs, NS: uint64(b.InferNS)},
			"compute_output": oipDuration{Count: runs}})
	}
	return fiber.Map{
		"name": name, "version": version,
		"last_inference":  c.LastInference,
		"inference_count": c.InferenceCount,
		"execution_count": uint64(math.Round(c.Executions)),
		"inference_stats": fiber.Map{
			"success": c.Success, "fail": c.Fail, "queue": c.Queue,
			"compute_input": c.ComputeInput, "compute_infer": c.ComputeInfer, "compute_output": c.ComputeOutput,
			"cache_hit": oipDuration{}, "cache_miss": oipDuration{},
		},
		"batch_stats": batches,
	}
}

// oipStatsKey is the bucket's key of a model version: names may hold
// characters keys may not, so both parts are base64url.
func oipStatsKey(name, version string) string {
	return "m." + base64.RawURLEncoding.EncodeToString([]byte(name)) + "." + base64.RawURLEncoding.EncodeToString([]byte(version))
}

// parseOIPStatsKey reverses oipStatsKey; ok is false for another key.
func parseOIPStatsKey(key string) (name, version string, ok bool) {
	parts := strings.Split(key, ".")
	if len(parts) != 3 || parts[0] != "m" {
		return "", "", false
	}
	n, err1 := base64.RawURLEncoding.DecodeString(parts[1])
	v, err2 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || len(n) == 0 {
		return "", "", false
	}
	return string(n), string(v), true
}

// oipStatsTable is this replica's side of the statistics: the deltas not
// yet merged into the bucket.
type oipStatsTable struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	mu       sync.Mutex
	pending  map[[2]string]*oipCounters
	recorded uint64 // requests recorded so far

	// flushMu makes one merge at a time; a request whose counts an
	// earlier merge took (flushed >= its number) waits for nothing more.
	flushMu sync.Mutex
	flushed uint64
}

func newOIPStats(ctx context.Context, js jetstream.JetStream, replicas int, log *slog.Logger) (*oipStatsTable, error) {
	kv, err := bus.KVBucket(ctx, js, bus.BucketOIPStats, 0, replicas)
	if err != nil {
		return nil, err
	}
	return &oipStatsTable{kv: kv, log: log, pending: map[[2]string]*oipCounters{}}, nil
}

// record adds one request to the pending deltas of a model version and
// returns its number, for flush.
func (t *oipStatsTable) record(name, version string, start time.Time, total time.Duration, n int, tm oipTiming, err error) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := [2]string{name, version}
	c, ok := t.pending[k]
	if !ok {
		c = &oipCounters{}
		t.pending[k] = c
	}
	c.record(start, total, n, tm, err)
	t.recorded++
	return t.recorded
}

// flush merges the pending deltas into the bucket unless a merge already
// took request upTo's (upTo 0: whatever is pending now). On failure the
// deltas not merged stay pending for the next merge.
func (t *oipStatsTable) flush(ctx context.Context, upTo uint64) error {
	t.flushMu.Lock()
	defer t.flushMu.Unlock()
	t.mu.Lock()
	if upTo == 0 {
		upTo = t.recorded
	}
	if t.flushed >= upTo {
		t.mu.Unlock()
		return nil
	}
	taken, through := t.pending, t.recorded
	t.pending = map[[2]string]*oipCounters{}
	t.mu.Unlock()

	var failed error
	for k, delta := range taken {
		if failed == nil {
			if failed = t.merge(ctx, k[0], k[1], delta); failed == nil {
				continue
			}
		}
		// Back into pending, with whatever was recorded meanwhile.
		t.mu.Lock()
		if c, ok := t.pending[k]; ok {
			delta.merge(c)
		}
		t.pending[k] = delta
		t.mu.Unlock()
	}
	if failed != nil {
		return failed
	}
	t.flushed = through
	return nil
}

// merge adds delta to the bucket's entry of a model version:
// compare-and-set on the entry's revision, again on a conflict.
func (t *oipStatsTable) merge(ctx context.Context, name, version string, delta *oipCounters) error {
	key := oipStatsKey(name, version)
	for range oipStatsCASAttempts {
		var total oipCounters
		var rev uint64
		e, err := t.kv.Get(ctx, key)
		switch {
		case err == nil:
			if err := json.Unmarshal(e.Value(), &total); err != nil {
				// A damaged entry would block the model's statistics for
				// good: it starts over, and says so.
				t.log.Warn("OIP statistics entry unreadable; starting it over", "model", name, "version", version, "err", err)
				total = oipCounters{}
			}
			rev = e.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return fmt.Errorf("oip statistics %s: %w", name, err)
		}
		total.merge(delta)
		data, err := json.Marshal(&total)
		if err != nil {
			return fmt.Errorf("oip statistics %s: %w", name, err)
		}
		if rev == 0 {
			_, err = t.kv.Create(ctx, key, data)
		} else {
			_, err = t.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("oip statistics %s: %w", name, err)
		}
	}
	return fmt.Errorf("oip statistics %s: %d conflicting merges in a row", name, oipStatsCASAttempts)
}

// read returns the bucket's counts of a model version (zeros without any).
func (t *oipStatsTable) read(ctx context.Context, name, version string) (*oipCounters, error) {
	var c oipCounters
	e, err := t.kv.Get(ctx, oipStatsKey(name, version))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return &c, nil
	case err != nil:
		return nil, fmt.Errorf("oip statistics %s: %w", name, err)
	}
	if json.Unmarshal(e.Value(), &c) != nil {
		// A damaged entry reads as zeros until the next merge starts it over.
		return &oipCounters{}, nil
	}
	return &c, nil
}

// versions lists the model versions the bucket has counts of.
func (t *oipStatsTable) versions(ctx context.Context) ([][2]string, error) {
	lister, err := t.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("oip statistics: %w", err)
	}
	defer func() { _ = lister.Stop() }()
	var out [][2]string
	for key := range lister.Keys() {
		if name, version, ok := parseOIPStatsKey(key); ok {
			out = append(out, [2]string{name, version})
		}
	}
	return out, nil
}

// recordOIP counts one inference request of model version info and
// merges it into the cluster's statistics before it is answered: the
// next statistics request, on any replica, counts it. A merge that fails
// leaves the counts pending and the request answered.
func (s *Server) recordOIP(ctx context.Context, info bus.ModelInfo, start time.Time, n int, tm oipTiming, err error) {
	seq := s.oip.record(info.Name, info.Version, start, time.Since(start), n, tm, err)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), oipStatsFlushTimeout)
	defer cancel()
	if ferr := s.oip.flush(ctx, seq); ferr != nil {
		s.log.Warn("OIP statistics not merged yet; kept for the next merge", "model", info.Name, "err", ferr)
	}
}

// oipStats answers the statistics of one model (its version, when the
// path names one, else the newest served) or, without a model in the
// path, of every model version served or counted, from the cluster-wide
// counts.
func (s *Server) oipStats(c *fiber.Ctx) error {
	ctx := c.UserContext()
	var want [][2]string
	if c.Params("model") != "" {
		info, err := s.oipModel(c)
		if err != nil {
			return err
		}
		want = [][2]string{{info.Name, info.Version}}
	} else {
		models, err := s.models.get(ctx, s)
		if err != nil {
			return err
		}
		counted, err := s.oip.versions(ctx)
		if err != nil {
			return err
		}
		// A served model without inferences reports zeros.
		for _, m := range models {
			want = append(want, [2]string{m.Name, m.Version})
		}
		for _, k := range counted {
			if !slices.Contains(want, k) {
				want = append(want, k)
			}
		}
		slices.SortFunc(want, func(a, b [2]string) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) })
	}
	// This replica's own pending counts first, so it answers with them.
	if err := s.oip.flush(ctx, 0); err != nil {
		return err
	}
	out := make([]fiber.Map, 0, len(want))
	for _, k := range want {
		st, err := s.oip.read(ctx, k[0], k[1])
		if err != nil {
			return err
		}
		out = append(out, st.json(k[0], k[1]))
	}
	return c.JSON(fiber.Map{"model_stats": out})
}
