package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/local"
)

func TestAdminRejectsBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{"admin"},
		{"admin", "grant"},
		{"admin", "promote", "ada"},
		{"admin", "grant", "ada", "bob"},
		{"admin", "grant", "--all"},
	} {
		err := run(context.Background(), args, &bytes.Buffer{}, time.Now())
		if err == nil || !strings.Contains(err.Error(), "admin: want `admin grant USER` or `admin revoke USER`") {
			t.Errorf("run(%q) = %v, want the admin usage", args, err)
		}
	}
	// Without MONGO_URI and without a local stack's URI file, the error
	// says what to do.
	t.Setenv("MONGO_URI", "")
	t.Setenv("GRADELINE_DATA_DIR", t.TempDir())
	err := run(context.Background(), []string{"admin", "grant", "ada"}, &bytes.Buffer{}, time.Now())
	if err == nil || !strings.Contains(err.Error(), "no MONGO_URI") || !strings.Contains(err.Error(), "make run") {
		t.Fatalf("without a store: %v", err)
	}
}

// apiClient is a signed-in user of the local stack's edge.
type apiClient struct {
	t           *testing.T
	base, token string
}

func (c *apiClient) get(path string, out any) int {
	c.t.Helper()
	req, _ := http.NewRequest("GET", c.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	return c.send(req, out)
}

func (c *apiClient) post(path string, body any, out any) int {
	c.t.Helper()
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", c.base+path, bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return c.send(req, out)
}

func (c *apiClient) send(req *http.Request, out any) int {
	c.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: %d %s: %v", req.Method, req.URL.Path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode
}

type annotationStats struct {
	All  bool                     `json:"all"`
	Data []bus.AnnotationStatsRow `json:"data"`
}

func (s annotationStats) byAuthor() map[string]uint64 {
	m := map[string]uint64{}
	for _, r := range s.Data {
		m[r.Author] += r.Count
	}
	return m
}

// TestAdminGrantLetsUserSeeAllStats runs the local stack (what `make run`
// starts), then the CLI against it the way an operator would: no MONGO_URI,
// only GRADELINE_DATA_DIR. Before the grant a user sees only their own
// statistics and all=1 is 403; after it they see every user's; after the
// revoke all=1 is 403 again, with the same token.
func TestAdminGrantLetsUserSeeAllStats(t *testing.T) {
	for _, n := range []string{"ONNXRUNTIME_LIB", "GRADELINE_CHDB_LAUNCHER"} {
		if os.Getenv(n) == "" {
			t.Fatalf("%s is not set: run the tests with `make test`", n)
		}
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan local.Endpoints, 1)
	done := make(chan error, 1)
	go func() {
		done <- local.Run(ctx, local.Config{
			DataDir: dir, HTTPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", NATSAddr: "127.0.0.1:0",
			ORTLib: os.Getenv("ONNXRUNTIME_LIB"), ChdbLauncher: os.Getenv("GRADELINE_CHDB_LAUNCHER"),
			Logger: slog.New(slog.DiscardHandler), OnReady: func(ep local.Endpoints) { ready <- ep },
		})
	}()
	var ep local.Endpoints
	select {
	case ep = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("stack did not start: %v", err)
	case <-time.After(3 * time.Minute):
		cancel()
		t.Fatal("stack did not start within 3 minutes")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("stack: %v", err)
			}
		case <-time.After(2 * time.Minute):
			t.Error("stack did not stop within 2 minutes")
		}
	})
	t.Setenv("MONGO_URI", "")
	t.Setenv("GRADELINE_MONGO_DB", "")
	t.Setenv("GRADELINE_DATA_DIR", dir)

	users := map[string]*apiClient{}
	for name, n := range map[string]int{"ada@example.com": 2, "bob@example.com": 3} {
		c := &apiClient{t: t, base: ep.HTTP}
		var tok struct{ Token string }
		if code := c.post("/api/v1/auth/register", map[string]string{"username": name, "password": "violet staple orbit", "signupCode": local.DefaultSignupCode}, &tok); code != http.StatusCreated {
			t.Fatalf("register %s: %d", name, code)
		}
		c.token = tok.Token
		for range n {
			if code := c.post("/api/v1/annotations", map[string]any{"annotation": map[string]string{"label": "cat"}}, nil); code != http.StatusAccepted {
				t.Fatalf("annotate as %s: %d", name, code)
			}
		}
		users[name] = c
	}
	ada, bob := users["ada@example.com"], users["bob@example.com"]
	q := url.Values{"from": {time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)},
		"to": {time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, "bucket": {"1h"}}
	path := "/api/v1/stats/annotations?" + q.Encode()

	// Both users' annotations are counted; each sees only their own.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var a, b annotationStats
		if ada.get(path, &a) != http.StatusOK || bob.get(path, &b) != http.StatusOK {
			t.Fatal("own statistics refused")
		}
		if len(a.byAuthor()) > 1 || a.byAuthor()["bob@example.com"] != 0 {
			t.Fatalf("ada's statistics hold another user's: %+v", a)
		}
		if a.byAuthor()["ada@example.com"] == 2 && b.byAuthor()["bob@example.com"] == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counts: ada %v, bob %v", a.byAuthor(), b.byAuthor())
		}
		time.Sleep(100 * time.Millisecond)
	}
	var e struct {
		Code    int
		Details []string
	}
	if code := ada.get(path+"&all=1", &e); code != http.StatusForbidden || e.Code != http.StatusForbidden {
		t.Fatalf("all=1 before the grant: %d %+v, want 403", code, e)
	}

	cli := func(want string, args ...string) {
		t.Helper()
		var out bytes.Buffer
		if err := run(context.Background(), args, &out, time.Now()); err != nil {
			t.Fatalf("gradeline %s: %v", strings.Join(args, " "), err)
		}
		if !strings.Contains(out.String(), want) {
			t.Fatalf("gradeline %s: %q, want %q", strings.Join(args, " "), out.String(), want)
		}
	}
	cli("granted admin to Ada@Example.com", "admin", "grant", "Ada@Example.com") // matched as at login
	cli("is already an admin", "admin", "grant", "ada@example.com")
	if err := run(context.Background(), []string{"admin", "grant", "nobody@example.com"}, io.Discard, time.Now()); err == nil || !strings.Contains(err.Error(), "no such user") {
		t.Fatalf("grant to an unknown user: %v", err)
	}

	var all annotationStats
	if code := ada.get(path+"&all=1", &all); code != http.StatusOK || !all.All {
		t.Fatalf("all=1 after the grant: %d %+v", code, all)
	}
	if got := all.byAuthor(); got["ada@example.com"] != 2 || got["bob@example.com"] != 3 {
		t.Fatalf("admin's all=1 counts %v, want ada 2 and bob 3", got)
	}
	if code := bob.get(path+"&all=1", nil); code != http.StatusForbidden {
		t.Fatalf("bob's all=1: %d, want 403", code)
	}
	var grades struct{ All bool }
	if code := ada.get("/api/v1/stats/grades?all=1", &grades); code != http.StatusOK || !grades.All {
		t.Fatalf("admin's grade stats all=1: %d %+v", code, grades)
	}

	cli("revoked admin from ada@example.com", "admin", "revoke", "ada@example.com")
	cli("was not an admin", "admin", "revoke", "ada@example.com")
	if code := ada.get(path+"&all=1", nil); code != http.StatusForbidden {
		t.Fatalf("all=1 after the revoke: %d, want 403", code)
	}
}
