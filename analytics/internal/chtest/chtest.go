// Package chtest shares one real ClickHouse engine (localch) per test
// binary and gives each test its own database on it, so tests stay isolated
// without paying an engine start each.
package chtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gradeline/gradeline/analytics/localch"
)

var (
	server *localch.Server
	dir    string
	seq    atomic.Int64
)

// Main starts the engine, runs the tests and stops it. A missing launcher
// fails the binary with a message naming `make install`.
func Main(m interface{ Run() int }) {
	os.Exit(run(m))
}

func run(m interface{ Run() int }) int {
	if os.Getenv(localch.EnvLauncher) == "" {
		fmt.Fprintf(os.Stderr, "FAIL: %s is not set; run `make install` and set it to the absolute path of .cache/chdb/gradeline-chdb\n", localch.EnvLauncher)
		return 1
	}
	var err error
	if dir, err = os.MkdirTemp("", "gradeline-chtest-"); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	server, err = localch.Start(context.Background(), localch.Options{Dir: filepath.Join(dir, "engine")})
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer func() { server.Close() }()
	return m.Run()
}

// Server returns the shared engine.
func Server() *localch.Server { return server }

// Restart stops the shared engine and starts it again on the same data
// directory and ports (for outage tests). stopped runs while it is down.
func Restart(t testing.TB, stopped func()) {
	t.Helper()
	tcp, http := server.TCPPort(), server.HTTPPort()
	if err := server.Close(); err != nil {
		t.Fatalf("stop engine: %v", err)
	}
	stopped()
	s, err := localch.Start(context.Background(), localch.Options{Dir: filepath.Join(dir, "engine"), TCPPort: tcp, HTTPPort: http})
	if err != nil {
		t.Fatalf("restart engine: %v", err)
	}
	server = s
}

// Database creates a fresh database for the test and returns its DSN and
// a connection to it (closed at cleanup).
func Database(t testing.TB) (string, driver.Conn) {
	t.Helper()
	name := fmt.Sprintf("t%d_%s", seq.Add(1), sanitize(t.Name()))
	ctx := context.Background()
	root := Connect(t, server.DSN())
	if err := root.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	dsn := strings.TrimSuffix(server.DSN(), "/default") + "/" + name
	return dsn, Connect(t, dsn)
}

// Connect opens a clickhouse-go connection closed at cleanup.
func Connect(t testing.TB, dsn string) driver.Conn {
	t.Helper()
	opts, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		t.Fatalf("dsn %q: %v", dsn, err)
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		t.Fatalf("open %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	if b.Len() > 40 {
		return b.String()[:40]
	}
	return b.String()
}

// IrisCSV returns the path of the reference iris.csv under
// $GRADELINE_DATASETS_DIR, failing the test when it is missing.
func IrisCSV(t testing.TB) string {
	t.Helper()
	d := os.Getenv("GRADELINE_DATASETS_DIR")
	if d == "" {
		t.Fatal("GRADELINE_DATASETS_DIR is not set; run `make install` and set it to the absolute path of .cache/datasets")
	}
	p := filepath.Join(d, "sklearn", "iris.csv")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%v; run `make install` to fetch the datasets", err)
	}
	return p
}
