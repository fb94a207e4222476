package localmongo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresBinEnv names the folder holding initdb and postgres (the Makefile
// points it at the one the install step prepares); when unset, Debian's
// /usr/lib/postgresql/15/bin is tried.
const PostgresBinEnv = "GRADELINE_POSTGRES_BIN"

// pgDatabase is the PostgreSQL database FerretDB keeps its schemas in
// (one schema per MongoDB database).
const pgDatabase = "ferretdb"

// runAs is the user PostgreSQL runs as when this process is root:
// postgres refuses to run as root.
const runAs = "nobody"

// postgresBin finds the folder with initdb and postgres.
func postgresBin() (string, error) {
	var tried []string
	cands := []string{os.Getenv(PostgresBinEnv), "/usr/lib/postgresql/15/bin"}
	for _, d := range cands {
		if d == "" {
			continue
		}
		tried = append(tried, d)
		if st, err := os.Stat(filepath.Join(d, "postgres")); err == nil && !st.IsDir() {
			return d, nil
		}
	}
	return "", fmt.Errorf("localmongo: no PostgreSQL 15 found (tried %s); run `make install` or set %s",
		strings.Join(tried, ", "), PostgresBinEnv)
}

// postgres is a PostgreSQL server run as a child process on loopback.
type postgres struct {
	cmd  *exec.Cmd
	port int
	done chan struct{}
	err  error // exit status, valid once done is closed
}

// pgOptions configure startPostgres.
type pgOptions struct {
	dir           string // data directory (created by initdb when empty)
	sharedBuffers string // e.g. "512MB"
	log           *slog.Logger
}

// startPostgres initialises dir when needed and runs PostgreSQL on a free
// loopback port until Stop. The child dies with this process (Pdeathsig),
// so a killed stack leaves no server holding the data directory.
func startPostgres(ctx context.Context, o pgOptions) (*postgres, error) {
	bin, err := postgresBin()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return nil, fmt.Errorf("localmongo: postgres dir: %w", err)
	}
	if cred != nil {
		if err := os.Chown(o.dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("localmongo: postgres dir: %w", err)
		}
	}
	if err := os.Chmod(o.dir, 0o700); err != nil {
		return nil, fmt.Errorf("localmongo: postgres dir: %w", err)
	}
	logPath := filepath.Join(filepath.Dir(o.dir), "postgres.log")
	if _, err := os.Stat(filepath.Join(o.dir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		o.log.Info("initialising PostgreSQL", "dir", o.dir)
		// FerretDB needs UTF8 and a C-like collation.
		out, err := pgCommand(ctx, bin, "initdb", cred, "-D", o.dir, "-U", "postgres", "--auth=trust",
			"-E", "UTF8", "--no-locale", "--no-sync").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("localmongo: initdb %s: %w: %s", o.dir, err, lastLines(string(out), 5))
		}
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("localmongo: postgres log: %w", err)
	}
	defer logf.Close()
	if err := waitPreviousServer(ctx, o.dir, o.log, previousServerWait); err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		args := []string{"-D", o.dir, "-p", strconv.Itoa(port),
			"-c", "listen_addresses=127.0.0.1",
			// No Unix socket: its path would need a folder the server user can
			// write, and every client here uses TCP.
			"-c", "unix_socket_directories=",
			"-c", "jit=off",
			"-c", "shared_buffers=" + o.sharedBuffers,
			"-c", "max_connections=200",
			"-c", "logging_collector=off",
			// Checkpoints every 30 s (the minimum; default 5 min) and the
			// background writer keep few buffers dirty, so the checkpoint of
			// a fast shutdown is short: after a heavy load it took 2 s of a
			// clean stop's 3.
			"-c", "checkpoint_timeout=30s",
			"-c", "bgwriter_lru_maxpages=1000",
		}
		cmd := pgCommand(context.Background(), bin, "postgres", cred, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr.Pdeathsig = syscall.SIGINT
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("localmongo: start postgres: %w", err)
		}
		pg := &postgres{cmd: cmd, port: port, done: make(chan struct{})}
		go func() { pg.err = cmd.Wait(); close(pg.done) }()
		if lastErr = pg.waitReady(ctx); lastErr == nil {
			return pg, nil
		}
		pg.stop()
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("localmongo: postgres did not start: %w (see %s)", lastErr, logPath)
}

// previousServerWait bounds how long a start waits for the server of the
// previous run to finish shutting down.
const previousServerWait = 60 * time.Second

// waitPreviousServer waits until the PostgreSQL server that dir's
// postmaster.pid names has exited. A stack killed with -9 leaves its
// server to Pdeathsig's SIGINT, and that fast shutdown (a checkpoint of
// what the load wrote) can outlast the restart; PostgreSQL refuses a data
// directory whose lock file names a live server, so starting at once
// failed every attempt (seen in TestCrashesLoseAndDoubleNothing). A pid
// that is no postgres process any more, or a wait past limit, is left to
// PostgreSQL's own check, which says what is wrong.
func waitPreviousServer(ctx context.Context, dir string, log *slog.Logger, limit time.Duration) error {
	data, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return nil // none: the last server stopped cleanly, or never ran
	}
	first, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return nil
	}
	deadline := time.Now().Add(limit)
	for said := false; isPostgres(pid); said = true {
		if !said {
			log.Info("waiting for the PostgreSQL server of the previous run to finish shutting down", "pid", pid, "dir", dir)
		}
		if time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// isPostgres reports whether process pid is a running PostgreSQL server
// (not a zombie waiting to be reaped).
func isPostgres(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) state ...": comm may hold spaces and parentheses.
	s := string(stat)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open || len(s) < end+3 {
		return false
	}
	return s[open+1:end] == "postgres" && s[end+2] != 'Z'
}

// pgCommand runs a PostgreSQL program, as runAs when this process is root.
func pgCommand(ctx context.Context, bin, name string, cred *syscall.Credential, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
	// libpq and friends when the packages were extracted, not installed.
	if real, err := filepath.EvalSymlinks(bin); err == nil {
		bin = real
	}
	lib := filepath.Join(bin, "..", "..", "..", "x86_64-linux-gnu")
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+lib+":"+os.Getenv("LD_LIBRARY_PATH"), "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cred != nil {
		cmd.SysProcAttr.Credential = cred
		// The data directory may sit below folders only root may enter (a
		// test's 0700 temporary folder, /root): searching them is all the
		// server needs, and the only privilege it keeps.
		cmd.SysProcAttr.AmbientCaps = []uintptr{capDACReadSearch}
		cmd.Dir = "/"
	}
	return cmd
}

// capDACReadSearch is CAP_DAC_READ_SEARCH (linux/capability.h).
const capDACReadSearch = 2

// credential is the user PostgreSQL runs as: nil when this process is not
// root (it runs as this user).
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(runAs)
	if err != nil {
		return nil, fmt.Errorf("localmongo: PostgreSQL refuses to run as root and user %q is missing: %w", runAs, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: false, Groups: []uint32{}}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("localmongo: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// url is the connection URL of database db. plan_cache_mode: FerretDB
// passes field names as bind parameters, and a cached generic plan cannot
// match the expression indexes, so every query is planned with its values.
func (pg *postgres) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable&plan_cache_mode=force_custom_plan", pg.port, db)
}

// waitReady waits until the server answers and the FerretDB database exists.
func (pg *postgres) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-pg.done:
			return fmt.Errorf("postgres exited: %v", pg.err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, pg.url("postgres"))
		if err == nil {
			err = ensureDatabase(cctx, conn, pgDatabase)
			_ = conn.Close(cctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not ready after 60s: %w", last)
}

func ensureDatabase(ctx context.Context, conn *pgx.Conn, name string) error {
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname = $1`, name).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	_, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return err
}

// stop asks for a fast shutdown (SIGINT: abort transactions, checkpoint)
// and waits for it; past 30 s the server is killed.
func (pg *postgres) stop() {
	if pg == nil || pg.cmd.Process == nil {
		return
	}
	_ = pg.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-pg.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-pg.cmd.Process.Pid, syscall.SIGKILL)
		<-pg.done
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// defaultSharedBuffers sizes PostgreSQL's cache from the machine's memory:
// an eighth of it, between 128 MB and 2 GB (a million annotations take
// about 800 MB of table and indexes).
func defaultSharedBuffers() string {
	mb := int64(128)
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
					mb = kb / 1024 / 8
				}
			}
		}
	}
	mb = max(128, min(mb, 2048))
	return strconv.FormatInt(mb, 10) + "MB"
}
