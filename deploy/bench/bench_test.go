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

	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/local"
)

// stopStack stops the stack a benchmark left running when it failed.
var (
	stopStack = func() {}
	token     string
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopStack()
	os.Exit(code)
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

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// measureIris loads rows through the event path (HTTP -> JetStream ->
// analytics -> ClickHouse), then compares the p50 latency of a range page
// and of the means over all rows through HTTP with the same queries run
// directly with clickhouse-go (package iris). Target ratio <= 1.3.
func measureIris(b *testing.B, ctx context.Context, base, chDSN string) []row {
	total := envInt("GRADELINE_BENCH_IRIS_ROWS", 10_000_000)
	const perRequest = 50_000
	opts, err := clickhouse.ParseDSN(chDSN)
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
		code, out, err := post(base+"/api/v1/iris/measurements", "application/json", bodies[i%len(bodies)])
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
	fmt.Printf("  iris load: %.0f rows/s through HTTP+JetStream+ClickHouse (%d rows in %.1fs; accepted by the edge in %.1fs)\n",
		rows/loaded.Seconds(), int(rows), loaded.Seconds(), accepted.Seconds())
	out := []row{{What: fmt.Sprintf("iris rows loaded/s through HTTP → JetStream → analytics → ClickHouse (%s rows, 4 clients)", withCommas(rows)),
		Measured: rate(rows / loaded.Seconds()), Baseline: fmt.Sprintf("accepted by the edge in %.1f s, stored in %.1f s", accepted.Seconds(), loaded.Seconds())}}

	rangeQ := bus.IrisRangeQuery{IrisFilter: bus.IrisFilter{Lower: map[string]float64{"sepal_length": 5}, Upper: map[string]float64{"sepal_length": 6.5}},
		Page: 3, PerPage: 100, Sort: "petal_length"}
	meanQ := bus.IrisStatsQuery{Func: "mean"}
	rangeBody, _ := json.Marshal(map[string]any{"lower": rangeQ.Lower, "upper": rangeQ.Upper, "page": rangeQ.Page, "per_page": rangeQ.PerPage, "sort": rangeQ.Sort})
	cases := []struct {
		name   string
		http   func() error
		direct func() error
	}{
		{"iris range, one page of 100, p50",
			func() error { return expect200(post(base+"/api/v1/iris/range", "application/json", rangeBody)) },
			func() error { _, err := iris.Range(ctx, conn, rangeQ); return err }},
		{"iris mean over all rows, p50",
			func() error {
				return expect200(post(base+"/api/v1/iris/stats/mean", "application/json", []byte(`{}`)))
			},
			func() error { _, err := iris.Stats(ctx, conn, meanQ); return err }},
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
		h, d := ms(p50(viaHTTP)), ms(p50(direct))
		fmt.Printf("  %s: %.1f ms through HTTP vs %.1f ms direct\n", c.name, h, d)
		out = append(out, row{What: fmt.Sprintf("%s of %d", c.name, runs), Measured: fmt.Sprintf("%.1f ms through HTTP", h),
			Baseline: fmt.Sprintf("%.1f ms same SQL with clickhouse-go", d), Ratio: fmt.Sprintf("%.2f", h/d), Target: "≤ 1.3", Met: met(h/d <= 1.3)})
	}
	return out
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
