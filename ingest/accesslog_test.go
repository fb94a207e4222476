package ingest_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"mime/multipart"
	"sync"
	"testing"

	"github.com/gradeline/gradeline/ingest"
)

// syncBuffer is a log sink the server's goroutines may write while the
// test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// accessLines are the access log's lines so far.
func (b *syncBuffer) accessLines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q: %v", sc.Bytes(), err)
		}
		if line["msg"] == "http request" {
			out = append(out, line)
		}
	}
	return out
}

// The access line's bytes_in is the size of the body received: for an
// upload (a multipart form, which the server parses as it reads) as for
// JSON, and 0 without a body.
func TestAccessLogBytesIn(t *testing.T) {
	var logs syncBuffer
	s := startIngest(t, func(cfg *ingest.Config) { cfg.Logger = slog.New(slog.NewJSONHandler(&logs, nil)) })
	c, _ := s.newUser(t)

	var form bytes.Buffer
	w := multipart.NewWriter(&form)
	fw, err := w.CreateFormFile("image", "a.png")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(pngImage(t, 64, 64))
	_ = w.Close()
	jsonBody := []byte(`{"annotation":{"label":"cat"}}`)
	for _, tc := range []struct {
		name, method, path, ctype string
		body                      []byte
	}{
		{"multipart upload", "POST", "/api/v1/images", w.FormDataContentType(), form.Bytes()},
		{"JSON", "POST", "/api/v1/annotations", "application/json", jsonBody},
		{"no body", "GET", "/api/v1/annotations", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(logs.accessLines(t))
			hdr := map[string]string{"X-Request-ID": "bytes-in-" + tc.method + "-" + tc.ctype[:min(len(tc.ctype), 9)]}
			if tc.ctype != "" {
				hdr["Content-Type"] = tc.ctype
			}
			r := c.do(tc.method, tc.path, bytes.NewReader(tc.body), hdr)
			if r.Status >= 500 {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
			lines := logs.accessLines(t)[before:]
			var found bool
			for _, l := range lines {
				if l["path"] != tc.path {
					continue
				}
				found = true
				if got := l["bytes_in"]; got != float64(len(tc.body)) {
					t.Errorf("bytes_in %v, want %d (%d %s)", got, len(tc.body), r.Status, r.Body)
				}
			}
			if !found {
				t.Fatalf("no access line for %s %s among %v", tc.method, tc.path, lines)
			}
		})
	}
}
