package localmongo

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestStartWaitsForThePreviousServer: a stack killed with -9 leaves its
// PostgreSQL server shutting down (Pdeathsig), and a restart that comes
// first must wait for it rather than fail on its lock file. The old
// server is frozen (SIGSTOP) while the new start begins, so the new one
// meets it alive whatever the machine's speed, then let go.
func TestStartWaitsForThePreviousServer(t *testing.T) {
	ctx := context.Background()
	o := pgOptions{dir: filepath.Join(t.TempDir(), "postgres"), sharedBuffers: "32MB", log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	old, err := startPostgres(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	pid := old.cmd.Process.Pid
	if !isPostgres(pid) {
		t.Fatalf("isPostgres(%d) = false for a running server", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// A failure below must not leave it frozen.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT); old.stop() })
	started := make(chan error, 1)
	var next *postgres
	go func() {
		var err error
		next, err = startPostgres(ctx, o)
		started <- err
	}()
	select {
	case err := <-started:
		t.Fatalf("a start beside a live server returned at once: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	// The old server shuts down as Pdeathsig makes it: SIGINT, then on.
	_ = syscall.Kill(pid, syscall.SIGINT)
	_ = syscall.Kill(pid, syscall.SIGCONT)
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start after the previous server stopped: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("start did not return after the previous server stopped")
	}
	<-old.done
	if isPostgres(pid) {
		t.Fatalf("isPostgres(%d) = true for a server that exited", pid)
	}
	next.stop()

	// A lock file naming a server that is gone (a crash), or none at all,
	// costs no wait: nothing is said.
	stale := t.TempDir()
	if err := os.WriteFile(filepath.Join(stale, "postmaster.pid"), []byte(strconv.Itoa(pid)+"\n"+stale+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{stale, o.dir, t.TempDir()} {
		var said bytes.Buffer
		if err := waitPreviousServer(ctx, dir, slog.New(slog.NewTextHandler(&said, nil)), time.Minute); err != nil || said.Len() > 0 {
			t.Fatalf("%s: %v, said %q", dir, err, said.String())
		}
	}
}
