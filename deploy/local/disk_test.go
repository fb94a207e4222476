package local

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/deploy/internal/natscreds"
)

// smallDisk mounts a tmpfs of size at dir for the test.
func smallDisk(t *testing.T, dir, size string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("full-disk test skipped: it mounts a small tmpfs (mount -t tmpfs), which needs root")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("full-disk test skipped: mount -t tmpfs failed: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// TestTooLittleSpaceIsSaidAtStart: the start-up error names the directory
// and the space the streams reserve.
func TestTooLittleSpaceIsSaidAtStart(t *testing.T) {
	requireEnv(t, "ONNXRUNTIME_LIB", "GRADELINE_CHDB_LAUNCHER")
	dir := t.TempDir()
	natsDir := natscreds.Dir(dir)
	smallDisk(t, natsDir, "8m")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := Run(ctx, Config{DataDir: dir, HTTPAddr: "127.0.0.1:0", AdminAddr: "-", NATSAddr: "127.0.0.1:0",
		ORTLib: os.Getenv("ONNXRUNTIME_LIB"), ChdbLauncher: os.Getenv("GRADELINE_CHDB_LAUNCHER"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), natsDir) || !strings.Contains(err.Error(), "reserve") || !strings.Contains(err.Error(), "GiB") {
		t.Fatalf("start on an 8 MiB disk: %v; want an error naming %s and the space the streams reserve", err, natsDir)
	}
	t.Log(err)
}

// TestFullDiskRefusesAndRecovers fills the event store's disk under load:
// what could not be stored is answered 503 naming the directory (never
// 2xx), every 2xx is stored, and the edge accepts again once space returns.
func TestFullDiskRefusesAndRecovers(t *testing.T) {
	dir := t.TempDir()
	natsDir := natscreds.Dir(dir)
	smallDisk(t, natsDir, "24m")
	// JetStream's reservations are bookkeeping: let them exceed the small
	// disk, so that the disk itself fills.
	logs := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stack log:\n%s", logs.String())
		}
	})
	s := startStack(t, dir, func(c *Config) {
		c.NATSMaxStore = 64 << 30
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	// Leave a little room: a ballast file takes the rest.
	ballast := filepath.Join(natsDir, "ballast")
	fill(t, ballast, natsDir, 3<<20)
	c := s.user("disk")
	big := strings.Repeat("x", 48<<10)
	accepted := 0
	var refused string
	for i := 0; i < 400 && refused == ""; i++ {
		code, msg := c.post("/api/v1/annotations", map[string]any{"annotation": map[string]any{"n": i, "pad": big}})
		switch {
		case code == http.StatusAccepted:
			accepted++
		case code == http.StatusServiceUnavailable:
			refused = msg
		default:
			t.Fatalf("annotation %d: status %d %s", i, code, msg)
		}
	}
	if refused == "" {
		t.Fatalf("the disk never filled: %d accepted", accepted)
	}
	if !strings.Contains(refused, natsDir) || !strings.Contains(refused, "full") {
		t.Fatalf("503 message %q does not say that %s is full", refused, natsDir)
	}
	t.Logf("disk full after %d accepted annotations: %s", accepted, refused)
	// Still refused, never 2xx, while the disk stays full.
	if code, msg := c.post("/api/v1/annotations", map[string]any{"annotation": map[string]any{"n": "full", "pad": big}}); code != http.StatusServiceUnavailable {
		t.Fatalf("while full: %d %s", code, msg)
	}

	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the edge accepting again once space returned", func() bool {
		code, _ := c.post("/api/v1/annotations", map[string]any{"annotation": map[string]any{"n": "after"}})
		if code == http.StatusAccepted {
			accepted++
			return true
		}
		time.Sleep(200 * time.Millisecond)
		return false
	})
	// A write larger than the space left fails inside NATS ("no space left
	// on device"); the stream it failed on keeps failing until the guard
	// reloads the streams once space is back.
	fill(t, ballast, natsDir, 3<<20)
	img := noisePNG(t, 1100, 1100) // about 3.5 MiB that do not compress
	code, msg := c.upload(img)
	if code != http.StatusServiceUnavailable || !strings.Contains(msg, natsDir) {
		t.Fatalf("image larger than the space left: %d %q; want 503 naming %s", code, msg, natsDir)
	}
	t.Logf("image refused: %s", msg)
	if code, msg := c.post("/api/v1/annotations", map[string]any{"annotation": map[string]any{"n": "after image"}}); code != http.StatusServiceUnavailable {
		t.Fatalf("annotation while the image bucket is broken: %d %s", code, msg)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	eventually(t, "images stored again once space returned", func() bool {
		code, _ := c.upload(img)
		time.Sleep(200 * time.Millisecond)
		return code == http.StatusCreated
	})
	eventually(t, "annotations accepted again", func() bool {
		code, _ := c.post("/api/v1/annotations", map[string]any{"annotation": map[string]any{"n": "end"}})
		if code == http.StatusAccepted {
			accepted++
			return true
		}
		time.Sleep(200 * time.Millisecond)
		return false
	})

	// Every 2xx is stored.
	var total int
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stored %d of %d accepted annotations", total, accepted)
		}
	})
	eventually(t, fmt.Sprintf("all %d accepted annotations stored", accepted), func() bool {
		var p struct{ Data []json.RawMessage }
		code, _ := c.do("GET", "/api/v1/annotations?per_page=1000", nil, &p)
		total = len(p.Data)
		return code == http.StatusOK && total == accepted
	})
}

// post sends a JSON body and returns the status and the error message, if
// any; unlike client.do, a 5xx is an answer here, not a failure.
func (c *client) post(path string, body any) (int, string) {
	c.t.Helper()
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, c.base+path, bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	var e struct{ Message string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Message
}

// fill writes a ballast file so that about leave bytes stay free.
func fill(t *testing.T, ballast, dir string, leave uint64) {
	t.Helper()
	if free := freeBytes(t, dir); free > leave {
		if err := os.WriteFile(ballast, make([]byte, free-leave), 0o600); err != nil && !strings.Contains(err.Error(), "no space") {
			t.Fatal(err)
		}
	}
}

// noisePNG is an image of random pixels: its PNG is about w*h*3 bytes.
func noisePNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	_, _ = rand.Read(img.Pix)
	for i := 3; i < len(img.Pix); i += 4 {
		img.Pix[i] = 255
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// upload adds an image to the catalogue; a 5xx is an answer here.
func (c *client) upload(img []byte) (int, string) {
	c.t.Helper()
	mb := multipartOf(c.t, nil, "image", "noise.png", img)
	req, _ := http.NewRequest(http.MethodPost, c.base+"/api/v1/images", bytes.NewReader(mb.buf.Bytes()))
	req.Header.Set("Content-Type", mb.ctype)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("POST /api/v1/images: %v", err)
	}
	defer resp.Body.Close()
	var e struct{ Message string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Message
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freeBytes(t *testing.T, dir string) uint64 {
	t.Helper()
	n, err := natsserver.FreeBytes(dir)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
