package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/deploy/internal/mongouri"
	"github.com/gradeline/gradeline/deploy/internal/natscreds"
	"github.com/gradeline/gradeline/deploy/local"
)

// A runningStack is the local stack under measurement: the shipped binary in
// a process of its own (make bench), or local.Run in this process (make
// profile, so runtime/pprof sees it). Either way it is configured by
// local.ConfigFromEnv from the same environment, as `make run` is.
type runningStack struct {
	ep      local.Endpoints
	dataDir string
	logPath string
	// stop stops the stack as SIGTERM does and returns when it has exited.
	stop func() error
}

// repoRoot is the folder of go.work above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.work not found above the working directory")
		}
		dir = parent
	}
}

// buildLocal builds the binary `make run` runs into out.
func buildLocal(ctx context.Context, root, out string) (string, error) {
	bin := filepath.Join(out, "gradeline-local")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./deploy/cmd/gradeline-local")
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build gradeline-local: %w\n%s", err, msg)
	}
	return bin, nil
}

// freeAddr returns a loopback address with a port free at the moment.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// stackEnv is the environment of the stack: this process's, with the data
// directory and free ports, and without a log level (the shipped default).
func stackEnv(dataDir, httpAddr, adminAddr string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case admin.EnvLogLevel, "GRADELINE_DATA_DIR", "GRADELINE_HTTP_ADDR", "GRADELINE_ADMIN_ADDR":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GRADELINE_DATA_DIR="+dataDir, "GRADELINE_HTTP_ADDR="+httpAddr, "GRADELINE_ADMIN_ADDR="+adminAddr)
}

// startShipped runs bin on dataDir with its output appended to logPath and
// returns once the admin address answers /readyz and the banner is out,
// with the time to /readyz.
func startShipped(bin, dataDir, logPath string) (*runningStack, time.Duration, error) {
	p, ready, err := startBinary(bin, dataDir, logPath)
	if err != nil {
		return nil, 0, err
	}
	st := p.st
	// The banner follows once every service answers on the bus; it names
	// the ClickHouse DSN.
	for st.ep.ClickHouse == "" {
		st.ep.ClickHouse = bannerValue(logPath, p.logFrom, "ClickHouse")
		if st.ep.ClickHouse != "" {
			break
		}
		select {
		case err := <-p.exited:
			return nil, 0, fmt.Errorf("the stack exited before it was up (%v); its log: %s", err, logPath)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if st.ep.NATSAdmin, err = natscreds.AdminURL(dataDir); err != nil {
		_ = st.stop()
		return nil, 0, err
	}
	if st.ep.Mongo, err = mongouri.Read(dataDir); err != nil {
		_ = st.stop()
		return nil, 0, err
	}
	return st, ready, nil
}

// A process is a stack binary started by startBinary.
type process struct {
	st      *runningStack // its HTTP and admin endpoints filled in
	logFrom int64         // the log's size before this start
	exited  <-chan error
}

// startBinary runs bin, any revision's gradeline-local, on dataDir with its
// output appended to logPath, and returns once its admin address answers
// /readyz, with the time that took. It relies only on what every revision
// reads: GRADELINE_DATA_DIR, GRADELINE_HTTP_ADDR and GRADELINE_ADMIN_ADDR.
func startBinary(bin, dataDir, logPath string) (*process, time.Duration, error) {
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, 0, err
	}
	adminAddr, err := freeAddr()
	if err != nil {
		return nil, 0, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, err
	}
	// What the log held before is not this start's.
	var from int64
	if fi, err := logf.Stat(); err == nil {
		from = fi.Size()
	}
	cmd := exec.Command(bin)
	cmd.Env = stackEnv(dataDir, httpAddr, adminAddr)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	st := &runningStack{dataDir: dataDir, logPath: logPath}
	st.stop = func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			return errors.New("the stack did not stop within a minute of SIGTERM")
		}
	}
	readyz := "http://" + adminAddr + "/readyz"
	for {
		resp, err := http.Get(readyz)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			return nil, 0, fmt.Errorf("the stack exited before it was ready (%v); its log: %s", err, logPath)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Since(start) > 3*time.Minute {
			_ = st.stop()
			return nil, 0, fmt.Errorf("the stack not ready after 3 minutes; its log: %s", logPath)
		}
	}
	ready := time.Since(start)
	st.ep.HTTP, st.ep.Admin = "http://"+httpAddr, "http://"+adminAddr
	return &process{st: st, logFrom: from, exited: exited}, ready, nil
}

// bannerValue returns the value the banner printed after name, from the
// log's part after offset from.
func bannerValue(logPath string, from int64, name string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return ""
	}
	var v string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == name {
			v = fields[1]
		}
	}
	return v
}

// startInProcess runs the stack in this process (for runtime/pprof) with
// the configuration ConfigFromEnv reads from the same environment the
// binary gets; its log, in the same format, goes to logPath.
func startInProcess(dataDir, logPath string) (*runningStack, time.Duration, error) {
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, 0, err
	}
	adminAddr, err := freeAddr()
	if err != nil {
		return nil, 0, err
	}
	env := map[string]string{}
	for _, kv := range stackEnv(dataDir, httpAddr, adminAddr) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, err
	}
	// The logger is the one ConfigFromEnv builds for the binary on stderr,
	// built while stderr is the log file, so its cost is in the profile.
	stderr := os.Stderr
	os.Stderr = logf
	cfg, err := local.ConfigFromEnv(func(k string) string { return env[k] })
	os.Stderr = stderr
	if err != nil {
		logf.Close()
		return nil, 0, err
	}
	local.SetGC(func(k string) string { return env[k] }) // as main does
	ready := make(chan local.Endpoints, 1)
	cfg.OnReady = func(ep local.Endpoints) { ready <- ep }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- local.Run(ctx, cfg); logf.Close() }()
	select {
	case ep := <-ready:
		return &runningStack{ep: ep, dataDir: dataDir, logPath: logPath,
			stop: func() error { cancel(); return <-done }}, time.Since(start), nil
	case err := <-done:
		cancel()
		if err == nil {
			err = errors.New("the local stack stopped before it was ready")
		}
		return nil, 0, err
	}
}
