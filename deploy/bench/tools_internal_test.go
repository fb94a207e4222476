package bench

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseWrk(t *testing.T) {
	cases := []struct {
		name, out    string
		wantAccepted int64
		wantErr      bool
	}{
		{"summary", "Running 8s test\n" + wrkMarker + `{"requests":1000,"duration_us":2000000,"status":10,"connect":0,"read":1,"write":0,"timeout":0,"p50_us":900}` + "\n", 990, false},
		{"no summary", "Running 8s test\n  Requests/sec: 12\n", 0, true},
		{"no duration", wrkMarker + `{"requests":3,"duration_us":0}`, 0, true},
		{"torn summary", wrkMarker + `{"requests":`, 0, true},
		// A grade load counts its 200 answers apart from the 202s.
		{"with 200s", wrkMarker + `{"requests":1000,"duration_us":2000000,"status":0,"connect":0,"read":0,"write":0,"timeout":0,"p50_us":900,"ok200":960}`, 1000, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseWrk([]byte(tc.out))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err == nil && (r.accepted() != tc.wantAccepted || r.rate() != float64(tc.wantAccepted)/2) {
				t.Fatalf("accepted %d at %.1f/s, want %d at %.1f/s", r.accepted(), r.rate(), tc.wantAccepted, float64(tc.wantAccepted)/2)
			}
			if err == nil && r.rate200() != float64(r.OK200)/2 {
				t.Fatalf("%d answers of 200 at %.1f/s, want %.1f/s", r.OK200, r.rate200(), float64(r.OK200)/2)
			}
		})
	}
}

func TestParseHey(t *testing.T) {
	out := "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n" +
		"0.0030,0,0,0,0,0,200,0.0000\n" +
		"0.0010,0,0,0,0,0,200,0.0040\n" +
		"0.0020,0,0,0,0,0,503,0.0050\n" +
		"0.0050,0,0,0,0,0,200,0.0050\n"
	r, err := parseHey([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if r.OK != 3 || r.Other != 1 {
		t.Fatalf("%d ok, %d other; want 3, 1", r.OK, r.Other)
	}
	if r.p50() != 3*time.Millisecond || r.Elapsed != 10*time.Millisecond {
		t.Fatalf("p50 %v over %v; want 3ms over 10ms", r.p50(), r.Elapsed)
	}
	if _, err := parseHey([]byte("response-time,a,b,c,d,e,status-code,offset\n0.1,0,0,0,0,0,500,0\n")); err == nil {
		t.Fatal("no 200 answer: want an error")
	}
}

func TestLuaStringAndCommas(t *testing.T) {
	if got, want := luaString([]byte(`{"a":"b\\c"}`+"\n")), `"{\"a\":\"b\\\\c\"}\010"`; got != want {
		t.Errorf("luaString = %s, want %s", got, want)
	}
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567", -4500: "-4,500"} {
		if got := withCommas(v); got != want {
			t.Errorf("withCommas(%v) = %q, want %q", v, got, want)
		}
	}
	if a := benchAnnotation(); len(a) != 140 || !strings.HasPrefix(string(a), `{"label":"cat"`) {
		t.Errorf("the benchmark's annotation has %d bytes: %s", len(a), a)
	}
}

// TestWrkCountsOK200 runs the Lua script a grade load uses against a
// server that answers 200 and 202 in turn: wrk must count the 200s apart.
func TestWrkCountsOK200(t *testing.T) {
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Skip("wrk is not installed (make bench installs it)")
	}
	var n, ok atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("Content-Type") != "multipart/form-data; boundary=x" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if body, _ := io.ReadAll(r.Body); string(body) != "a\x00\xff\"b" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if n.Add(1)%2 == 0 {
			ok.Add(1)
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	script, err := wrkScript(t.TempDir(), wrkLoad{name: "grade", token: "tok", ctype: "multipart/form-data; boundary=x", body: []byte("a\x00\xff\"b"), conns: 2, count200: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := runWrk(context.Background(), script, srv.URL, 2, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if w.Requests == 0 || w.Status != 0 {
		t.Fatalf("wrk: %d requests, %d answers of 400 or more", w.Requests, w.Status)
	}
	// wrk stops mid-flight: the server may have answered a few more.
	if w.OK200 == 0 || w.OK200 > ok.Load() || w.OK200 < ok.Load()-4 {
		t.Fatalf("wrk counted %d answers of 200, the server sent %d of %d", w.OK200, ok.Load(), n.Load())
	}
}
