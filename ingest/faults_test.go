package ingest_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest"
)

// TestStoppedInferenceReplicaFailsNoSubmission reproduces issue 11: with one
// of two inference replicas stopped (here a member of the service's queue
// group that never answers), every grade submission is still accepted,
// because the edge answers from its last model list and refreshes it
// in the background.
func TestStoppedInferenceReplicaFailsNoSubmission(t *testing.T) {
	needInference(t)
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// A replica stopped with SIGSTOP: subscribed, receives its share of
	// requests, answers none.
	stuck, err := nc.QueueSubscribe(bus.SvcModelsList, micro.DefaultQueueGroup, func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	s := startIngest(t)
	// Every submission finds the list expired and refreshes it.
	ingest.SetModelListTTL(s.Server, time.Millisecond)
	c, _ := s.newUser(t)
	img := filePart{"image", "g.png", pngImage(t, 28, 28)}
	for i := range 12 {
		r := c.multipart("POST", "/api/v1/grades?wait=0", [][2]string{{"model", "fashion"}}, img)
		if r.Status != http.StatusAccepted {
			t.Fatalf("submission %d with a stopped replica: %d %s", i, r.Status, r.Body)
		}
		if r := c.do("GET", "/api/v1/models", nil, nil); r.Status != http.StatusOK {
			t.Fatalf("model list %d with a stopped replica: %d %s", i, r.Status, r.Body)
		}
		time.Sleep(20 * time.Millisecond) // let a background refresh start
	}
}

// TestShutdownAnswersRequestsInFlight reproduces issue 11: SIGINT closed the
// listener and the connections at once, so a client whose request was on
// its way got EOF. Requests whose first half was sent before the shutdown
// and the rest during it must be answered 2xx, with Connection: close.
func TestShutdownAnswersRequestsInFlight(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	const n = 6
	body, _ := json.Marshal(map[string]any{"annotation": map[string]any{"label": "in flight"}})
	half := len(body) / 2
	shuttingDown := make(chan struct{})
	var sent, wg sync.WaitGroup
	type result struct {
		status int
		conn   string
		err    error
	}
	results := make([]result, n)
	for i := range n {
		sent.Add(1)
		wg.Add(1)
		pr, pw := io.Pipe()
		go func() {
			_, _ = pw.Write(body[:half])
			sent.Done()
			<-shuttingDown
			_, _ = pw.Write(body[half:])
			_ = pw.Close()
		}()
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", s.URL+"/api/v1/annotations", pr)
			req.ContentLength = int64(len(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+c.token)
			// One connection per request, like separate clients.
			hc := &http.Client{Transport: &http.Transport{}}
			res, err := hc.Do(req)
			if err != nil {
				results[i] = result{err: err}
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			// Go's client moves "Connection: close" into res.Close.
			conn := res.Header.Get("Connection")
			if res.Close {
				conn = "close"
			}
			results[i] = result{status: res.StatusCode, conn: conn}
		}()
	}
	sent.Wait()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ingest.ShutdownTimeout) }()
	eventually(t, "shutdown begun", 10*time.Second, func() bool { return ingest.IsStopping(s.Server) })
	close(shuttingDown)
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for i, r := range results {
		if r.err != nil || r.status != http.StatusAccepted || r.conn != "close" {
			t.Errorf("request %d in flight at shutdown: status %d, Connection %q, err %v", i, r.status, r.conn, r.err)
		}
	}
	// The listener is closed: a new connection is refused, not accepted and dropped.
	if _, err := (&http.Client{Timeout: 5 * time.Second}).Get(s.URL + "/healthz"); err == nil {
		t.Fatal("a request after shutdown was answered")
	} else {
		t.Logf("after shutdown: %v", fmt.Sprint(err))
	}
}

// gatedListener stops taking connections from the accept queue once
// paused, until it is closed: connections made meanwhile wait in the
// kernel's queue, as they do on a busy server at the moment of shutdown.
type gatedListener struct {
	*net.TCPListener // SyscallConn too, as the edge's own listener has
	mu               sync.Mutex
	paused           bool
	waiting          chan struct{} // closed when Accept waits at the gate
	closed           chan struct{}
	once             sync.Once
	wait             sync.Once
}

func (g *gatedListener) Accept() (net.Conn, error) {
	g.mu.Lock()
	paused := g.paused
	g.mu.Unlock()
	if paused {
		g.wait.Do(func() { close(g.waiting) })
		<-g.closed
	}
	return g.TCPListener.Accept()
}

func (g *gatedListener) Close() error {
	g.once.Do(func() { close(g.closed) })
	return g.TCPListener.Close()
}

// TestShutdownAnswersQueuedConnections: requests from clients whose
// connection was still in the kernel's accept queue when the shutdown
// began are answered, not reset by the listener's close (the cause of a
// flaky TestShutdownAnswersRequestsInFlight under load in CI); and a
// connection whose client sent nothing does not make Shutdown time out.
func TestShutdownAnswersQueuedConnections(t *testing.T) {
	inner, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedListener{TCPListener: inner, waiting: make(chan struct{}), closed: make(chan struct{})}
	s := serveIngest(t, testConfig(), g)
	c, _ := s.newUser(t)

	// Pause, then push the accept loop out of its current Accept with one
	// connection, so that it waits at the gate.
	g.mu.Lock()
	g.paused = true
	g.mu.Unlock()
	push, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// push stays open and silent, as a load balancer's spare connection
	// does: it holds no request, and must not hold the shutdown.
	defer push.Close()
	<-g.waiting

	body := `{"annotation":{"label":"queued"}}`
	req := fmt.Sprintf("POST /api/v1/annotations HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", c.token, len(body), body)
	const n = 5
	conns := make([]net.Conn, n)
	for i := range conns {
		if conns[i], err = net.Dial("tcp", inner.Addr().String()); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
		if _, err := io.WriteString(conns[i], req); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ingest.ShutdownTimeout) }()
	for i, conn := range conns {
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Errorf("queued connection %d: %v", i, err)
			continue
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusAccepted || !res.Close {
			t.Errorf("queued connection %d: status %d, close %v; want 202 with Connection: close", i, res.StatusCode, res.Close)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestShutdownUnderKeepAliveLoad: clients reusing connections keep sending
// while the edge shuts down. Each gets its answer (2xx, the last with
// Connection: close) or a refused connection for a request it never got to
// send; no request that reached the edge ends in EOF or a reset.
func TestShutdownUnderKeepAliveLoad(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	body := []byte(`{"annotation":{"label":"keep-alive"}}`)
	const clients = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	var bad []error
	started := make(chan struct{}, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer hc.CloseIdleConnections()
			for i := 0; ; i++ {
				req, _ := http.NewRequest("POST", s.URL+"/api/v1/annotations", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+c.token)
				res, err := hc.Do(req)
				if i == 0 {
					started <- struct{}{}
				}
				mu.Lock()
				switch {
				case err == nil && res.StatusCode == http.StatusAccepted:
					ok++
				case err != nil && errors.Is(err, syscall.ECONNREFUSED):
					refused++ // never sent: the listener was closed
				case err != nil:
					bad = append(bad, err)
				default:
					bad = append(bad, fmt.Errorf("status %d", res.StatusCode))
				}
				mu.Unlock()
				if res != nil {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
				if err != nil {
					return
				}
			}
		}()
	}
	for range clients {
		<-started
	}
	time.Sleep(200 * time.Millisecond)
	if err := s.Shutdown(ingest.ShutdownTimeout); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	t.Logf("answered %d, refused before sending %d", ok, refused)
	if len(bad) > 0 {
		t.Fatalf("%d requests failed after reaching the edge, e.g. %v", len(bad), bad[0])
	}
}

// TestServeAfterShutdown: a Shutdown that comes before Serve (a stack
// stopping because another service failed at start) makes Serve return
// at once instead of serving forever.
func TestServeAfterShutdown(t *testing.T) {
	srv, err := ingest.New(context.Background(), testConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := srv.Shutdown(ingest.ShutdownTimeout); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-served:
	case <-time.After(time.Minute):
		t.Fatal("Serve after Shutdown is still serving")
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("the listener still accepts connections")
	}
}
