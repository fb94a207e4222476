package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/inference"
)

// regradeBatch is how many images are graded per call of the batcher.
const regradeBatch = 64

// regrade runs `regrade`: the images submitted in a period, read back from
// the IMAGES stream and the image bucket, graded again by another model
// version in this process (the serving replicas are not touched), each
// result published as a grade.shadow event that analytics stores; at the
// end, what the served grades said against what the new version says.
func regrade(ctx context.Context, args []string, out io.Writer, now time.Time) error {
	fs := flag.NewFlagSet("regrade", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	model := fs.String("model", "", "the model version to run: NAME@VERSION (required)")
	since := fs.String("since", "24h", "the period: images submitted this long ago (2h) or since this time (RFC 3339)")
	run := fs.String("run", "", "the run's id (default: a new one; the same id again publishes nothing twice)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("regrade: %w\n%s", err, usage)
	}
	name, version := bus.SplitModelRef(*model)
	if name == "" || version == "" {
		return fmt.Errorf("regrade: --model NAME@VERSION is required (e.g. fashion@2)\n%s", usage)
	}
	from, err := parseSince(*since, now)
	if err != nil {
		return err
	}
	if *run == "" {
		*run = bus.NewID()
	}
	// The models as the inference service loads them (its variables).
	lib := os.Getenv("ONNXRUNTIME_LIB")
	if lib == "" {
		return errors.New("regrade: ONNXRUNTIME_LIB is required: the path of libonnxruntime.so.1 (`make install` puts it in .cache/onnxruntime)")
	}
	var dirs []string
	if v := os.Getenv("GRADELINE_MODELS_DIR"); v != "" {
		dirs = strings.Split(v, ":")
	}
	reg, err := inference.LoadRegistry(inference.RegistryOptions{Dirs: dirs, ORTLib: lib})
	if err != nil {
		return fmt.Errorf("regrade: models: %w", err)
	}
	defer reg.Close()
	// The registry names a version NAME@VERSION, and its served one NAME.
	key := *model
	m, ok := reg.Model(key)
	if !ok {
		key = name
		m, ok = reg.Model(key)
	}
	if !ok || m.Version != version {
		return fmt.Errorf("regrade: model %s is not in the repository (%s): set GRADELINE_MODELS_DIR to the folder that holds it", *model, strings.Join(reg.Names(), ", "))
	}
	js, closeConn, err := connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn()
	r := &regradeRun{js: js, reg: reg, m: m, key: key, model: *model, name: name, version: version, run: *run, out: out,
		served: map[string]string{}, changed: map[[2]string]int{}}
	if err := r.readServed(ctx, from); err != nil {
		return err
	}
	if err := r.gradeSubmissions(ctx, from); err != nil {
		return err
	}
	r.report()
	return nil
}

// regradeRun is one regrade: what was served, and the comparison so far.
type regradeRun struct {
	js                         jetstream.JetStream
	reg                        *inference.Registry
	m                          *inference.Model
	key                        string // the model's name in reg
	model, name, version, run  string
	out                        io.Writer
	served                     map[string]string // grade id → served label
	changed                    map[[2]string]int // (served, new) → count
	graded, failed, gone, seen int
}

// readServed collects the served labels of the period's grades of the
// model, from the GRADES stream.
func (r *regradeRun) readServed(ctx context.Context, from time.Time) error {
	return r.each(ctx, bus.StreamGrades, bus.SubjectGradeCompleted, from, func(batch []bus.Event) error {
		for _, ev := range batch {
			if g, ok := ev.(*bus.GradeCompleted); ok && g.Model == r.name {
				r.served[g.GradeID] = g.Label
			}
		}
		return nil
	})
}

// gradeSubmissions grades the period's submissions of the model again and
// publishes each result.
func (r *regradeRun) gradeSubmissions(ctx context.Context, from time.Time) error {
	images, err := r.js.ObjectStore(ctx, bus.ImageBucket)
	if err != nil {
		return fmt.Errorf("regrade: image bucket: %w", err)
	}
	return r.each(ctx, bus.StreamImages, bus.SubjectImageSubmitted, from, func(batch []bus.Event) error {
		var subs []*bus.ImageSubmitted
		var data [][]byte
		for _, ev := range batch {
			s, ok := ev.(*bus.ImageSubmitted)
			if !ok {
				continue
			}
			if name, _ := bus.SplitModelRef(s.Model); name != r.name {
				continue
			}
			r.seen++
			if s.Image.Inline() { // a small image travels in its event
				subs, data = append(subs, s), append(data, s.Image.Data)
				continue
			}
			b, err := images.GetBytes(ctx, s.Image.Object)
			if errors.Is(err, jetstream.ErrObjectNotFound) {
				r.gone++ // deleted since
				continue
			}
			if err != nil {
				return fmt.Errorf("regrade: image %s: %w", s.Image.Object, err)
			}
			subs, data = append(subs, s), append(data, b)
		}
		if len(subs) == 0 {
			return nil
		}
		preds, err := r.reg.Grade(ctx, r.key, data)
		if err != nil {
			return fmt.Errorf("regrade: %w", err)
		}
		for i, p := range preds {
			if err := r.publish(ctx, subs[i], p); err != nil {
				return err
			}
		}
		fmt.Fprintf(r.out, "regrade %s: %d graded, %d failed, %d images gone\n", r.model, r.graded, r.failed, r.gone)
		return nil
	})
}

// publish sends one shadow grade; its id derives from the run and the
// grade, so a run repeated with the same id publishes nothing twice.
func (r *regradeRun) publish(ctx context.Context, s *bus.ImageSubmitted, p inference.Prediction) error {
	ev := &bus.GradeShadow{Meta: bus.NewMeta(bus.TypeGradeShadow), Run: r.run, Of: s.ID, ImageID: s.ImageID, Owner: s.Owner,
		Model: r.name, ModelVersion: r.version}
	ev.ID = r.run + "/" + s.ID
	if p.Err != nil {
		ev.Reason = p.Err.Error()
		r.failed++
	} else {
		ev.Label, ev.Score, ev.Scores = p.Label, float64(p.Scores[p.Index]), r.m.ScoreMap(p)
		r.graded++
		if was, ok := r.served[s.ID]; ok {
			r.changed[[2]string{was, p.Label}]++
		}
	}
	if _, err := bus.Publish(ctx, r.js, ev); err != nil {
		return fmt.Errorf("regrade: publish: %w", err)
	}
	return nil
}

// each reads the events of subject on stream from a time up to the last
// message at the start, in batches.
func (r *regradeRun) each(ctx context.Context, stream, subject string, from time.Time, f func([]bus.Event) error) error {
	st, err := r.js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("regrade: stream %s: %w", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("regrade: stream %s: %w", stream, err)
	}
	last := info.State.LastSeq
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverAllPolicy}
	if !from.IsZero() {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &from
	}
	c, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("regrade: read %s: %w", stream, err)
	}
	for {
		msgs, err := c.FetchNoWait(regradeBatch)
		if err != nil {
			return fmt.Errorf("regrade: read %s: %w", stream, err)
		}
		var batch []bus.Event
		var seq uint64
		n := 0
		for m := range msgs.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			seq = md.Sequence.Stream
			if seq > last {
				break
			}
			if ev, err := bus.Decode(m.Data()); err == nil {
				batch = append(batch, ev)
			}
		}
		if err := msgs.Error(); err != nil {
			return fmt.Errorf("regrade: read %s: %w", stream, err)
		}
		if err := f(batch); err != nil {
			return err
		}
		if n == 0 || seq >= last {
			return nil
		}
	}
}

// report prints how the new version's labels compare with the served ones.
func (r *regradeRun) report() {
	fmt.Fprintf(r.out, "regrade %s (run %s): %d submissions, %d graded, %d failed, %d images gone\n",
		r.model, r.run, r.seen, r.graded, r.failed, r.gone)
	var keys [][2]string
	var agree, total int
	for k, n := range r.changed {
		keys = append(keys, k)
		total += n
		if k[0] == k[1] {
			agree += n
		}
	}
	if total == 0 {
		fmt.Fprintln(r.out, "no served grade of the period to compare with")
		return
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i][0] < keys[j][0] || keys[i][0] == keys[j][0] && keys[i][1] < keys[j][1]
	})
	fmt.Fprintf(r.out, "agreement with what was served: %d of %d (%.1f%%)\n", agree, total, 100*float64(agree)/float64(total))
	for _, k := range keys {
		fmt.Fprintf(r.out, "  served %-12s now %-12s %d\n", k[0], k[1], r.changed[k])
	}
	fmt.Fprintf(r.out, "details: GET /api/v1/stats/agreement?model=%s&a=<served version>&b=%s\n", r.name, r.version)
}
