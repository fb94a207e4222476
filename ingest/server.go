package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/recover"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/fasthttp"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest/internal/auth"
)

// Server is the HTTP edge: a Fiber app wired to NATS JetStream (events,
// object store, query services) and MongoDB (users).
type Server struct {
	cfg Config
	log *slog.Logger
	app *fiber.App
	// writes marks each user's last accepted events for read-your-writes.
	writes writeMarks // each user's last accepted events, for read-your-writes

	nc     *nats.Conn
	js     jetstream.JetStream
	images jetstream.ObjectStore
	idem   jetstream.KeyValue // first answers by Idempotency-Key
	mongo  *mongo.Client
	users  *auth.Users

	tokens   *auth.Tokens
	hasher   *auth.Hasher
	throttle *auth.Throttle
	revoked  *auth.Revocations
	metrics  *metrics
	grades   *gradeWaiters
	models   *modelCache
	oip      *oipStatsTable // the Open Inference Protocol's statistics
	// secrets sign callbacks; callbacks delivers them in the background
	// (stopCallbacks ends it, callbacksDone is closed when it has).
	secrets       *webhookSecrets
	stopCallbacks context.CancelFunc
	callbacksDone chan struct{}
	// eventStreams counts the open GET /api/v1/grades/events streams.
	eventStreams atomic.Int64

	routes   []route
	routeSet map[string]struct{}
	openapi  []byte

	closeOnce sync.Once
	// stopping is closed when Shutdown begins: responses then carry
	// Connection: close, /readyz answers 503, grade waits answer 202.
	stopping chan struct{}
	stopOnce sync.Once
	lnMu     sync.Mutex
	ln       *onceListener
	// conns holds the open client connections (*edgeConn) and their
	// fasthttp state.
	conns sync.Map
	// storageProblem names why the event store cannot store now (a full
	// disk), for the 503 of a failed publish; nil when not known here.
	storageProblem atomic.Pointer[func() string]
}

// SetStorageProblem gives the edge a way to say why the event store
// refuses events (the local stack's guard of the embedded server's disk).
func (s *Server) SetStorageProblem(f func() string) { s.storageProblem.Store(&f) }

// storageProblemText is why the event store refuses events now, or "".
func (s *Server) storageProblemText() string {
	if f := s.storageProblem.Load(); f != nil {
		return (*f)()
	}
	return ""
}

// ShutdownTimeout bounds how long Shutdown waits for in-flight requests.
const ShutdownTimeout = 10 * time.Second

// drainGrace is how long connections stay open after the listener closed:
// a keep-alive client may already have sent its next request on an idle
// connection, and it gets an answer (with Connection: close) instead of EOF.
const drainGrace = time.Second

// onceListener lets Shutdown close the listener first (stop accepting)
// while fasthttp closes it again later: the second Close must not fail,
// or fasthttp would skip closing idle connections.
//
// Closing a listening socket resets the connections still in the kernel's
// accept queue: clients that connected and sent their request before the
// shutdown, and got no answer. stopAccepting takes them from the queue
// first and hands them to the server's accept loop before it sees the
// close.
type onceListener struct {
	net.Listener
	once sync.Once

	mu     sync.Mutex
	queued []net.Conn // taken from the accept queue by stopAccepting
}

func (l *onceListener) Close() error {
	var err error
	l.once.Do(func() { err = l.Listener.Close() })
	return err
}

// stopAccepting takes the connections the kernel already accepted, then
// closes the listener.
func (l *onceListener) stopAccepting() {
	queued := acceptQueued(l.Listener)
	l.mu.Lock()
	l.queued = append(l.queued, queued...)
	l.mu.Unlock()
	_ = l.Close()
}

// Accept returns the connections stopAccepting took before the error that
// tells the server the listener is closed.
func (l *onceListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		return &edgeConn{Conn: c}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queued) > 0 {
		c, l.queued = l.queued[0], l.queued[1:]
		return &edgeConn{Conn: c}, nil
	}
	return nil, err
}

// edgeConn is a client connection that records whether its client has
// sent anything, for Shutdown.
type edgeConn struct {
	net.Conn
	heard atomic.Bool
}

func (c *edgeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.heard.Load() {
		c.heard.Store(true)
	}
	return n, err
}

// silent reports a connection whose client has sent nothing, and has
// nothing waiting to be read.
func (c *edgeConn) silent() bool { return !c.heard.Load() && !hasPending(c.Conn) }

// New connects to NATS and MongoDB, waits for the streams the operator
// creates (bus.EnsureService), opens its key-value buckets, subscribes
// to grade results and builds the Fiber app. It does not listen: use Run,
// or App().Listener / App().Test.
func New(ctx context.Context, cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger.With("service", "ingest"),
		grades:   newGradeWaiters(),
		stopping: make(chan struct{}),
	}
	if s.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	if s.hasher, err = auth.NewHasher(max(2, runtime.NumCPU())); err != nil {
		return nil, fmt.Errorf("ingest: hasher: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()

	s.nc, s.js, err = bus.Connect(ctx, cfg.NATSURL, "ingest", s.log)
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if err := bus.EnsureService(ctx, s.js, bus.UserIngest, bus.TopologyOptions{Logger: s.log}); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if s.images, err = bus.ImageStore(ctx, s.js); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if s.idem, err = bus.IdempotencyStore(ctx, s.js, cfg.Replicas); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if err := s.startAuthState(ctx); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if s.secrets, err = newWebhookSecrets(ctx, s.js, cfg.Replicas); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	s.models = newModelCache(5*time.Second, s.log)
	// One reader per server for all grade results; requests wait on it
	// by grade id.
	if err := s.grades.subscribe(ctx, s.js, s.log); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}

	s.mongo, err = mongo.Connect(options.Client().ApplyURI(cfg.MongoURI).
		SetServerSelectionTimeout(5 * time.Second).SetAppName("gradeline-ingest"))
	if err != nil {
		return nil, fmt.Errorf("ingest: mongo: %w", err)
	}
	ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if s.users, err = auth.OpenUsers(ictx, s.mongo.Database(cfg.Database)); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}

	if s.oip, err = newOIPStats(ctx, s.js, cfg.Replicas, s.log); err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	s.app = s.newApp()
	s.app.Use(oipPrefix, s.oipErrors) // the protocol's routes answer errors as {"error": ...}
	s.routes = s.routeTable()
	s.routeSet = map[string]struct{}{}
	for _, r := range s.routes {
		handlers := []fiber.Handler{}
		if r.Auth {
			handlers = append(handlers, s.authenticate)
		}
		if publishes(r) {
			handlers = append(handlers, s.idempotent)
		}
		handlers = append(handlers, r.Handler)
		s.app.Add(r.Method, r.Path, handlers...)
		s.routeSet[r.Method+" "+r.Path] = struct{}{}
		if r.Method == fiber.MethodGet { // HEAD answers wherever GET does
			s.app.Add(fiber.MethodHead, r.Path, handlers...)
			s.routeSet[fiber.MethodHead+" "+r.Path] = struct{}{}
		}
	}
	if s.openapi, err = s.buildOpenAPI(); err != nil {
		return nil, fmt.Errorf("ingest: openapi: %w", err)
	}
	s.startCallbacks()
	ok = true
	return s, nil
}

// newApp builds the Fiber app with the error handler and the middleware
// every route shares (request id and trace, access log, metrics, recover).
func (s *Server) newApp() *fiber.App {
	app := fiber.New(fiber.Config{
		AppName: "gradeline-ingest",
		// Fiber hands out strings that alias reused buffers; some values
		// outlive the request (metric labels, limiter keys), so copy them.
		Immutable:             true,
		BodyLimit:             int(max(s.cfg.MaxBodyBytes, maxAnnotationBody)),
		ErrorHandler:          s.handleError,
		DisableStartupMessage: true,
		ReadTimeout:           2 * time.Minute,
		WriteTimeout:          2 * time.Minute,
		IdleTimeout:           2 * time.Minute,
		ReadBufferSize:        16 << 10,
		JSONEncoder:           encodeJSON,
	})
	// Answers given while shutting down close their connection, so a
	// keep-alive client reconnects (to another replica) instead of sending
	// its next request into a connection about to close.
	app.Server().CloseOnShutdown = true
	app.Server().ConnState = func(c net.Conn, st fasthttp.ConnState) {
		if st == fasthttp.StateClosed || st == fasthttp.StateHijacked {
			s.conns.Delete(c)
		} else {
			s.conns.Store(c, st)
		}
	}
	app.Use(func(c *fiber.Ctx) error {
		err := c.Next()
		if s.isStopping() {
			c.Set(fiber.HeaderConnection, "close")
		}
		return err
	})
	app.Server().Handler = s.jsonForUnknownMethods(app, app.Server().Handler)
	app.Use(s.observe)
	app.Use(recover.New(recover.Config{EnableStackTrace: true, StackTraceHandler: func(c *fiber.Ctx, e any) {
		s.log.Error("panic in handler", "path", c.Path(), "panic", fmt.Sprint(e), "request_id", bus.RequestID(c.UserContext()))
	}}))
	return app
}

// App returns the Fiber application.
func (s *Server) App() *fiber.App { return s.app }

// Serve serves HTTP on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	ol := &onceListener{Listener: ln}
	s.lnMu.Lock()
	s.ln = ol
	s.lnMu.Unlock()
	// A Shutdown that began before the listener was set (it closes
	// stopping, then reads ln) found nothing to close: serving now would
	// never end.
	if s.isStopping() {
		return ol.Close()
	}
	return s.app.Listener(ol)
}

func (s *Server) isStopping() bool {
	select {
	case <-s.stopping:
		return true
	default:
		return false
	}
}

// busy reports whether a client has a request on its way or being
// answered: fasthttp counts a connection active from its accept, before
// its client has sent anything.
func (s *Server) busy() bool {
	busy := false
	s.conns.Range(func(c, st any) bool {
		ec, ok := c.(*edgeConn)
		busy = st == fasthttp.StateActive && (!ok || ec.heard.Load())
		return !busy
	})
	return busy
}

// closeSilent closes the connections whose client has sent nothing (a
// load balancer's spare connection, a client that connected and stalled):
// no request is in flight on them, and fasthttp would wait for them until
// the shutdown times out.
func (s *Server) closeSilent() {
	s.conns.Range(func(c, st any) bool {
		if ec, ok := c.(*edgeConn); ok && st == fasthttp.StateActive && ec.silent() {
			_ = ec.Close()
		}
		return true
	})
}

// drain waits until no connection has been busy for a moment, at most
// grace: requests arriving on open keep-alive connections are answered.
func (s *Server) drain(grace time.Duration) {
	const quiet = 100 * time.Millisecond
	end := time.Now().Add(grace)
	idleSince := time.Now()
	for time.Now().Before(end) {
		if s.busy() {
			idleSince = time.Now()
		} else if time.Since(idleSince) >= quiet {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Shutdown stops accepting connections, answers what clients already sent
// (requests in flight, and for drainGrace requests arriving on open
// keep-alive connections) with Connection: close, and waits up to timeout
// for in-flight requests. Grade requests waiting for a result answer 202
// with the grade's Location at once.
func (s *Server) Shutdown(timeout time.Duration) error {
	first := false
	s.stopOnce.Do(func() { close(s.stopping); first = true })
	if first {
		deadline := time.Now().Add(timeout)
		s.lnMu.Lock()
		ln := s.ln
		s.lnMu.Unlock()
		if ln != nil {
			ln.stopAccepting()
			s.drain(min(drainGrace, timeout/2))
			s.closeSilent()
		}
		timeout = time.Until(deadline)
	}
	return s.app.ShutdownWithTimeout(max(timeout, time.Millisecond))
}

// Close releases the NATS and MongoDB connections. Call after Shutdown.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		if s.stopCallbacks != nil {
			s.stopCallbacks()
			<-s.callbacksDone
		}
		s.grades.unsubscribe()
		if s.revoked != nil {
			s.revoked.Stop()
		}
		if s.oip != nil {
			// Counts whose merge failed would leave with the process.
			ctx, cancel := context.WithTimeout(context.Background(), oipStatsFlushTimeout)
			if err := s.oip.flush(ctx, 0); err != nil {
				s.log.Warn("OIP statistics not merged at close; they are lost", "err", err)
			}
			cancel()
		}
		if s.nc != nil {
			_ = s.nc.Drain()
			// Drain is asynchronous; wait briefly so published acks are not cut.
			deadline := time.Now().Add(5 * time.Second)
			for !s.nc.IsClosed() && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			s.nc.Close()
		}
		if s.mongo != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.mongo.Disconnect(ctx)
			cancel()
		}
	})
}

// Run serves the HTTP edge on cfg.Addr until ctx is cancelled, then drains
// in-flight requests and closes its connections.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("ingest: listen %s: %w", s.cfg.Addr, err)
	}
	s.log.Info("ingest listening", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ingest: serve: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("ingest shutting down")
	if err := s.Shutdown(ShutdownTimeout); err != nil {
		s.log.Warn("shutdown", "err", err)
	}
	<-errc
	return nil
}

// encodeJSON is Fiber's JSON encoder: encoding/json's bytes, written
// without reflection for the answer every graded image gets (a
// bus.Grade; about 2% of the stack's CPU per grade through reflection).
func encodeJSON(v any) ([]byte, error) {
	// Room for a grade with ten scores, so that it is written in one allocation.
	if b, ok := bus.AppendJSON(make([]byte, 0, 768), v); ok {
		return b, nil
	}
	return json.Marshal(v)
}
