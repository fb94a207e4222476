package bench

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The outside load generators: Debian's wrk and hey, installed by
// deploy/install/loadgen.sh (make bench and make profile run it).

// requireTools fails with what to run when wrk or hey is missing.
func requireTools() error {
	for _, t := range []string{"wrk", "hey"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s is not installed: run `make bench` (it installs wrk and hey with apt-get)", t)
		}
	}
	return nil
}

// wrkResult is what the Lua script's done() prints on its last line.
type wrkResult struct {
	Requests   int64 `json:"requests"`
	DurationUS int64 `json:"duration_us"`
	// Status counts answers with a status of 400 or more (wrk's
	// errors.status); the others are socket errors.
	Status  int64 `json:"status"`
	Connect int64 `json:"connect"`
	Read    int64 `json:"read"`
	Write   int64 `json:"write"`
	Timeout int64 `json:"timeout"`
	P50US   int64 `json:"p50_us"`
	// OK200 counts the 200 answers when the load counts them apart.
	OK200 int64 `json:"ok200"`
}

// accepted is the number of 2xx answers (the edge answers nothing else
// below 400 to this POST).
func (r wrkResult) accepted() int64 { return r.Requests - r.Status }

// rate is accepted answers per second of wrk's run.
func (r wrkResult) rate() float64 { return r.per(r.accepted()) }

// rate200 is 200 answers per second of wrk's run (wrkLoad.count200).
func (r wrkResult) rate200() float64 { return r.per(r.OK200) }

func (r wrkResult) per(n int64) float64 { return float64(n) / (float64(r.DurationUS) / 1e6) }

const wrkMarker = "WRK_RESULT "

// A wrkLoad is what wrk posts: one body of one content type with the
// bearer token, from conns connections.
type wrkLoad struct {
	name, token, ctype string
	body               []byte
	conns              int
	// count200 counts the 200 answers apart (OK200): a grade answers 200
	// with its result, or 202 when it is not done within the wait.
	count200 bool
}

// gradeForm is the multipart body the grade rows post, image img graded
// by the fashion model, and its content type.
func gradeForm(img []byte) (body []byte, ctype string) {
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	_ = w.WriteField("model", "fashion")
	fw, _ := w.CreateFormFile("image", "digit.png")
	_, _ = fw.Write(img) // writes to memory cannot fail
	_ = w.Close()
	return buf.Bytes(), w.FormDataContentType()
}

// annotationLoad is wrk posting one annotation per request from 64
// connections.
func annotationLoad(token string, body []byte) wrkLoad {
	return wrkLoad{name: "annotation", token: token, ctype: "application/json", body: body, conns: 64}
}

// wrkScript writes the Lua script of l, which prints the summary as one
// JSON line.
func wrkScript(dir string, l wrkLoad) (string, error) {
	count := ""
	ok200 := "0"
	if l.count200 {
		// Per thread; done() sums the threads' counts.
		count = `local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) ok200 = 0 end
response = function(status, headers, body) if status == 200 then ok200 = ok200 + 1 end end
`
		ok200 = "sum200()"
		count += `sum200 = function() local n = 0; for _, t in ipairs(threads) do n = n + t:get("ok200") end; return n end
`
	}
	script := fmt.Sprintf(`-- written by deploy/bench: POST one %s per request
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = %s
wrk.headers["Authorization"] = "Bearer %s"
%sdone = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('%s{"requests":%%d,"duration_us":%%d,"status":%%d,"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,"p50_us":%%d,"ok200":%%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(50), %s))
end
`, l.name, luaString(l.body), luaString([]byte(l.ctype)), l.token, count, wrkMarker, ok200)
	path := filepath.Join(dir, l.name+".lua")
	return path, os.WriteFile(path, []byte(script), 0o600)
}

// luaString quotes s as a Lua string literal.
func luaString(s []byte) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c >= 0x7f:
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// wrkCmd is wrk with the bench's settings: 2 threads and conns
// connections.
func wrkCmd(ctx context.Context, script, url string, conns int, d time.Duration) *exec.Cmd {
	return exec.CommandContext(ctx, "wrk", "-t2", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(int(d.Seconds()))+"s", "--timeout", "30s", "-s", script, url)
}

// parseWrk reads the summary line of wrk's output.
func parseWrk(out []byte) (wrkResult, error) {
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, wrkMarker); ok {
			var r wrkResult
			if err := json.Unmarshal([]byte(rest), &r); err != nil {
				return r, fmt.Errorf("wrk summary %q: %w", rest, err)
			}
			if r.DurationUS <= 0 {
				return r, fmt.Errorf("wrk summary without a duration: %q", rest)
			}
			return r, nil
		}
	}
	return wrkResult{}, fmt.Errorf("no summary in wrk's output:\n%s", out)
}

// runWrk runs wrk for d and returns its summary.
func runWrk(ctx context.Context, script, url string, conns int, d time.Duration) (wrkResult, error) {
	var out bytes.Buffer
	cmd := wrkCmd(ctx, script, url, conns, d)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w\n%s", err, out.Bytes())
	}
	return parseWrk(out.Bytes())
}

// heyResult summarises hey's per-request CSV.
type heyResult struct {
	OK, Other int
	// Elapsed is from the first request's start to the last answer.
	Elapsed time.Duration
	// Latencies of the 200 answers, sorted.
	Latencies []time.Duration
}

func (r heyResult) rate() float64 { return float64(r.OK) / r.Elapsed.Seconds() }

func (r heyResult) p50() time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	return r.Latencies[len(r.Latencies)/2]
}

// runHey POSTs the file body with content type ctype: n requests, or for d
// when d > 0, from c workers.
func runHey(ctx context.Context, url, token, ctype, bodyFile string, c, n int, d time.Duration) (heyResult, error) {
	args := []string{"-c", strconv.Itoa(c), "-m", "POST", "-T", ctype, "-D", bodyFile,
		"-H", "Authorization: Bearer " + token, "-o", "csv", "-t", "30"}
	if d > 0 {
		args = append(args, "-z", d.String())
	} else {
		args = append(args, "-n", strconv.Itoa(n))
	}
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, "hey", append(args, url)...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return heyResult{}, fmt.Errorf("hey: %w\n%s", err, errOut.Bytes())
	}
	return parseHey(out.Bytes())
}

// parseHey reads hey's CSV: response-time,DNS+dialup,DNS,Request-write,
// Response-delay,Response-read,status-code,offset (seconds).
func parseHey(out []byte) (heyResult, error) {
	rows, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil {
		return heyResult{}, fmt.Errorf("hey csv: %w", err)
	}
	var r heyResult
	var end float64
	for i, row := range rows {
		if i == 0 || len(row) < 8 {
			continue
		}
		lat, err1 := strconv.ParseFloat(row[0], 64)
		code, err2 := strconv.Atoi(row[6])
		off, err3 := strconv.ParseFloat(row[7], 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return r, fmt.Errorf("hey csv row %d: %q", i, row)
		}
		end = max(end, off+lat)
		if code == 200 {
			r.OK++
			r.Latencies = append(r.Latencies, time.Duration(lat*float64(time.Second)))
		} else {
			r.Other++
		}
	}
	if r.OK == 0 {
		return r, fmt.Errorf("hey: no 200 answer in %d requests", r.Other)
	}
	sort.Slice(r.Latencies, func(i, j int) bool { return r.Latencies[i] < r.Latencies[j] })
	r.Elapsed = time.Duration(end * float64(time.Second))
	return r, nil
}
