package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/local"
)

// BenchmarkScale fills the record store the way issue 9 describes — 1M
// annotations over 10,000 catalogue images by 1,000 authors (each image's
// owner), 100,000 catalogue images, 100,000 grades (one in ten first pending), loaded through the
// bus for speed — then
// measures, on the stack as `make run` ships it:
//   - the annotator's write rate at that size against the rate on the
//     empty store (annotations and grade results);
//   - p50/p99 of every read route through HTTP while annotations are
//     being posted through HTTP at the same time (annotations by image,
//     by author and by id; images by owner, by tag and by id; grades by
//     id and by image);
//   - the time from a restart on that data to ready.
//
// GRADELINE_BENCH_SCALE (default 1) scales every count down or up.
func BenchmarkScale(b *testing.B) {
	scale := envFloat("GRADELINE_BENCH_SCALE", 1)
	nAnn, nImg, nGrades := int(1_000_000*scale), int(100_000*scale), int(100_000*scale)
	const authors, images, probe = 1000, 10_000, 20_000
	dir, err := os.MkdirTemp("", "gradeline-scale-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	st := runStack(b, dir)
	defer func() { st.stop() }()
	nc, err := nats.Connect(st.ep.NATSAdmin)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()

	ann := func(i int) bus.Event {
		return &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated),
			Author: fmt.Sprintf("bench-u%d", i%authors), ImageID: fmt.Sprintf("cat-%d", i%images),
			Annotation: json.RawMessage(`{"label":"cat","boxes":[{"label":"cat","x":10,"y":12,"width":30,"height":40}]}`)}
	}
	// Grade n is the result with id bench-g-n, of catalogue image n mod
	// nImg and its owner: a whole grade, as results carry the submission's
	// time; one in ten is first recorded as pending (grade.pending, a grade
	// the edge answered before its result).
	var results atomic.Int64
	grade := func(int) bus.Event {
		n := int(results.Add(1))
		id := fmt.Sprintf("bench-g-%d", n)
		image, owner := fmt.Sprintf("cat-%d", n%max(nImg, 1)), fmt.Sprintf("bench-u%d", n%authors)
		at := time.Now().UTC()
		if n%10 == 0 {
			return &bus.GradePending{Meta: bus.NewMeta(bus.TypeGradePending), GradeID: id, ImageID: image, Owner: owner,
				Model: "fashion", SubmittedAt: at}
		}
		return &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: id,
			ImageID: image, Owner: owner, Model: "fashion", SubmittedAt: at,
			ModelVersion: "1", Label: "bag", Score: 0.9, Scores: map[string]float64{"bag": 0.9, "coat": 0.1}, InferenceMS: 0.2, BatchSize: 8}
	}
	img := func(i int) bus.Event {
		return &bus.ImageCatalogued{Meta: bus.NewMeta(bus.TypeImageCatalogued), ImageID: fmt.Sprintf("cat-%d", i),
			Owner: fmt.Sprintf("bench-u%d", i%authors), Filename: "x.png", Width: 28, Height: 28,
			Tags:  []string{fmt.Sprintf("tag-%d", i%50), "all"},
			Image: bus.ImageRef{Object: fmt.Sprintf("obj-%d", i), SHA256: strings.Repeat("ab", 32), ContentType: "image/png", Size: 100}}
	}

	// Write rate on the empty store.
	emptyAnn := loadAndDrain(b, ctx, js, "annotations (empty store)", probe, ann, bus.ConsumerAnnotator)
	emptyGrades := loadAndDrain(b, ctx, js, "grade results (empty store)", probe, grade, bus.ConsumerAnnotatorGrades)

	// Fill to size.
	loadAndDrain(b, ctx, js, "annotations (bulk)", nAnn-2*probe, ann, bus.ConsumerAnnotator)
	loadAndDrain(b, ctx, js, "catalogue images (bulk)", nImg, img, bus.ConsumerAnnotatorCatalog)
	loadAndDrain(b, ctx, js, "grade results (bulk)", nGrades-2*probe, grade, bus.ConsumerAnnotatorGrades)

	// Write rate at size.
	fullAnn := loadAndDrain(b, ctx, js, "annotations (full store)", probe, ann, bus.ConsumerAnnotator)
	fullGrades := loadAndDrain(b, ctx, js, "grade results (full store)", probe, grade, bus.ConsumerAnnotatorGrades)
	fmt.Printf("scale: annotation writes %.0f/s at %d stored vs %.0f/s empty: ratio %.2f (target >= 0.80)\n",
		fullAnn, nAnn, emptyAnn, fullAnn/emptyAnn)
	fmt.Printf("scale: grade-result writes %.0f/s at %d stored vs %.0f/s empty: ratio %.2f (target >= 0.80)\n",
		fullGrades, nGrades, emptyGrades, fullGrades/emptyGrades)

	// Reads through HTTP while annotations are posted through HTTP.
	reader := loginAs(b, st.ep.HTTP, "bench-u7")
	someGrade := gradeOf(b, ctx, js)
	var posted atomic.Int64
	stopLoad := make(chan struct{})
	var loadWG sync.WaitGroup
	for w := 0; w < 4; w++ {
		loadWG.Add(1)
		go func() {
			defer loadWG.Done()
			writer := loginAs(b, st.ep.HTTP, fmt.Sprintf("bench-u%d", 100+w))
			for {
				select {
				case <-stopLoad:
					return
				default:
				}
				code, _ := httpDo(writer, "POST", st.ep.HTTP+"/api/v1/annotations",
					`{"annotation":{"label":"dog"}}`)
				if code == http.StatusAccepted {
					posted.Add(1)
				}
			}
		}()
	}
	// cat-7 is bench-u7's image (catalogue image i belongs to bench-u(i mod 1000)).
	anID := firstID(b, reader, st.ep.HTTP+"/api/v1/annotations?image_id=cat-7&per_page=1")
	imgID := firstID(b, reader, st.ep.HTTP+"/api/v1/images?per_page=1")
	routes := []struct{ name, path string }{
		{"annotations by image", "/api/v1/annotations?image_id=cat-7&per_page=50"},
		{"annotations by author", "/api/v1/annotations?author=bench-u7&per_page=50"},
		{"annotation by id", "/api/v1/annotations/" + anID},
		{"images by owner", "/api/v1/images?per_page=50"},
		{"images by tag", "/api/v1/images?tag=tag-7&per_page=50"},
		{"image by id", "/api/v1/images/" + imgID},
		{"grade by id", "/api/v1/grades/" + someGrade},
		{"grades by image", "/api/v1/grades?image_id=cat-7&per_page=50"},
	}
	loadStart := time.Now()
	for _, r := range routes {
		lat := make([]time.Duration, 0, 200)
		for i := 0; i < 200; i++ {
			t0 := time.Now()
			code, body := httpDo(reader, "GET", st.ep.HTTP+r.path, "")
			if code != http.StatusOK {
				b.Fatalf("%s: %d %s", r.name, code, body)
			}
			lat = append(lat, time.Since(t0))
		}
		p50, p99 := percentiles(lat)
		fmt.Printf("scale: read %-22s p50 %6.1f ms  p99 %6.1f ms  (target p50 <= 25, p99 <= 150)\n", r.name, ms(p50), ms(p99))
	}
	close(stopLoad)
	loadWG.Wait()
	fmt.Printf("scale: meanwhile %d annotations accepted through HTTP (%.0f/s)\n", posted.Load(), float64(posted.Load())/time.Since(loadStart).Seconds())

	// Login against the full store.
	lat := make([]time.Duration, 0, 20)
	for i := 0; i < 20; i++ {
		t0 := time.Now()
		loginAs(b, st.ep.HTTP, "bench-u7")
		lat = append(lat, time.Since(t0))
	}
	p50, _ := percentiles(lat)
	fmt.Printf("scale: login p50 %.1f ms (argon2id by design, plus the user lookup)\n", ms(p50))

	// Restart on that data.
	st.stop()
	t0 := time.Now()
	st = runStack(b, dir)
	fmt.Printf("scale: restart with %d annotations, %d images, %d grades: ready in %.1f s (target <= 5 s)\n",
		nAnn, nImg, nGrades, time.Since(t0).Seconds())
	if code, body := httpDo(loginAs(b, st.ep.HTTP, "bench-u7"), "GET", st.ep.HTTP+routes[0].path, ""); code != 200 {
		b.Fatalf("after restart: %d %s", code, body)
	}

	// A COCO export of one user's 100,000 catalogue images streams in
	// flat memory (the stack runs in this process: its heap is measured).
	nExport := int(envFloat("GRADELINE_BENCH_EXPORT_IMAGES", 100_000*scale))
	exportImg := func(i int) bus.Event {
		return &bus.ImageCatalogued{Meta: bus.NewMeta(bus.TypeImageCatalogued), ImageID: fmt.Sprintf("export-%d", i),
			Owner: "bench-export", Filename: "x.png", Width: 28, Height: 28, Tags: []string{"export"},
			Image: bus.ImageRef{Object: fmt.Sprintf("obj-%d", i), SHA256: strings.Repeat("ab", 32), ContentType: "image/png", Size: 100}}
	}
	nc2, err := nats.Connect(st.ep.NATSAdmin)
	if err != nil {
		b.Fatal(err)
	}
	defer nc2.Close()
	js2, _ := jetstream.New(nc2)
	loadAndDrain(b, ctx, js2, "catalogue images of one user (export)", nExport, exportImg, bus.ConsumerAnnotatorCatalog)
	exportExport(b, st.ep.HTTP, loginAs(b, st.ep.HTTP, "bench-export"), nExport)
}

// exportExport downloads the COCO export of the user's images tagged
// export, checks it holds n images, and prints its time, size and the
// peak of the process's heap meanwhile.
func exportExport(b *testing.B, base, token string, n int) {
	b.Helper()
	// The live heap (what the last collection kept) is what an export
	// retains; the heap in use also holds garbage not yet collected.
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	runtime.GC()
	metrics.Read(live)
	before := live[0].Value.Uint64()
	peak := before
	done := make(chan struct{})
	var sampled sync.WaitGroup
	sampled.Add(1)
	go func() {
		defer sampled.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				metrics.Read(live)
				peak = max(peak, live[0].Value.Uint64())
			}
		}
	}()
	t0 := time.Now()
	req, _ := http.NewRequest("GET", base+"/api/v1/exports/coco?tag=export", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	// Counted as it streams by (a decoder would hold the whole document
	// in this process, whose heap is the one measured).
	cr := &countingReader{r: resp.Body, pattern: []byte(`"file_name":`)}
	_, err = io.Copy(io.Discard, cr)
	if err != nil || resp.StatusCode != 200 || cr.matches != n {
		b.Fatalf("export: %d, %d images, %v; want %d", resp.StatusCode, cr.matches, err, n)
	}
	close(done)
	sampled.Wait()
	fmt.Printf("scale: COCO export of %d images: %.1f s, %.1f MB; live heap of the stack %.0f MB before, at most %.0f MB during\n",
		n, time.Since(t0).Seconds(), float64(cr.n)/1e6, float64(before)/1e6, float64(peak)/1e6)
}

// countingReader counts the bytes read and the occurrences of pattern
// in them, across reads.
type countingReader struct {
	r       io.Reader
	n       int64
	pattern []byte
	tail    []byte
	matches int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	buf := append(c.tail, p[:n]...)
	c.matches += bytes.Count(buf, c.pattern)
	// Keep what could start a match that ends in the next read.
	keep := min(len(buf), len(c.pattern)-1)
	c.tail = append(c.tail[:0], buf[len(buf)-keep:]...)
	return n, err
}

type stack struct {
	ep   local.Endpoints
	stop func()
}

// runStack runs the local stack on dir as `make run` does and returns once
// it is ready.
func runStack(b *testing.B, dir string) stack {
	b.Helper()
	st, err := launch(dir)
	if err != nil {
		b.Fatal(err)
	}
	return st
}

// launch starts the local stack on dir, quiet, on free ports.
func launch(dir string) (stack, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan local.Endpoints, 1)
	done := make(chan error, 1)
	go func() {
		done <- local.Run(ctx, local.Config{
			DataDir: dir, HTTPAddr: "127.0.0.1:0", AdminAddr: "-", NATSAddr: "127.0.0.1:0",
			ORTLib: os.Getenv("ONNXRUNTIME_LIB"), ChdbLauncher: os.Getenv("GRADELINE_CHDB_LAUNCHER"),
			Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
			OnReady: func(ep local.Endpoints) { ready <- ep },
		})
	}()
	select {
	case ep := <-ready:
		return stack{ep: ep, stop: func() { cancel(); <-done }}, nil
	case err := <-done:
		cancel()
		if err == nil {
			err = errors.New("the local stack stopped before it was ready")
		}
		return stack{}, err
	}
}

// loadAndDrain publishes n events from 64 goroutines, waits until the
// consumer has stored them all, and returns the rate of the whole (events
// per second from the first publish to the consumer drained).
func loadAndDrain(b *testing.B, ctx context.Context, js jetstream.JetStream, what string, n int, mk func(int) bus.Event, spec bus.ConsumerSpec) float64 {
	b.Helper()
	if n <= 0 {
		return 0
	}
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if _, err := bus.Publish(ctx, js, mk(i)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	last := time.Now()
	for {
		c, err := js.Consumer(ctx, spec.Stream, spec.Durable)
		if err != nil {
			b.Fatal(err)
		}
		info := c.CachedInfo()
		if info.NumPending == 0 && info.NumAckPending == 0 {
			break
		}
		if time.Since(last) > 10*time.Second {
			fmt.Printf("scale: %s: %d pending\n", what, info.NumPending+uint64(info.NumAckPending))
			last = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	rate := float64(n) / time.Since(start).Seconds()
	fmt.Printf("scale: %s: %d stored in %.1f s (%.0f/s)\n", what, n, time.Since(start).Seconds(), rate)
	return rate
}

func loginAs(b *testing.B, base, user string) string {
	b.Helper()
	body := fmt.Sprintf(`{"username":%q,"password":"benchmark password","signupCode":%q}`, user, local.DefaultSignupCode)
	code, out := httpDo("", "POST", base+"/api/v1/auth/register", body)
	if code != http.StatusCreated {
		code, out = httpDo("", "POST", base+"/api/v1/auth/login", body)
	}
	var tok struct{ Token string }
	if err := json.Unmarshal(out, &tok); err != nil || tok.Token == "" {
		b.Fatalf("login %s: %d %s", user, code, out)
	}
	return tok.Token
}

func httpDo(token, method, url, body string) (int, []byte) {
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func firstID(b *testing.B, token, url string) string {
	b.Helper()
	code, out := httpDo(token, "GET", url, "")
	var l struct {
		Data []struct {
			ID    string `json:"id"`
			ImgID string `json:"img_id"`
		}
	}
	if err := json.Unmarshal(out, &l); err != nil || code != 200 || len(l.Data) == 0 {
		b.Fatalf("%s: %d %s", url, code, out)
	}
	return l.Data[0].ID + l.Data[0].ImgID
}

// gradeOf publishes one more grade result for bench-u7 and returns its id.
func gradeOf(b *testing.B, ctx context.Context, js jetstream.JetStream) string {
	b.Helper()
	id := bus.NewID()
	ev := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: id, ImageID: "cat-7", Owner: "bench-u7",
		Model: "fashion", ModelVersion: "1", Label: "bag", Score: 0.9, Scores: map[string]float64{"bag": 0.9}}
	if _, err := bus.Publish(ctx, js, ev); err != nil {
		b.Fatal(err)
	}
	loadAndDrain(b, ctx, js, "one grade", 0, nil, bus.ConsumerAnnotatorGrades)
	time.Sleep(time.Second)
	return id
}

func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2], d[min(len(d)-1, len(d)*99/100)]
}

func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}
