package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/annotator"
	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/internal/fixture"
	"github.com/gradeline/gradeline/deploy/internal/natscreds"
	"github.com/gradeline/gradeline/deploy/local"
	"github.com/gradeline/gradeline/inference"
)

// The crash test kills processes with SIGKILL, so what it kills runs in
// child processes: this test binary started again with GRADELINE_CRASH_CHILD
// set runs the whole local stack (local.Run, what gradeline-local runs) or
// one service (annotator.Run, inference.Run, what the service binaries run).
const envCrashChild = "GRADELINE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if role := os.Getenv(envCrashChild); role != "" {
		os.Exit(crashChild(role))
	}
	os.Exit(m.Run())
}

// crashChild runs role until SIGTERM (or SIGKILL, which is the point).
func crashChild(role string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	var err error
	switch role {
	case "stack":
		err = local.Run(ctx, local.Config{
			DataDir: os.Getenv("CRASH_DIR"), HTTPAddr: os.Getenv("CRASH_HTTP"), NATSAddr: os.Getenv("CRASH_NATS"), AdminAddr: "-",
			ORTLib: os.Getenv("ONNXRUNTIME_LIB"), ChdbLauncher: os.Getenv("GRADELINE_CHDB_LAUNCHER"), Logger: log,
			OnReady: func(ep local.Endpoints) {
				b, _ := json.Marshal(ep)
				fmt.Printf("READY %s\n", b)
			},
		})
	case "annotator":
		fmt.Println("READY {}")
		err = annotator.Run(ctx, annotator.Config{NATSURL: os.Getenv("CRASH_NATS_URL"), MongoURI: os.Getenv("CRASH_MONGO"),
			Logger: log, Registerer: prometheus.NewRegistry()})
	case "inference":
		fmt.Println("READY {}")
		err = inference.Run(ctx, inference.Config{NATSURL: os.Getenv("CRASH_NATS_URL"), ORTLib: os.Getenv("ONNXRUNTIME_LIB"),
			Logger: log, Registerer: prometheus.NewRegistry()})
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, role+":", err)
		return 1
	}
	return 0
}

// child is a running child process.
type child struct {
	cmd  *exec.Cmd
	ep   local.Endpoints
	done chan struct{}
}

func startChild(t *testing.T, role string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), envCrashChild+"="+role), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- line
			}
		}
		_ = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() { c.kill() })
	select {
	case line := <-ready:
		_ = json.Unmarshal([]byte(line), &c.ep)
	case <-c.done:
		t.Fatalf("%s child exited before it was ready", role)
	case <-time.After(3 * time.Minute):
		t.Fatalf("%s child not ready within 3 minutes", role)
	}
	return c
}

// kill sends SIGKILL: no shutdown code of the child runs.
func (c *child) kill() {
	if c.cmd.Process != nil {
		_ = c.cmd.Process.Kill()
	}
	<-c.done
}

// crashLoad sends annotations and grades as a careful client does: each
// logical request carries an Idempotency-Key and is retried, with the same
// key and body, until it gets a 2xx.
type crashLoad struct {
	base, token string
	img         []byte

	mu          sync.Mutex
	annotations map[string]string // marker -> event id
	grades      map[string]string // key -> grade id
	retries     map[string]int    // what made a try fail
}

func (l *crashLoad) note(why string) {
	l.mu.Lock()
	l.retries[why]++
	l.mu.Unlock()
}

// until retries try until it reports success or give has passed.
func (l *crashLoad) until(give time.Time, try func() (int, []byte, error)) ([]byte, bool) {
	for time.Now().Before(give) {
		code, body, err := try()
		switch {
		case err != nil:
			l.note("transport")
		case code/100 == 2:
			return body, true
		default:
			l.note(fmt.Sprint(code))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, false
}

var crashClient = &http.Client{Timeout: 20 * time.Second}

func (l *crashLoad) post(path, ctype, key string, body []byte) (int, []byte, error) {
	req, _ := http.NewRequest(http.MethodPost, l.base+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Authorization", "Bearer "+l.token)
	req.Header.Set("Idempotency-Key", key)
	res, err := crashClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	return res.StatusCode, out, err
}

// run starts workers; each finishes its logical request in hand after stop.
func (l *crashLoad) run(t *testing.T, annotators, graders int, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	worker := func(kind string, w int) {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			key := fmt.Sprintf("%s-%d-%d-%d", kind, w, i, time.Now().UnixNano())
			give := time.Now().Add(3 * time.Minute)
			if kind == "annotation" {
				body, _ := json.Marshal(map[string]any{"annotation": map[string]any{"marker": key}})
				out, ok := l.until(give, func() (int, []byte, error) { return l.post("/api/v1/annotations", "application/json", key, body) })
				if !ok {
					t.Errorf("annotation %s never accepted", key)
					return
				}
				var r struct{ ID string }
				_ = json.Unmarshal(out, &r)
				l.mu.Lock()
				l.annotations[key] = r.ID
				l.mu.Unlock()
				// Paced: enough load to be in flight at every kill, few
				// enough documents to check them all within the time budget.
				time.Sleep(20 * time.Millisecond)
				continue
			}
			var buf bytes.Buffer
			mw := multipart.NewWriter(&buf)
			_ = mw.WriteField("model", "fashion")
			fw, _ := mw.CreateFormFile("image", "crash.png")
			_, _ = fw.Write(l.img)
			_ = mw.Close()
			out, ok := l.until(give, func() (int, []byte, error) {
				return l.post("/api/v1/grades?wait=0", mw.FormDataContentType(), key, buf.Bytes())
			})
			if !ok {
				t.Errorf("grade %s never accepted", key)
				return
			}
			var r struct{ ID string }
			_ = json.Unmarshal(out, &r)
			l.mu.Lock()
			l.grades[key] = r.ID
			l.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	}
	for w := range annotators {
		wg.Add(1)
		go worker("annotation", w)
	}
	for w := range graders {
		wg.Add(1)
		go worker("grade", w)
	}
	return &wg
}

func (l *crashLoad) get(path string, out any) int {
	req, _ := http.NewRequest(http.MethodGet, l.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+l.token)
	res, err := crashClient.Do(req)
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	if out != nil {
		_ = json.NewDecoder(res.Body).Decode(out)
	}
	return res.StatusCode
}

// TestCrashesLoseAndDoubleNothing is issue 11's standing crash test: under
// concurrent annotation and grade load, SIGKILL an extra annotator replica,
// then an extra inference replica, then the whole local stack (restarted on
// its data). Afterwards every request that got a 2xx is stored exactly once
// in MongoDB and ClickHouse and every accepted grade has a result.
func TestCrashesLoseAndDoubleNothing(t *testing.T) {
	for _, n := range []string{"ONNXRUNTIME_LIB", "GRADELINE_CHDB_LAUNCHER", "GRADELINE_DATASETS_DIR"} {
		if os.Getenv(n) == "" {
			t.Fatalf("%s is not set: run the tests with `make test`", n)
		}
	}
	if testing.Short() {
		t.Skip("crash test: not in -short")
	}
	dir := t.TempDir()
	stackEnv := []string{"CRASH_DIR=" + dir, fmt.Sprintf("CRASH_HTTP=127.0.0.1:%d", freePort(t)), fmt.Sprintf("CRASH_NATS=127.0.0.1:%d", freePort(t))}
	stack := startChild(t, "stack", stackEnv...)
	creds, err := natscreds.LoadOrCreate(natscreds.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	serviceURL := func(user string) string {
		u, err := bus.URLWithUser(stack.ep.NATS, creds[user])
		if err != nil {
			t.Fatal(err)
		}
		return u
	}

	l := &crashLoad{base: stack.ep.HTTP, img: fixture.DigitPNG(3), annotations: map[string]string{}, grades: map[string]string{}, retries: map[string]int{}}
	body, _ := json.Marshal(map[string]string{"username": "crash", "password": "crash test password", "signupCode": local.DefaultSignupCode})
	res, err := http.Post(l.base+"/api/v1/auth/register", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var tok struct{ Token string }
	_ = json.NewDecoder(res.Body).Decode(&tok)
	res.Body.Close()
	if l.token = tok.Token; l.token == "" {
		t.Fatalf("register: %d", res.StatusCode)
	}

	stop := make(chan struct{})
	wg := l.run(t, 4, 2, stop)
	phase := func(what string, d time.Duration) {
		time.Sleep(d)
		l.mu.Lock()
		t.Logf("%-40s annotations accepted %d, grades accepted %d, failed tries %v", what, len(l.annotations), len(l.grades), l.retries)
		l.mu.Unlock()
	}

	extra := startChild(t, "annotator", "CRASH_NATS_URL="+serviceURL(bus.UserAnnotator), "CRASH_MONGO="+stack.ep.Mongo)
	phase("with a second annotator", 5*time.Second)
	extra.kill()
	phase("after kill -9 of the annotator replica", 3*time.Second)

	extra = startChild(t, "inference", "CRASH_NATS_URL="+serviceURL(bus.UserInference))
	phase("with a second inference replica", 5*time.Second)
	extra.kill()
	phase("after kill -9 of the inference replica", 3*time.Second)

	stack.kill()
	phase("whole stack killed", time.Second)
	stack = startChild(t, "stack", stackEnv...)
	phase("after the stack restarted", 5*time.Second)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}

	// Every accepted annotation exactly once in MongoDB (through the
	// annotator) and in ClickHouse (through analytics' counts).
	l.mu.Lock()
	want := len(l.annotations)
	l.mu.Unlock()
	var stored map[string]int
	eventually(t, 90*time.Second, "every accepted annotation in MongoDB", func() bool {
		stored = map[string]int{}
		for cursor := ""; ; {
			var p struct {
				Data []struct {
					ID         string          `json:"id"`
					Annotation json.RawMessage `json:"annotation"`
				} `json:"data"`
				Next string `json:"next"`
			}
			if l.get("/api/v1/annotations?per_page=1000&cursor="+url.QueryEscape(cursor), &p) != http.StatusOK {
				return false
			}
			for _, a := range p.Data {
				var m struct{ Marker string }
				_ = json.Unmarshal(a.Annotation, &m)
				stored[m.Marker]++
			}
			if cursor = p.Next; cursor == "" {
				return len(stored) >= want
			}
		}
	})
	for marker := range l.annotations {
		if stored[marker] != 1 {
			t.Errorf("annotation %s accepted, stored %d times in MongoDB", marker, stored[marker])
		}
	}
	for marker, n := range stored {
		if _, ok := l.annotations[marker]; !ok {
			t.Errorf("annotation %s stored %d times, never accepted", marker, n)
		}
	}
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	to := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	var counted uint64
	eventually(t, 90*time.Second, "every accepted annotation counted in ClickHouse", func() bool {
		var r struct{ Data []bus.AnnotationStatsRow }
		if l.get("/api/v1/stats/annotations?from="+from+"&to="+to+"&bucket=1h", &r) != http.StatusOK {
			return false
		}
		counted = 0
		for _, row := range r.Data {
			if row.Author == "crash" {
				counted += row.Count
			}
		}
		return counted >= uint64(want)
	})
	if counted != uint64(want) {
		t.Errorf("ClickHouse counts %d annotations, %d were accepted", counted, want)
	}
	// Every accepted grade has a result.
	results := map[string]int{}
	for key, id := range l.grades {
		eventually(t, 90*time.Second, "a result for grade "+key, func() bool {
			var g bus.Grade
			code := l.get("/api/v1/grades/"+id, &g)
			if code == http.StatusOK && (g.Status == bus.GradeStatusCompleted || g.Status == bus.GradeStatusFailed) {
				results[g.Status]++
				return true
			}
			return false
		})
	}
	t.Logf("accepted %d annotations: %d in MongoDB (each once), %d counted in ClickHouse; accepted %d grades: results %v; failed tries retried with the same key: %v",
		want, len(stored), counted, len(l.grades), results, l.retries)
}
