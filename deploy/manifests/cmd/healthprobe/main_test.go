package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.WriteHeader(http.StatusOK)
		case "/readyz":
			http.Error(w, "nats: not connected", http.StatusServiceUnavailable)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	// A port that refuses connections: listen, note the address, close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/healthz"
	ln.Close()

	tests := []struct {
		name       string
		args       []string
		want       int
		wantStderr string
	}{
		{"healthy", []string{srv.URL + "/healthz"}, 0, ""},
		{"not ready", []string{srv.URL + "/readyz"}, 1, "nats: not connected"},
		{"not found", []string{srv.URL + "/nope"}, 1, "404"},
		{"refused", []string{closed}, 1, "refused"},
		{"no args", nil, 2, "usage"},
		{"two args", []string{srv.URL, srv.URL}, 2, "usage"},
		{"not a url", []string{"::"}, 2, "not an http(s) URL"},
		{"other scheme", []string{"ftp://127.0.0.1/"}, 2, "not an http(s) URL"},
		{"no host", []string{"http:///healthz"}, 2, "not an http(s) URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			got := run(context.Background(), tt.args, &stderr)
			if got != tt.want {
				t.Fatalf("exit %d, want %d (stderr %q)", got, tt.want, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Fatalf("stderr %q does not mention %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}
