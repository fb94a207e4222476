// Package bench measures the pipeline against the real local stack and, in
// the same run, the baseline each path is built on: raw JetStream publish,
// raw ONNX Runtime, raw ClickHouse queries. Run with `make bench`.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/fasthttp"

	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/internal/fixture"
	"github.com/gradeline/gradeline/deploy/local"
	"github.com/gradeline/gradeline/inference"
)

var (
	stackOnce sync.Once
	stackEP   local.Endpoints
	stackErr  error
	stopStack = func() {}
	token     string
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopStack()
	os.Exit(code)
}

// startStack runs one local stack for every benchmark of the run.
func startStack(b *testing.B) local.Endpoints {
	b.Helper()
	stackOnce.Do(func() {
		for _, n := range []string{"ONNXRUNTIME_LIB", "GRADELINE_CHDB_LAUNCHER"} {
			if os.Getenv(n) == "" {
				stackErr = fmt.Errorf("%s is not set: run `make bench`", n)
				return
			}
		}
		dir, err := os.MkdirTemp("", "gradeline-bench-")
		if err != nil {
			stackErr = err
			return
		}
		st, err := launch(dir)
		if err != nil {
			stackErr = err
			return
		}
		stackEP = st.ep
		stopStack = func() { st.stop(); _ = os.RemoveAll(dir) }
		token, stackErr = register(stackEP.HTTP)
	})
	if stackErr != nil {
		b.Fatal(stackErr)
	}
	return stackEP
}

var httpClient = &http.Client{Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}}

func register(base string) (string, error) {
	body, _ := json.Marshal(map[string]string{"username": "bench", "password": "benchmark password", "signupCode": local.DefaultSignupCode})
	resp, err := httpClient.Post(base+"/api/v1/auth/register", "application/json", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var tok struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.Token == "" {
		return "", fmt.Errorf("register: %d %v", resp.StatusCode, err)
	}
	return tok.Token, nil
}

// post sends body and returns the status; the reply is drained so the
// connection is reused.
func post(url, ctype string, body []byte) (int, []byte, error) {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, nil
}

// fast is the load generator's HTTP client for the throughput runs: like
// wrk, it keeps its own cost per request small (fasthttp), so the figure
// is the server's. One keep-alive connection per worker.
var fast = &fasthttp.Client{MaxConnsPerHost: 256, ReadTimeout: time.Minute, WriteTimeout: time.Minute}

func fastPost(url, ctype string, body []byte) (int, []byte, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(http.MethodPost)
	req.Header.SetContentType(ctype)
	req.Header.Set("Authorization", "Bearer "+token)
	req.SetBodyRaw(body)
	if err := fast.Do(req, resp); err != nil {
		return 0, nil, err
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...), nil
}

// waitDrained waits until every durable consumer of stream has handled
// everything published so far.
func waitDrained(b *testing.B, js jetstream.JetStream, stream string) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	for _, spec := range bus.ConsumersOf(stream) {
		for {
			c, err := js.Consumer(context.Background(), spec.Stream, spec.Durable)
			if err != nil {
				b.Fatal(err)
			}
			info, err := c.Info(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			if info.NumPending == 0 && info.NumAckPending == 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("consumer %s still has %d pending", spec.Durable, info.NumPending)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// parallel runs n jobs on workers goroutines and returns the elapsed time.
func parallel(b *testing.B, workers, n int, job func(i int) error) time.Duration {
	b.Helper()
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || failed.Load() != nil {
					return
				}
				if err := job(i); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func report(b *testing.B, name string, pipeline, baseline float64, unit, baseName string) {
	ratio := pipeline / baseline
	b.ReportMetric(pipeline, unit+"_pipeline")
	b.ReportMetric(baseline, unit+"_"+baseName)
	b.ReportMetric(ratio, "ratio")
	fmt.Printf("%-34s pipeline %12.1f %s   %-18s %12.1f %s   ratio %.2f\n", name, pipeline, unit, baseName, baseline, unit, ratio)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkAnnotations: annotations accepted per second through HTTP with
// 64 concurrent keep-alive clients, against the raw JetStream publish rate
// of the same events with the same concurrency. Target ratio >= 0.5.
func BenchmarkAnnotations(b *testing.B) {
	ep := startStack(b)
	n := envInt("GRADELINE_BENCH_ANNOTATIONS", 20000)
	const clients = 64
	annotation := json.RawMessage(`{"label":"cat","box":[12,40,128,96],"confidence":0.93,"notes":"left ear partly hidden"}`)

	_, js, err := bus.Connect(context.Background(), ep.NATSAdmin, "bench-raw", nil)
	if err != nil {
		b.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"annotation": annotation})
	// Rounds alternate the two paths, as single runs on a shared 2-core
	// machine vary by 10-20%.
	rounds := envInt("GRADELINE_BENCH_ROUNDS", 3)
	var rawRates, httpRates []float64
	for range rounds {
		raw := parallel(b, clients, n, func(int) error {
			ev := &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), ImageID: "img-1", Author: "bench", Annotation: annotation}
			_, err := bus.Publish(context.Background(), js, ev)
			return err
		})
		// Each phase starts with the consumers idle, so neither pays for the
		// other's backlog being written to MongoDB and ClickHouse.
		waitDrained(b, js, bus.StreamAnnotations)
		viaHTTP := parallel(b, clients, n, func(int) error {
			code, out, err := fastPost(ep.HTTP+"/api/v1/annotations", "application/json", body)
			if err == nil && code != http.StatusAccepted {
				err = fmt.Errorf("annotation: %d %s", code, out)
			}
			return err
		})
		waitDrained(b, js, bus.StreamAnnotations)
		rawRates = append(rawRates, float64(n)/raw.Seconds())
		httpRates = append(httpRates, float64(n)/viaHTTP.Seconds())
		fmt.Fprintf(os.Stderr, "  round: http %.0f/s, raw %.0f/s, ratio %.2f\n", httpRates[len(httpRates)-1], rawRates[len(rawRates)-1], httpRates[len(httpRates)-1]/rawRates[len(rawRates)-1])
	}
	// The round with the median ratio is reported, so its two rates and
	// its ratio belong together.
	order := make([]int, len(rawRates))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool {
		return httpRates[order[a]]/rawRates[order[a]] < httpRates[order[b]]/rawRates[order[b]]
	})
	m := order[len(order)/2]
	report(b, "annotations/s (64 clients, median round)", httpRates[m], rawRates[m], "ops/s", "raw_publish")
}

// BenchmarkGrades: images graded per second through HTTP (upload, object
// store, JetStream, dynamic batching, ONNX Runtime, grade event, reply)
// with 32 concurrent clients, against the service's batcher grading the
// same images in batches of the model's max_batch in this process
// (inference.Registry.Grade: decode and ONNX Runtime, no transport).
func BenchmarkGrades(b *testing.B) {
	ep := startStack(b)
	n := envInt("GRADELINE_BENCH_GRADES", 2000)
	const clients = 32
	images := make([][]byte, 16)
	for i := range images {
		images[i] = fixture.DigitPNG(i)
	}
	reg, err := inference.LoadRegistry(inference.RegistryOptions{ORTLib: os.Getenv("ONNXRUNTIME_LIB"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	model, ok := reg.Model("fashion")
	if !ok {
		b.Fatal("no fashion model")
	}
	// The baseline runs the service's own batcher (decode, one ONNX Runtime
	// call per max_batch chunk), without JetStream, the object store or HTTP.
	batch := model.Info().MaxBatch
	rawN := (n + batch - 1) / batch
	raw := parallel(b, 2, rawN, func(int) error {
		in := make([][]byte, batch)
		for i := range in {
			in[i] = images[i%len(images)]
		}
		_, err := reg.Grade(context.Background(), "fashion", in)
		return err
	})
	bodies := make([][]byte, len(images))
	ctypes := make([]string, len(images))
	for i, img := range images {
		var buf bytes.Buffer
		w := multipart.NewWriter(&buf)
		_ = w.WriteField("model", "fashion")
		fw, _ := w.CreateFormFile("image", "digit.png")
		_, _ = fw.Write(img)
		_ = w.Close()
		bodies[i], ctypes[i] = buf.Bytes(), w.FormDataContentType()
	}
	viaHTTP := parallel(b, clients, n, func(i int) error {
		k := i % len(bodies)
		code, out, err := fastPost(ep.HTTP+"/api/v1/grades", ctypes[k], bodies[k])
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("grade: %d %s", code, out)
		}
		return err
	})
	report(b, "grades/s (32 clients)", float64(n)/viaHTTP.Seconds(), float64(rawN*batch)/raw.Seconds(), "images/s", "raw_onnxruntime")
}

// BenchmarkIris loads rows through the event path (HTTP -> JetStream ->
// analytics -> ClickHouse), then compares the p50 latency of a range page
// and of the means over all rows through HTTP with the same queries run
// directly with clickhouse-go (package iris). Target ratio <= 1.3.
func BenchmarkIris(b *testing.B) {
	ep := startStack(b)
	total := envInt("GRADELINE_BENCH_IRIS_ROWS", 10_000_000)
	const perRequest = 50_000
	opts, err := clickhouse.ParseDSN(ep.ClickHouse)
	if err != nil {
		b.Fatal(err)
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	before := count(b, conn)

	// Load: requests of 50,000 rows (ingest splits them into events).
	species := bus.IrisSpecies
	requests := (total + perRequest - 1) / perRequest
	bodies := make([][]byte, 4)
	for k := range bodies {
		rows := make([]bus.IrisRow, perRequest)
		for i := range rows {
			j := i + k*perRequest
			rows[i] = bus.IrisRow{SepalLength: 4 + float64(j%40)/10, SepalWidth: 2 + float64(j%25)/10,
				PetalLength: 1 + float64(j%60)/10, PetalWidth: 0.1 + float64(j%25)/10, Species: species[j%3]}
		}
		bodies[k], _ = json.Marshal(map[string]any{"rows": rows})
	}
	start := time.Now()
	parallel(b, 4, requests, func(i int) error {
		code, out, err := post(ep.HTTP+"/api/v1/iris/measurements", "application/json", bodies[i%len(bodies)])
		if err == nil && code != http.StatusAccepted {
			err = fmt.Errorf("measurements: %d %s", code, out)
		}
		return err
	})
	accepted := time.Since(start)
	want := before + uint64(requests*perRequest)
	lastPrint := time.Now()
	for count(b, conn) < want {
		if time.Since(start) > 30*time.Minute {
			b.Fatalf("only %d of %d rows loaded after 30 minutes", count(b, conn), want)
		}
		if time.Since(lastPrint) > 10*time.Second {
			fmt.Fprintf(os.Stderr, "  loading iris rows: %d of %d\n", count(b, conn), want)
			lastPrint = time.Now()
		}
		time.Sleep(200 * time.Millisecond)
	}
	loaded := time.Since(start)
	rows := float64(requests * perRequest)
	fmt.Printf("%-34s %12.0f rows/s through HTTP+JetStream+ClickHouse (%d rows in %.1fs; accepted by the edge in %.1fs)\n",
		"iris load", rows/loaded.Seconds(), int(rows), loaded.Seconds(), accepted.Seconds())
	b.ReportMetric(rows/loaded.Seconds(), "rows/s_load")

	rangeQ := bus.IrisRangeQuery{IrisFilter: bus.IrisFilter{Lower: map[string]float64{"sepal_length": 5}, Upper: map[string]float64{"sepal_length": 6.5}},
		Page: 3, PerPage: 100, Sort: "petal_length"}
	meanQ := bus.IrisStatsQuery{Func: "mean"}
	rangeBody, _ := json.Marshal(map[string]any{"lower": rangeQ.Lower, "upper": rangeQ.Upper, "page": rangeQ.Page, "per_page": rangeQ.PerPage, "sort": rangeQ.Sort})
	cases := []struct {
		name   string
		http   func() error
		direct func() error
	}{
		{"iris range page p50 (ms)",
			func() error { return expect200(post(ep.HTTP+"/api/v1/iris/range", "application/json", rangeBody)) },
			func() error { _, err := iris.Range(context.Background(), conn, rangeQ); return err }},
		{"iris mean, all rows p50 (ms)",
			func() error {
				return expect200(post(ep.HTTP+"/api/v1/iris/stats/mean", "application/json", []byte(`{}`)))
			},
			func() error { _, err := iris.Stats(context.Background(), conn, meanQ); return err }},
	}
	runs := envInt("GRADELINE_BENCH_QUERY_RUNS", 31)
	for _, c := range cases {
		var viaHTTP, direct []time.Duration
		for range runs { // interleaved, so both see the same machine state
			d, err := timed(c.direct)
			if err != nil {
				b.Fatal(err)
			}
			direct = append(direct, d)
			h, err := timed(c.http)
			if err != nil {
				b.Fatal(err)
			}
			viaHTTP = append(viaHTTP, h)
		}
		report(b, c.name, ms(p50(viaHTTP)), ms(p50(direct)), "ms", "direct_clickhouse")
	}
}

func expect200(code int, out []byte, err error) error {
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("%d %s", code, out)
	}
	return err
}

func timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

func p50(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func count(b *testing.B, conn driver.Conn) uint64 {
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM "+iris.Table).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}
