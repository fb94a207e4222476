// Package cluster proves the scale-out path on loopback: a three-node
// JetStream cluster with replicated streams that survives the loss of a
// node, and services running as several replicas on the same durable
// consumers.
package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/annotator"
	"github.com/gradeline/gradeline/annotator/localmongo"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/deploy/internal/fixture"
	"github.com/gradeline/gradeline/inference"
	"github.com/gradeline/gradeline/ingest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// natsCluster is three embedded servers joined by routes.
type natsCluster struct {
	t       *testing.T
	cfgs    []natsserver.Config
	servers []*server.Server
}

func startCluster(t *testing.T) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t}
	var routes []string
	clusterPorts := []int{freePort(t), freePort(t), freePort(t)}
	for _, p := range clusterPorts {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	for i := range 3 {
		c.cfgs = append(c.cfgs, natsserver.Config{
			Dir: t.TempDir(), Port: freePort(t), Name: fmt.Sprintf("n%d", i),
			ClusterName: "gradeline", ClusterPort: clusterPorts[i], Routes: routes,
		})
	}
	c.servers = make([]*server.Server, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); c.servers[i], errs[i] = natsserver.Start(c.cfgs[i]) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, s := range c.servers {
			if s != nil {
				s.Shutdown()
			}
		}
	})
	return c
}

func (c *natsCluster) url() string {
	var urls []string
	for _, cfg := range c.cfgs {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", cfg.Port))
	}
	return strings.Join(urls, ",")
}

func (c *natsCluster) kill(name string) {
	for i, s := range c.servers {
		if s != nil && s.Name() == name {
			s.Shutdown()
			s.WaitForShutdown()
			c.servers[i] = nil
			return
		}
	}
	c.t.Fatalf("no running server %q", name)
}

func (c *natsCluster) restart(name string) {
	for i, cfg := range c.cfgs {
		if cfg.Name == name {
			s, err := natsserver.Start(cfg)
			if err != nil {
				c.t.Fatal(err)
			}
			c.servers[i] = s
			return
		}
	}
}

// ensureTopology retries until the cluster has elected its leaders.
func ensureTopology(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, js, err := bus.Connect(context.Background(), url, "cluster-test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	deadline := time.Now().Add(90 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := bus.EnsureTopology(ctx, js, bus.TopologyOptions{Replicas: 3, MaxBytesScale: 0.05})
		cancel()
		if err == nil {
			return js
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster topology: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type edge struct {
	base, token string
}

func startEdge(t *testing.T, natsURL, mongoURI string, replicas int, gradeWait time.Duration) *edge {
	t.Helper()
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	srv, err := ingest.New(context.Background(), ingest.Config{
		NATSURL: natsURL, MongoURI: mongoURI, JWTSecret: secret, SignupCode: "cluster-code",
		Replicas: replicas, GradeWait: gradeWait, Logger: quiet, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { _ = srv.Shutdown(10 * time.Second); srv.Close() })
	e := &edge{base: "http://" + ln.Addr().String()}
	body, _ := json.Marshal(map[string]string{"username": "load", "password": "load test password", "signupCode": "cluster-code"})
	resp, err := http.Post(e.base+"/api/v1/auth/register", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var tok struct{ Token string }
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if tok.Token == "" {
		t.Fatalf("register: %d", resp.StatusCode)
	}
	e.token = tok.Token
	return e
}

var client = &http.Client{Timeout: 30 * time.Second}

func (e *edge) post(path, ctype string, body []byte) (int, []byte, time.Duration, error) {
	req, _ := http.NewRequest(http.MethodPost, e.base+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Authorization", "Bearer "+e.token)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, time.Since(start), err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, time.Since(start), nil
}

func startMongo(t *testing.T) (string, *mongo.Collection) {
	t.Helper()
	ms, err := localmongo.Start(context.Background(), localmongo.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ms.Close() })
	mc, err := mongo.Connect(options.Client().ApplyURI(ms.URI()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mc.Disconnect(context.Background()) })
	return ms.URI(), mc.Database(annotator.DefaultDatabase).Collection("annotations")
}

// startAnnotators runs n annotator replicas, each with its own registry so
// the test can tell how much work each did.
func startAnnotators(t *testing.T, n int, natsURL, mongoURI string, replicas int) []*prometheus.Registry {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var regs []*prometheus.Registry
	for range n {
		reg := prometheus.NewRegistry()
		regs = append(regs, reg)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := annotator.Run(ctx, annotator.Config{NATSURL: natsURL, MongoURI: mongoURI, Logger: quiet, Registerer: reg})
			if err != nil && ctx.Err() == nil {
				t.Errorf("annotator replica: %v", err)
			}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return regs
}

// counterSum adds up every sample of the named counter in reg.
func counterSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// load posts annotations from workers until stop is closed and records
// the accepted ids and every failure.
type load struct {
	mu         sync.Mutex
	accepted   []string
	failures   map[int]int
	slowest    time.Duration
	transportE []error
}

func (l *load) run(t *testing.T, e *edge, workers int, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body, _ := json.Marshal(map[string]any{"annotation": map[string]any{"n": i, "w": w}})
				code, out, took, err := e.post("/api/v1/annotations", "application/json", body)
				l.mu.Lock()
				l.slowest = max(l.slowest, took)
				switch {
				case err != nil:
					l.transportE = append(l.transportE, err)
				case code == http.StatusAccepted:
					var r struct{ ID string }
					_ = json.Unmarshal(out, &r)
					l.accepted = append(l.accepted, r.ID)
				default:
					l.failures[code]++
					if !json.Valid(out) {
						t.Errorf("error body is not JSON: %d %s", code, out)
					}
				}
				l.mu.Unlock()
				if code != http.StatusAccepted {
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	return &wg
}

func (l *load) snapshot() (int, map[int]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := map[int]int{}
	for k, v := range l.failures {
		f[k] = v
	}
	return len(l.accepted), f
}

// TestClusterSurvivesNodeLoss publishes through the edge into a
// three-node cluster with R3 streams, kills the stream leader mid-run and
// keeps publishing: every acknowledged annotation is stored exactly once.
// Then a second node is killed: with no quorum the edge answers errors
// promptly instead of hanging, and once a node returns it accepts again.
func TestClusterSurvivesNodeLoss(t *testing.T) {
	c := startCluster(t)
	js := ensureTopology(t, c.url())
	mongoURI, coll := startMongo(t)
	regs := startAnnotators(t, 2, c.url(), mongoURI, 3)
	e := startEdge(t, c.url(), mongoURI, 3, 0)

	l := &load{failures: map[int]int{}}
	stop := make(chan struct{})
	wg := l.run(t, e, 8, stop)
	eventually(t, time.Minute, "load accepted before the node loss", func() bool { n, _ := l.snapshot(); return n >= 200 })

	st, err := js.Stream(context.Background(), bus.StreamAnnotations)
	if err != nil {
		t.Fatal(err)
	}
	leader := st.CachedInfo().Cluster.Leader
	before, _ := l.snapshot()
	c.kill(leader)
	t.Logf("killed stream leader %s after %d accepted", leader, before)
	eventually(t, time.Minute, "load accepted after the node loss", func() bool { n, _ := l.snapshot(); return n >= before+300 })

	// Lose quorum: a second node goes. The edge must answer, not hang.
	var second string
	for _, s := range c.servers {
		if s != nil {
			second = s.Name()
			break
		}
	}
	c.kill(second)
	noQuorumAt, _ := l.snapshot()
	eventually(t, time.Minute, "errors while no quorum exists", func() bool {
		_, f := l.snapshot()
		return f[http.StatusServiceUnavailable] >= 8
	})
	c.restart(second)
	eventually(t, 2*time.Minute, "accepts again once quorum returns", func() bool { n, _ := l.snapshot(); return n >= noQuorumAt+100 })
	close(stop)
	wg.Wait()

	accepted, failures := l.snapshot()
	for code := range failures {
		if code != http.StatusServiceUnavailable {
			t.Fatalf("failures %v: only 503 is acceptable while the cluster is degraded", failures)
		}
	}
	if len(l.transportE) > 0 {
		t.Fatalf("requests without an answer (hangs or resets): %v", l.transportE[0])
	}
	// The edge bounds its wait for a PubAck; a client never waits much longer.
	if l.slowest > 20*time.Second {
		t.Fatalf("slowest request took %v", l.slowest)
	}
	t.Logf("accepted %d, failures %v, slowest %v", accepted, failures, l.slowest)

	// Every acknowledged annotation is stored, once.
	eventually(t, 2*time.Minute, "every accepted annotation stored", func() bool {
		n, err := coll.CountDocuments(context.Background(), bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: l.accepted}}}})
		return err == nil && n == int64(accepted)
	})
	distinct := map[string]bool{}
	for _, id := range l.accepted {
		if distinct[id] {
			t.Fatalf("id %s acknowledged twice", id)
		}
		distinct[id] = true
	}
	// Both replicas took part; together they wrote each document once.
	var written float64
	for i, reg := range regs {
		w := counterSum(t, reg, "gradeline_annotator_documents_written_total")
		if w == 0 {
			t.Fatalf("annotator replica %d wrote nothing: work was not shared", i)
		}
		written += w
	}
	total, _ := coll.CountDocuments(context.Background(), bson.D{})
	if written != float64(total) {
		t.Fatalf("replicas wrote %v documents in all, collection holds %d: some event was handled twice", written, total)
	}
}

// TestReplicasShareWork runs two inference and two annotator replicas on
// the same durable consumers: both grade, and every submitted image gets
// exactly one grade event and one grade record.
func TestReplicasShareWork(t *testing.T) {
	if os.Getenv("ONNXRUNTIME_LIB") == "" {
		t.Fatal("ONNXRUNTIME_LIB is not set: run the tests with `make test`")
	}
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), Setup: &bus.TopologyOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	url := ns.ClientURL()
	mongoURI, _ := startMongo(t)
	startAnnotators(t, 2, url, mongoURI, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var regs []*prometheus.Registry
	for range 2 {
		reg := prometheus.NewRegistry()
		regs = append(regs, reg)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := inference.Run(ctx, inference.Config{NATSURL: url, ORTLib: os.Getenv("ONNXRUNTIME_LIB"),
				MaxQueueDelay: 2 * time.Millisecond, Logger: quiet, Registerer: reg})
			if err != nil && ctx.Err() == nil {
				t.Errorf("inference replica: %v", err)
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()
	e := startEdge(t, url, mongoURI, 1, 30*time.Second)

	const n = 96
	ids := make([]string, n)
	var gwg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		gwg.Add(1)
		go func() {
			defer gwg.Done()
			var buf bytes.Buffer
			w := multipart.NewWriter(&buf)
			_ = w.WriteField("model", "digits")
			fw, _ := w.CreateFormFile("image", "d.png")
			_, _ = fw.Write(fixture.DigitPNG(i))
			_ = w.Close()
			code, out, _, err := e.post("/api/v1/grades", w.FormDataContentType(), buf.Bytes())
			if err != nil || code != http.StatusOK {
				errs <- fmt.Errorf("grade %d: %d %s %v", i, code, out, err)
				return
			}
			var g struct{ ID, Status string }
			_ = json.Unmarshal(out, &g)
			ids[i] = g.ID
		}()
	}
	gwg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A replica counts a grade just after publishing it, so the client may
	// hold the result a moment before the counter moves.
	var total float64
	eventually(t, 10*time.Second, "every grade counted", func() bool {
		total = 0
		for _, reg := range regs {
			total += counterSum(t, reg, "gradeline_inference_grades_completed_total")
		}
		return total >= n
	})
	for i, reg := range regs {
		if counterSum(t, reg, "gradeline_inference_grades_completed_total") == 0 {
			t.Fatalf("inference replica %d graded nothing: work was not shared", i)
		}
	}
	if total != n {
		t.Fatalf("replicas completed %v grades for %d images", total, n)
	}
	// The grade stream holds one event per image: none was graded twice.
	_, js, err := bus.Connect(context.Background(), url, "check", quiet)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(context.Background(), bus.StreamGrades)
	info, _ := st.Info(context.Background())
	if info.State.Msgs != n {
		t.Fatalf("GRADES holds %d events for %d images", info.State.Msgs, n)
	}
}
