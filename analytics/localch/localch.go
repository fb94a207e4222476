// Package localch serves the ClickHouse engine on loopback for the local
// stack and tests: it runs the project's launcher (gradeline-chdb, built by
// `make install` from launcher/launcher.c against libchdb), which opens the
// real native and HTTP protocols on 127.0.0.1 over a persistent data
// directory. The launcher dies with its parent, so no engine outlives the
// process that started it.
//
// It is one `default` user without a password: loopback only, never for
// production, where CLICKHOUSE_DSN names a real clickhouse-server.
package localch

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// EnvLauncher names the environment variable that locates the launcher
// when Options.Launcher is empty.
const EnvLauncher = "GRADELINE_CHDB_LAUNCHER"

// Options configure Start.
type Options struct {
	// Dir holds the engine's data; it survives a restart.
	Dir string
	// Launcher is the path of gradeline-chdb; empty means $GRADELINE_CHDB_LAUNCHER.
	Launcher string
	// Log receives the engine's own output at debug level (nil = discard).
	Log *slog.Logger
	// TCPPort (native protocol) and HTTPPort; 0 picks a free port. Pass
	// the ports of a previous Server to restart it at the same addresses.
	TCPPort, HTTPPort int
	// StartTimeout bounds the wait for /ping (default 60s).
	StartTimeout time.Duration
}

// Server is a running engine.
type Server struct {
	tcpPort, httpPort int
	log               *slog.Logger
	proc              *os.Process
	exited            chan struct{} // closed when the launcher exited
	waitErr           error
	tail              *tailBuffer
	closeOnce         sync.Once
}

// Start runs the launcher and returns once the engine answers /ping.
func Start(ctx context.Context, opt Options) (*Server, error) {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.StartTimeout <= 0 {
		opt.StartTimeout = 60 * time.Second
	}
	if opt.Dir == "" {
		return nil, errors.New("localch: Options.Dir is required")
	}
	launcher := opt.Launcher
	if launcher == "" {
		launcher = os.Getenv(EnvLauncher)
	}
	if launcher == "" {
		return nil, fmt.Errorf("localch: no ClickHouse launcher: set %s to the gradeline-chdb binary (run `make install` to build it into .cache/chdb)", EnvLauncher)
	}
	if st, err := os.Stat(launcher); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("localch: ClickHouse launcher %q (from %s) is missing or not executable; run `make install` to build it", launcher, EnvLauncher)
	}
	dir, err := filepath.Abs(opt.Dir)
	if err != nil {
		return nil, fmt.Errorf("localch: data dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("localch: data dir: %w", err)
	}
	tcpPort, httpPort := opt.TCPPort, opt.HTTPPort
	if tcpPort == 0 || httpPort == 0 {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		if tcpPort == 0 {
			tcpPort = ports[0]
		}
		if httpPort == 0 {
			httpPort = ports[1]
		}
	}
	s := &Server{tcpPort: tcpPort, httpPort: httpPort, log: opt.Log, exited: make(chan struct{}), tail: &tailBuffer{max: 20}}
	if err := s.spawn(launcher, dir); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx, opt.StartTimeout); err != nil {
		_ = s.Close()
		return nil, err
	}
	opt.Log.Debug("clickhouse engine ready", "dir", dir, "tcp", tcpPort, "http", httpPort)
	return s, nil
}

// spawn starts the launcher from a goroutine locked to its OS thread that
// stays alive until the child exits: Pdeathsig fires when the *thread* that
// forked the child ends, and the Go runtime may otherwise retire threads.
func (s *Server) spawn(launcher, dir string) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := exec.Command(launcher, dir, strconv.Itoa(s.tcpPort), strconv.Itoa(s.httpPort))
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		go s.pump(pr)
		if err := cmd.Start(); err != nil {
			pw.Close()
			started <- fmt.Errorf("localch: start %s: %w", launcher, err)
			return
		}
		s.proc = cmd.Process
		started <- nil
		s.waitErr = cmd.Wait()
		pw.Close()
		close(s.exited)
	}()
	return <-started
}

// pump forwards the engine's output to the log and keeps the last lines
// for error messages.
func (s *Server) pump(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		s.tail.add(line)
		s.log.Debug("clickhouse", "line", line)
	}
	_, _ = io.Copy(io.Discard, r)
}

func (s *Server) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.HTTPURL()+"/ping", nil)
		if resp, err := client.Do(req); err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.HasPrefix(string(body), "Ok.") {
				// HTTP starts after TCP, but check the native port too.
				if c, err := net.DialTimeout("tcp", s.tcpAddr(), time.Second); err == nil {
					c.Close()
					return nil
				}
			}
		}
		select {
		case <-s.exited:
			return fmt.Errorf("localch: engine exited during start (%v): %s", s.waitErr, s.tail.String())
		case <-ctx.Done():
			return fmt.Errorf("localch: engine did not answer /ping on %s: %w; last output: %s", s.HTTPURL(), ctx.Err(), s.tail.String())
		case <-tick.C:
		}
	}
}

func (s *Server) tcpAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.tcpPort)) }

// DSN is the clickhouse-go address of the native protocol, database default.
func (s *Server) DSN() string { return "clickhouse://" + s.tcpAddr() + "/default" }

// HTTPURL is the base URL of the HTTP interface (no trailing slash).
func (s *Server) HTTPURL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.httpPort))
}

// TCPPort and HTTPPort return the ports, to restart at the same addresses.
func (s *Server) TCPPort() int  { return s.tcpPort }
func (s *Server) HTTPPort() int { return s.httpPort }

// Done is closed when the engine process has exited, by Close or by a crash.
func (s *Server) Done() <-chan struct{} { return s.exited }

// Close stops the engine (SIGTERM, then SIGKILL after 10s) and returns once
// the process is gone, so its ports and data directory can be reused. It
// always returns nil; the error is for io.Closer.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		select {
		case <-s.exited:
			return
		default:
		}
		_ = s.proc.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			_ = s.proc.Kill()
			<-s.exited
		}
	})
	return nil
}

// freePorts asks the kernel for n distinct free loopback ports.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("localch: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

type tailBuffer struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (t *tailBuffer) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(no output)"
	}
	return strings.Join(t.lines, " | ")
}
