package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/inference"
)

// regradeBatch is how many images are graded per call of the batcher.
const regradeBatch = 64

// regrade runs `regrade`: the images submitted in a period, read back from
// the IMAGES stream and the image bucket (or, with --tag, the catalogue
// images carrying a tag, of every owner), graded again by another model
// version in this process (the serving replicas are not touched), each
// result published as a grade.shadow event that analytics stores; at the
// end, what the served grades said against what the new version says.
func regrade(ctx context.Context, args []string, out io.Writer, now time.Time) error {
	fs := flag.NewFlagSet("regrade", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	model := fs.String("model", "", "the model version to run: NAME@VERSION (required)")
	since := fs.String("since", "24h", "the period: images submitted (with --tag: catalogued) this long ago (2h) or since this time (RFC 3339)")
	tag := fs.String("tag", "", "the catalogue images carrying this tag, of every owner, instead of the period's submissions (with --since: both)")
	run := fs.String("run", "", "the run's id (default: a new one; the same id again publishes nothing twice)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("regrade: %w\n%s", err, usage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("regrade: unexpected argument %q\n%s", fs.Arg(0), usage)
	}
	sinceSet := false
	fs.Visit(func(f *flag.Flag) { sinceSet = sinceSet || f.Name == "since" })
	if *tag != "" && !sinceSet {
		*since = "" // a tag alone: all its images, whenever catalogued
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
	// Any served version, not only the newest: Grade takes NAME@VERSION.
	key := *model
	m, err := reg.Acquire(name, version)
	if err != nil {
		return fmt.Errorf("regrade: model %s is not in the repository (%s): set GRADELINE_MODELS_DIR to the folder that holds it: %w",
			*model, strings.Join(reg.Names(), ", "), err)
	}
	defer m.Release()
	url, err := operatorURL()
	if err != nil {
		return err
	}
	nc, js, err := bus.Connect(ctx, url, "gradeline-cli", nil)
	if err != nil {
		return fmt.Errorf("%w (is the stack running? set NATS_URL)", err)
	}
	defer nc.Close()
	r := &regradeRun{js: js, reg: reg, m: m, key: key, model: *model, name: name, version: version, run: *run, out: out,
		served: map[string]string{}, changed: map[[2]string]int{}}
	if *tag != "" {
		return r.regradeTagged(ctx, nc, *tag, from)
	}
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
	served                     map[string]string // grade id → served label (--since)
	tag, servedVersion         string            // --tag: the tag, the version serving
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
		var items []shadowOf
		for _, ev := range batch {
			s, ok := ev.(*bus.ImageSubmitted)
			if !ok {
				continue
			}
			if name, _ := bus.SplitModelRef(s.Model); name != r.name {
				continue
			}
			it := shadowOf{key: s.ID, of: s.ID, imageID: s.ImageID, owner: s.Owner, object: s.Image.Object}
			if s.Image.Inline() { // a small image travels in its event
				it.inline = s.Image.Data
			}
			it.served, it.wasServed = r.served[s.ID]
			items = append(items, it)
		}
		if err := r.gradeShadows(ctx, images, items); err != nil {
			return err
		}
		if len(items) > 0 {
			fmt.Fprintf(r.out, "regrade %s: %d graded, %d failed, %d images gone\n", r.model, r.graded, r.failed, r.gone)
		}
		return nil
	})
}

// shadowOf is one image to grade again: where its bytes are, and what the
// shadow grade says it re-runs.
type shadowOf struct {
	key            string // with the run's id, the shadow's event id
	of             string // the grade re-run, or the image when none was
	imageID, owner string
	object         string // in the image bucket, unless inline
	inline         []byte
	served         string // the served label
	wasServed      bool
}

// gradeShadows grades items with the run's model version in one call and
// publishes a shadow grade for each; an image deleted since is counted
// gone. A run repeated with the same id publishes nothing twice.
func (r *regradeRun) gradeShadows(ctx context.Context, images jetstream.ObjectStore, items []shadowOf) error {
	var graded []shadowOf
	var data [][]byte
	for _, it := range items {
		r.seen++
		b := it.inline
		if b == nil {
			var err error
			b, err = images.GetBytes(ctx, it.object)
			if errors.Is(err, jetstream.ErrObjectNotFound) {
				r.gone++ // deleted since
				continue
			}
			if err != nil {
				return fmt.Errorf("regrade: image %s: %w", it.object, err)
			}
		}
		graded, data = append(graded, it), append(data, b)
	}
	if len(graded) == 0 {
		return nil
	}
	preds, err := r.reg.Grade(ctx, r.key, data)
	if err != nil {
		return fmt.Errorf("regrade: %w", err)
	}
	for i, p := range preds {
		it := graded[i]
		ev := &bus.GradeShadow{Meta: bus.NewMeta(bus.TypeGradeShadow), Run: r.run, Of: it.of, ImageID: it.imageID, Owner: it.owner,
			Model: r.name, ModelVersion: r.version}
		ev.ID = r.run + "/" + it.key
		if p.Err != nil {
			ev.Reason = p.Err.Error()
			r.failed++
		} else {
			ev.Label, ev.Score, ev.Scores = p.Label, float64(p.Scores[p.Index]), r.m.ScoreMap(p)
			r.graded++
			if it.wasServed {
				r.changed[[2]string{it.served, p.Label}]++
			}
		}
		if _, err := bus.Publish(ctx, r.js, ev); err != nil {
			return fmt.Errorf("regrade: publish: %w", err)
		}
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
	fmt.Fprintf(r.out, "regrade %s (run %s): %d %s, %d graded, %d failed, %d images gone\n",
		r.model, r.run, r.seen, r.unit(), r.graded, r.failed, r.gone)
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
		fmt.Fprintf(r.out, "no served grade of the %s to compare with\n", r.unit())
		return
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i][0] < keys[j][0] || keys[i][0] == keys[j][0] && keys[i][1] < keys[j][1]
	})
	fmt.Fprintf(r.out, "agreement with what was served: %d of %d (%.1f%%)\n", agree, total, 100*float64(agree)/float64(total))
	for _, k := range keys {
		fmt.Fprintf(r.out, "  served %-12s now %-12s %d\n", k[0], k[1], r.changed[k])
	}
	a := "<served version>"
	if r.servedVersion != "" {
		a = r.servedVersion
	}
	fmt.Fprintf(r.out, "details (per owner): GET /api/v1/stats/agreement?model=%s&a=%s&b=%s\n", r.name, a, r.version)
}

// regradeTagPage is how many images one page of the catalogue query asks for.
const regradeTagPage = 256

// unit names what a run goes through, for its messages.
func (r *regradeRun) unit() string {
	if r.tag != "" {
		return "images"
	}
	return "submissions"
}

// regradeTagged grades again the catalogue images carrying tag, of every
// owner (catalogued since from, when set), read a page at a time from the
// annotator and their bytes from the image bucket, so memory stays the
// same at any number of images. Each is compared with the latest
// completed grade its owner got from the version serving now.
func (r *regradeRun) regradeTagged(ctx context.Context, nc *nats.Conn, tag string, from time.Time) error {
	r.tag = tag
	// The catalogue keeps times to the millisecond: an image catalogued in
	// the same millisecond as a --since given to the nanosecond is in.
	from = from.Truncate(time.Millisecond)
	var err error
	if r.servedVersion, err = r.serving(ctx, nc); err != nil {
		return err
	}
	images, err := bus.ImageStore(ctx, r.js)
	if err != nil {
		return fmt.Errorf("regrade: %w", err)
	}
	what := fmt.Sprintf("the images tagged %q", tag)
	if !from.IsZero() {
		what += " catalogued since " + from.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(r.out, "regrade %s (run %s): %s, of every owner, compared with the grades of %s@%s\n",
		r.model, r.run, what, r.name, r.servedVersion)
	q := bus.TaggedImagesQuery{Tag: tag, Since: from, Model: r.name, Version: r.servedVersion, PerPage: regradeTagPage}
	for {
		page, err := bus.Request[bus.List[bus.TaggedImage]](ctx, nc, bus.SvcImagesTagged, q)
		if err != nil {
			return fmt.Errorf("regrade: the catalogue's images tagged %q: %w", tag, err)
		}
		for chunk := range slices.Chunk(page.Data, regradeBatch) {
			if err := r.gradeTagged(ctx, images, chunk); err != nil {
				return err
			}
		}
		if len(page.Data) > 0 {
			fmt.Fprintf(r.out, "regrade %s: %d images, %d graded, %d failed, %d images gone\n", r.model, r.seen, r.graded, r.failed, r.gone)
		}
		if page.Next == "" {
			break
		}
		q.Cursor = page.Next
	}
	if r.seen == 0 {
		return fmt.Errorf("regrade: no catalogue image carries the tag %q%s: nothing to regrade", tag,
			strings.TrimPrefix(what, fmt.Sprintf("the images tagged %q", tag)))
	}
	r.report()
	return nil
}

// serving is the version of the model the inference service serves now
// (asked over NATS), or, when no replica answers, the one this process
// serves from the same models folders.
func (r *regradeRun) serving(ctx context.Context, nc *nats.Conn) (string, error) {
	infos, err := bus.Request[[]bus.ModelInfo](ctx, nc, bus.SvcModelsList, bus.ModelsQuery{})
	if err == nil {
		for _, info := range infos {
			if info.Name == r.name {
				return info.Version, nil
			}
		}
		return "", fmt.Errorf("regrade: the inference service serves no model %s now (it serves %s): nothing was served to compare with",
			r.name, modelNames(infos))
	}
	if !errors.Is(err, bus.ErrUnavailable) {
		return "", fmt.Errorf("regrade: the served models: %w", err)
	}
	m, ok := r.reg.Model(r.name)
	if !ok {
		return "", fmt.Errorf("regrade: no inference replica answers and model %s serves no version here: %w", r.name, err)
	}
	fmt.Fprintf(r.out, "regrade: no inference replica answers; comparing with version %s, the one served from these models folders\n", m.Version)
	return m.Version, nil
}

func modelNames(infos []bus.ModelInfo) string {
	names := make([]string, len(infos))
	for i, info := range infos {
		names[i] = info.Name
	}
	return strings.Join(names, ", ")
}

// gradeTagged grades one chunk of catalogue images and publishes each
// result. The shadow re-runs the served grade when there is one (Of);
// otherwise Of names the image.
func (r *regradeRun) gradeTagged(ctx context.Context, images jetstream.ObjectStore, chunk []bus.TaggedImage) error {
	items := make([]shadowOf, len(chunk))
	for i, img := range chunk {
		items[i] = shadowOf{key: img.ID, of: img.ID, imageID: img.ID, owner: img.Owner, object: img.Object}
		if img.Served != nil {
			items[i].of, items[i].served, items[i].wasServed = img.Served.GradeID, img.Served.Label, true
		}
	}
	return r.gradeShadows(ctx, images, items)
}
