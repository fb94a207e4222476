package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
)

func TestAddrKind(t *testing.T) {
	tests := []struct {
		addr, kind string
	}{
		{"8.8.8.8", ""},
		{"2606:4700::1111", ""},
		{"127.0.0.1", "loopback"},
		{"::1", "loopback"},
		{"::ffff:127.0.0.1", "loopback"},
		{"10.0.0.1", "private"},
		{"172.16.5.4", "private"},
		{"192.168.1.1", "private"},
		{"fd00::1", "private"},
		{"169.254.169.254", "link-local"},
		{"fe80::1", "link-local"},
		{"0.0.0.0", "unspecified"},
		{"0.1.2.3", "unspecified"},
		{"::", "unspecified"},
		{"239.1.2.3", "multicast"},
		{"224.0.0.1", "link-local"},
		{"100.64.1.1", "shared (carrier-grade NAT)"},
		{"198.18.0.1", "reserved"},
		{"255.255.255.255", "reserved"},
		{"64:ff9b::a00:1", "translated (NAT64/6to4)"},
		{"2002:a00:1::1", "translated (NAT64/6to4)"},
	}
	for _, tt := range tests {
		if got := addrKind(netip.MustParseAddr(tt.addr)); got != tt.kind {
			t.Errorf("addrKind(%s) = %q, want %q", tt.addr, got, tt.kind)
		}
	}
}

// TestCallbackClientChecksTheDialedAddress: the delivery client refuses
// a connection to an address the policy refuses after resolving the name
// (what a name rebound to an internal address meets), follows no
// redirect, and connects where the allow-list admits.
func TestCallbackClientChecksTheDialedAddress(t *testing.T) {
	var redirected atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/moved":
			http.Redirect(w, r, "/target", http.StatusFound)
		case "/target":
			redirected.Add(1)
		}
	}))
	defer srv.Close()
	byName := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	tests := []struct {
		name    string
		allow   []netip.Prefix
		url     string
		refused bool
		status  int
	}{
		{"address refused", nil, srv.URL + "/ok", true, 0},
		{"name resolved, then refused", nil, byName + "/ok", true, 0},
		{"allowed address", loopback, srv.URL + "/ok", false, http.StatusOK},
		{"allowed name", loopback, byName + "/ok", false, http.StatusOK},
		{"redirect not followed", loopback, srv.URL + "/moved", false, http.StatusFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := callbackPolicy{allow: tt.allow}.client().Do(req)
			var refused *refusedAddrError
			if tt.refused {
				if !errors.As(err, &refused) || refused.kind != "loopback" {
					t.Fatalf("err %v, want the address refused as loopback", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", res.StatusCode, tt.status)
			}
		})
	}
	if n := redirected.Load(); n != 0 {
		t.Fatalf("the redirect was followed %d times", n)
	}
}

func TestCallbackBackoff(t *testing.T) {
	var total int64
	for n := uint64(1); n < callbackAttempts; n++ {
		d := callbackBackoff(n)
		if n > 1 && d != 2*callbackBackoff(n-1) && d != callbackBackoff(n-1) {
			t.Fatalf("delay %d: %s after %s", n, d, callbackBackoff(n-1))
		}
		total += int64(d.Seconds())
	}
	if callbackBackoff(1).Seconds() != 1 || total < 30*60 || total > 60*60 {
		t.Fatalf("first delay %s, all %d s: want 1 s, then within the hour", callbackBackoff(1), total)
	}
}

// TestRetryAfter: both forms of Retry-After (RFC 9110), bounded to
// [1 s, 30 min]; anything else is no answer (the backoff applies).
func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 2, 16, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"120", 2 * time.Minute, true},
		{" 7 ", 7 * time.Second, true},
		{"0", time.Second, true},
		{"1800", 30 * time.Minute, true},
		{"1801", 30 * time.Minute, true},
		{"86400", 30 * time.Minute, true},
		{"99999999999999999999999999", 30 * time.Minute, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"Wed, 02 Dec 2026 16:05:00 GMT", 5 * time.Minute, true},
		{"Wednesday, 02-Dec-26 16:00:30 GMT", 30 * time.Second, true}, // RFC 850
		{"Wed Dec  2 16:00:10 2026", 10 * time.Second, true},          // asctime
		{now.Add(-time.Hour).Format(http.TimeFormat), time.Second, true},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), 30 * time.Minute, true},
		{"", 0, false},
		{"-5", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"2026-12-02T16:05:00Z", 0, false},
	}
	for _, tt := range tests {
		got, ok := retryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("retryAfter(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// mayHaveCallback answers true for every result that names a callback URL,
// as published (encoding/json), completed or failed.
func TestMayHaveCallback(t *testing.T) {
	with := "https://example.com/hook"
	for _, tc := range []struct {
		name string
		ev   bus.Event
		want bool
	}{
		{"completed with", &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: "g", Label: "a", Scores: map[string]float64{"a": 1}, CallbackURL: with}, true},
		{"failed with", &bus.GradeFailed{Meta: bus.NewMeta(bus.TypeGradeFailed), GradeID: "g", Reason: "r", CallbackURL: with}, true},
		{"completed without", &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: "g", Label: "a", Scores: map[string]float64{"a": 1}}, false},
		{"failed without", &bus.GradeFailed{Meta: bus.NewMeta(bus.TypeGradeFailed), GradeID: "g", Reason: "r"}, false},
		// A false positive only costs a decode.
		{"a label named like the member", &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: "g", Label: "callback_url", Scores: map[string]float64{"callback_url": 1}}, true},
	} {
		data, err := json.Marshal(tc.ev)
		if err != nil {
			t.Fatal(err)
		}
		if got := mayHaveCallback(data); got != tc.want {
			t.Errorf("%s: mayHaveCallback = %v, want %v (%s)", tc.name, got, tc.want, data)
		}
		if u, _, _ := callbackOf(tc.ev); u != "" && !mayHaveCallback(data) {
			t.Errorf("%s: a result with a callback URL would be skipped", tc.name)
		}
	}
}
