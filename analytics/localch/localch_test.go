package localch_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/analytics/localch"
)

func launcher(t *testing.T) string {
	t.Helper()
	p := os.Getenv(localch.EnvLauncher)
	if p == "" {
		t.Fatalf("%s is not set: run `make install` and set it to .cache/chdb/gradeline-chdb", localch.EnvLauncher)
	}
	return p
}

func httpQuery(t *testing.T, s *localch.Server, q string) string {
	t.Helper()
	resp, err := http.Post(s.HTTPURL()+"/?query="+url.QueryEscape(q), "text/plain", nil)
	if err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("query %q: %s: %s", q, resp.Status, body)
	}
	return strings.TrimSpace(string(body))
}

// A restart on the same directory and ports keeps the data and addresses.
func TestStartRestartKeepsData(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := localch.Start(ctx, localch.Options{Dir: dir, Launcher: launcher(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.DSN(), "clickhouse://127.0.0.1:") || !strings.HasSuffix(s.DSN(), "/default") {
		t.Fatalf("DSN = %q", s.DSN())
	}
	httpQuery(t, s, "CREATE TABLE t (x UInt32) ENGINE = MergeTree ORDER BY x")
	httpQuery(t, s, "INSERT INTO t VALUES (1), (2), (3)")
	dsn, httpURL := s.DSN(), s.HTTPURL()
	select {
	case <-s.Done():
		t.Fatal("Done closed while the engine runs")
	default:
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	<-s.Done()
	if _, err := http.Get(httpURL + "/ping"); err == nil {
		t.Fatal("engine still answers after Close")
	}
	s2, err := localch.Start(ctx, localch.Options{Dir: dir, Launcher: launcher(t), TCPPort: s.TCPPort(), HTTPPort: s.HTTPPort()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.DSN() != dsn || s2.HTTPURL() != httpURL {
		t.Fatalf("restart moved: %s %s, want %s %s", s2.DSN(), s2.HTTPURL(), dsn, httpURL)
	}
	if got := httpQuery(t, s2, "SELECT sum(x) FROM t"); got != "6" {
		t.Fatalf("sum after restart = %q, want 6", got)
	}
}

func TestMissingLauncher(t *testing.T) {
	t.Setenv(localch.EnvLauncher, "")
	for _, l := range []string{"", filepath.Join(t.TempDir(), "nope")} {
		_, err := localch.Start(context.Background(), localch.Options{Dir: t.TempDir(), Launcher: l})
		if err == nil || !strings.Contains(err.Error(), localch.EnvLauncher) || !strings.Contains(err.Error(), "make install") {
			t.Errorf("launcher %q: err = %v, want one naming %s and make install", l, err, localch.EnvLauncher)
		}
	}
}

// The engine dies with the process that started it: a child test process
// starts an engine, is killed with SIGKILL (no cleanup runs), and the
// engine must stop answering.
func TestEngineDiesWithParent(t *testing.T) {
	if os.Getenv("LOCALCH_TEST_CHILD") != "" {
		return // the child's work is done in TestMain
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestEngineDiesWithParent$")
	cmd.Env = append(os.Environ(), "LOCALCH_TEST_CHILD="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		t.Fatalf("child: %v", err)
	}
	pingURL := strings.TrimSpace(strings.TrimPrefix(line, "HTTP "))
	if resp, err := http.Get(pingURL + "/ping"); err != nil {
		t.Fatalf("engine of child not reachable: %v", err)
	} else {
		resp.Body.Close()
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	for i := 0; ; i++ {
		resp, err := http.Get(pingURL + "/ping")
		if err != nil {
			return // gone
		}
		resp.Body.Close()
		if i == 200 {
			t.Fatal("engine still answers 20s after its parent was killed")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	if dir := os.Getenv("LOCALCH_TEST_CHILD"); dir != "" {
		s, err := localch.Start(context.Background(), localch.Options{Dir: dir})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("HTTP " + s.HTTPURL())
		select {} // until killed
	}
	os.Exit(m.Run())
}

// A port in use fails Start with the engine's own message.
func TestBusyPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = localch.Start(context.Background(), localch.Options{Dir: t.TempDir(), Launcher: launcher(t), TCPPort: l.Addr().(*net.TCPAddr).Port})
	if err == nil || !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("Start on a busy port: %v", err)
	}
}
