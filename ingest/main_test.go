package ingest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/annotator"
	"github.com/gradeline/gradeline/annotator/localmongo"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/ingest"
)

// One embedded NATS, one embedded FerretDB and the real annotator serve
// every test; each test starts its own ingest server (own users database,
// own metrics registry).
var (
	natsURL  string
	mongoURI string
	testDir  string
	quiet    = slog.New(slog.DiscardHandler)
	dbSeq    atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	testDir, err = os.MkdirTemp("", "ingest-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(testDir)
	ns, err := natsserver.Start(natsserver.Config{Dir: filepath.Join(testDir, "nats"), Setup: &bus.TopologyOptions{}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedded NATS:", err)
		return 1
	}
	defer ns.Shutdown()
	natsURL = ns.ClientURL()
	ctx := context.Background()
	ms, err := localmongo.Start(ctx, localmongo.Options{Dir: filepath.Join(testDir, "mongo")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedded FerretDB:", err)
		return 1
	}
	defer ms.Close()
	mongoURI = ms.URI()

	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var runErr error
	go func() {
		defer close(done)
		runErr = annotator.Run(actx, annotator.Config{NATSURL: natsURL, MongoURI: mongoURI, Database: "gradeline_test",
			Logger: quiet, Registerer: prometheus.NewRegistry()})
	}()
	defer func() {
		cancel()
		<-done
	}()
	if err := waitService(bus.SvcAnnotationsList, bus.AnnotationsQuery{Page: 1, PerPage: 1}, done); err != nil {
		fmt.Fprintln(os.Stderr, "annotator:", err, runErr)
		return 1
	}
	defer func() {
		for i := len(stopServices) - 1; i >= 0; i-- {
			stopServices[i]()
		}
	}()
	return m.Run()
}

// stopServices stops the real services tests started lazily.
var stopServices []func()

// startService runs a real service on the shared NATS until the tests end
// and waits until it answers on subject.
func startService(name string, run func(context.Context) error, subject string, req any) error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var runErr error
	go func() {
		defer close(done)
		runErr = run(ctx)
	}()
	stopServices = append(stopServices, func() {
		cancel()
		<-done
	})
	if err := waitService(subject, req, done); err != nil {
		return fmt.Errorf("%s: %w (Run returned: %v)", name, err, runErr)
	}
	return nil
}

// waitService waits until a query service answers on subject.
func waitService(subject string, req any, exited <-chan struct{}) error {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := bus.Request[json.RawMessage](ctx, nc, subject, req)
		cancel()
		if err == nil || !errors.Is(err, bus.ErrUnavailable) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer on %s: %w", subject, err)
		}
		select {
		case <-exited:
			return fmt.Errorf("the service exited before answering on %s", subject)
		default:
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var secret = []byte("0123456789abcdef0123456789abcdef-test-secret")

type testServer struct {
	*ingest.Server
	URL string
	Reg *prometheus.Registry
	Cfg ingest.Config
}

// startIngest runs an ingest server on a loopback port for the test.
// testConfig is an edge on the test's NATS and store, with a database
// of its own.
func testConfig() ingest.Config {
	return ingest.Config{
		NATSURL: natsURL, MongoURI: mongoURI, Database: fmt.Sprintf("ingest_test_%d", dbSeq.Add(1)),
		JWTSecret: secret, SignupCode: "letmein", Logger: quiet, Registerer: prometheus.NewRegistry(), GradeWait: 20 * time.Second,
	}
}

func startIngest(t testing.TB, mutate ...func(*ingest.Config)) *testServer {
	t.Helper()
	cfg := testConfig()
	for _, f := range mutate {
		f(&cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveIngest(t, cfg, ln)
}

// serveIngest serves an edge with cfg on ln until the test ends.
func serveIngest(t testing.TB, cfg ingest.Config, ln net.Listener) *testServer {
	t.Helper()
	srv, err := ingest.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("ingest.New: %v", err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Shutdown(10 * time.Second)
		<-served
		srv.Close()
	})
	return &testServer{Server: srv, URL: "http://" + ln.Addr().String(), Reg: cfg.Registerer.(*prometheus.Registry), Cfg: cfg}
}

// client is an HTTP client bound to a server, optionally with a token.
type client struct {
	t     testing.TB
	base  string
	token string
	hc    *http.Client
}

func (s *testServer) client(t testing.TB) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, base: s.URL, hc: &http.Client{Jar: jar, Timeout: 60 * time.Second}}
}

type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into a generic map, failing the test if it is not an object.
func (r response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("status %d: body is not a JSON object: %v: %q", r.Status, err, truncate(r.Body))
	}
	return m
}

func truncate(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "..."
	}
	return string(b)
}

func (c *client) do(method, path string, body io.Reader, header map[string]string) response {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if c.token != "" && req.Header.Get("Authorization") == "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		c.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{Status: res.StatusCode, Header: res.Header, Body: data}
}

// json sends v (a string is sent verbatim) as application/json.
func (c *client) json(method, path string, v any) response {
	c.t.Helper()
	var body []byte
	switch b := v.(type) {
	case nil:
	case string:
		body = []byte(b)
	case []byte:
		body = b
	default:
		var err error
		if body, err = json.Marshal(v); err != nil {
			c.t.Fatal(err)
		}
	}
	return c.do(method, path, bytes.NewReader(body), map[string]string{"Content-Type": "application/json"})
}

func (c *client) form(path string, values map[string]string) response {
	c.t.Helper()
	var parts []string
	for k, v := range values {
		parts = append(parts, urlEncode(k)+"="+urlEncode(v))
	}
	return c.do("POST", path, strings.NewReader(strings.Join(parts, "&")), map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
}

func urlEncode(s string) string {
	return strings.NewReplacer("%", "%25", "&", "%26", "=", "%3D", "+", "%2B", " ", "+", "@", "%40").Replace(s)
}

// filePart is one file of a multipart request.
type filePart struct {
	Field, Name string
	Data        []byte
}

func (c *client) multipart(method, path string, fields [][2]string, files ...filePart) response {
	c.t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	for _, f := range fields {
		if err := w.WriteField(f[0], f[1]); err != nil {
			c.t.Fatal(err)
		}
	}
	for _, f := range files {
		fw, err := w.CreateFormFile(f.Field, f.Name)
		if err != nil {
			c.t.Fatal(err)
		}
		_, _ = fw.Write(f.Data)
	}
	_ = w.Close()
	return c.do(method, path, &buf, map[string]string{"Content-Type": w.FormDataContentType()})
}

var userSeq atomic.Int64

// newUser registers a fresh user and returns a client holding its token.
func (s *testServer) newUser(t testing.TB) (*client, string) {
	t.Helper()
	name := fmt.Sprintf("user%d_%d", time.Now().UnixNano()%1e6, userSeq.Add(1))
	c := s.client(t)
	r := c.json("POST", "/api/v1/auth/register", map[string]string{"username": name, "password": "correct horse", "signupCode": s.Cfg.SignupCode})
	if r.Status != http.StatusCreated {
		t.Fatalf("register %s: %d %s", name, r.Status, r.Body)
	}
	c.token = r.JSON(t)["token"].(string)
	return c, name
}

// expectError checks status and that the body is the error JSON; it
// returns the details joined for substring checks.
func expectError(t *testing.T, r response, status int) string {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, truncate(r.Body))
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("error Content-Type %q, want application/json", ct)
	}
	m := r.JSON(t)
	if code, ok := m["code"].(float64); !ok || int(code) != status {
		t.Fatalf("error body code %v, want %d: %s", m["code"], status, r.Body)
	}
	msg, ok := m["message"].(string)
	if !ok || msg == "" {
		t.Fatalf("error body without message: %s", r.Body)
	}
	var details []string
	if d, ok := m["details"].([]any); ok {
		for _, x := range d {
			details = append(details, fmt.Sprint(x))
		}
	}
	return msg + " | " + strings.Join(details, " | ")
}

// eventually polls f until it returns true or the deadline passes.
func eventually(t *testing.T, what string, timeout time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serviceOnce starts a shared real service the first time a test needs it.
type serviceOnce struct {
	once sync.Once
	err  error
}
