package ingest

import (
	"archive/zip"
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"golang.org/x/sync/errgroup"

	"github.com/gradeline/gradeline/bus"
)

// Exports write the caller's catalogue images (filtered by tag, as the
// catalogue listing is) with their annotations, and optionally the model
// predictions, in the formats labelling tools and trainers read: COCO,
// YOLO and Label Studio. They stream: a page of images at a time, so
// memory stays flat at any catalogue size. An error after the first byte
// can only cut the body short (and is logged); errors before it are the
// usual JSON errors.

// exportPage is how many images an export reads per query.
const exportPage = 100

// exportTimeout bounds a whole export.
const exportTimeout = 30 * time.Minute

// exportItem is one image with what the export needs of it.
type exportItem struct {
	image       bus.Image
	annotations []exportAnnotation
	predictions []bus.Grade
}

type exportAnnotation struct {
	bus.Annotation
	st bus.Structure
}

// exportSource walks the caller's catalogue images with tags.
type exportSource struct {
	s           *Server
	user        string
	tags        []string
	predictions bool
	first       bus.List[bus.Image]
}

// exportFrom reads the export's query and its first page of images, so
// that a bad query or an unavailable store is a JSON error, not a body
// cut short.
func (s *Server) exportFrom(c *fiber.Ctx) (*exportSource, error) {
	var raw []string
	for _, v := range c.Context().QueryArgs().PeekMulti("tag") {
		raw = append(raw, string(v))
	}
	tags, err := cleanTags(raw)
	if err != nil {
		return nil, err
	}
	src := &exportSource{s: s, user: userOf(c), tags: tags, predictions: c.QueryBool("predictions")}
	src.first, err = src.page(c.UserContext(), "")
	return src, err
}

func (src *exportSource) page(ctx context.Context, cursor string) (bus.List[bus.Image], error) {
	return request[bus.List[bus.Image]](ctx, src.s, bus.SvcImagesList, bus.ImagesQuery{Owner: src.user, Tags: src.tags,
		Cursor: cursor, PerPage: exportPage, AfterSeq: src.s.writes.after(src.user, bus.ConsumerAnnotatorCatalog.Stream)})
}

// walk calls fn for every image, in catalogue order (newest first).
func (src *exportSource) walk(ctx context.Context, fn func(exportItem) error) error {
	list := src.first
	for {
		items := make([]exportItem, len(list.Data))
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(8)
		for i, img := range list.Data {
			items[i].image = img
			g.Go(func() error { return src.fill(gctx, &items[i]) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
		for _, it := range items {
			if err := fn(it); err != nil {
				return err
			}
		}
		if list.Next == "" {
			return nil
		}
		var err error
		if list, err = src.page(ctx, list.Next); err != nil {
			return err
		}
	}
}

// fill reads the annotations (and predictions) of one image, every page.
func (src *exportSource) fill(ctx context.Context, it *exportItem) error {
	anns, err := allPages[bus.Annotation](ctx, src.s, bus.SvcAnnotationsList, func(cursor string) any {
		return bus.AnnotationsQuery{Viewer: src.user, ImageID: it.image.ID, Cursor: cursor, PerPage: bus.MaxPerPage,
			AfterSeq: src.s.writes.after(src.user, bus.ConsumerAnnotator.Stream)}
	})
	if err != nil {
		return err
	}
	for _, a := range anns {
		st, _ := bus.ParseStructure(a.Annotation) // a malformed part of an old annotation is left out
		it.annotations = append(it.annotations, exportAnnotation{a, st})
	}
	if src.predictions {
		it.predictions, err = allPages[bus.Grade](ctx, src.s, bus.SvcGradesList, func(cursor string) any {
			return bus.GradesQuery{Viewer: src.user, ImageID: it.image.ID, Cursor: cursor, PerPage: bus.MaxPerPage,
				AfterSeq: src.s.writes.after(src.user, bus.StreamGrades)}
		})
	}
	return err
}

// allPages asks a listing query service for every page, the query of each
// made from the cursor of the page before ("" first).
func allPages[T any](ctx context.Context, s *Server, subject string, query func(cursor string) any) ([]T, error) {
	var out []T
	for cursor := ""; ; {
		l, err := request[bus.List[T]](ctx, s, subject, query(cursor))
		if err != nil {
			return nil, err
		}
		out = append(out, l.Data...)
		if cursor = l.Next; cursor == "" {
			return out, nil
		}
	}
}

// stream sends the export's body from write, after the handler returns,
// with a context of its own (the request's ends with the handler).
func (s *Server) stream(c *fiber.Ctx, contentType, filename string, write func(ctx context.Context, w *bufio.Writer) error) error {
	c.Set(fiber.HeaderContentType, contentType)
	c.Set(fiber.HeaderContentDisposition, `attachment; filename="`+filename+`"`)
	ctx := context.WithoutCancel(c.UserContext())
	log := s.log.With("route", c.Path(), "request_id", bus.RequestID(ctx))
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		ctx, cancel := context.WithTimeout(ctx, exportTimeout)
		defer cancel()
		if err := write(ctx, w); err != nil {
			log.Warn("export cut short", "err", err)
		}
		_ = w.Flush()
	})
	return nil
}

// labelIndex numbers labels in the order they are first seen.
type labelIndex struct {
	ids   map[string]int
	names []string
}

func (l *labelIndex) id(name string) int {
	if l.ids == nil {
		l.ids = map[string]int{}
	}
	if id, ok := l.ids[name]; ok {
		return id
	}
	l.ids[name] = len(l.names)
	l.names = append(l.names, name)
	return len(l.names) - 1
}

// jsonItems writes the elements of a JSON array, commas between them.
type jsonItems struct {
	w *bufio.Writer
	n int
}

func (l *jsonItems) item(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if l.n > 0 {
		_ = l.w.WriteByte(',')
	}
	l.n++
	_, err = l.w.Write(b)
	return err
}

// spool is a temporary file for the part of a document that comes after
// the part being streamed (COCO's annotations follow its images).
type spool struct {
	f *os.File
	jsonItems
}

func newSpool() (*spool, error) {
	f, err := os.CreateTemp("", "gradeline-export-")
	if err != nil {
		return nil, fmt.Errorf("export: spool: %w", err)
	}
	_ = os.Remove(f.Name()) // gone with the handle
	return &spool{f: f, jsonItems: jsonItems{w: bufio.NewWriter(f)}}, nil
}

func (sp *spool) copyTo(w io.Writer) error {
	if err := sp.w.Flush(); err != nil {
		return err
	}
	if _, err := sp.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	_, err := io.Copy(w, sp.f)
	return err
}

func (sp *spool) close() { _ = sp.f.Close() }

// exportCOCO answers a COCO detection document: every selected image,
// annotated or not, with its size; box annotations with bbox, area and
// iscrowd 0; image-level labels as the image's categories; with
// ?predictions=1 the completed grades as a COCO results list.
func (s *Server) exportCOCO(c *fiber.Ctx) error {
	src, err := s.exportFrom(c)
	if err != nil {
		return err
	}
	return s.stream(c, fiber.MIMEApplicationJSON, "coco.json", func(ctx context.Context, w *bufio.Writer) error {
		anns, err := newSpool()
		if err != nil {
			return err
		}
		defer anns.close()
		preds, err := newSpool()
		if err != nil {
			return err
		}
		defer preds.close()
		var cats labelIndex
		fmt.Fprintf(w, `{"info":{"description":"gradeline export","version":"1.0","date_created":%q},"licenses":[],"images":[`, time.Now().UTC().Format(time.RFC3339))
		images := jsonItems{w: w}
		err = src.walk(ctx, func(it exportItem) error {
			return cocoItem(it, images.n+1, &cats, &images, &anns.jsonItems, &preds.jsonItems)
		})
		if err != nil {
			return err
		}
		_, _ = w.WriteString(`],"annotations":[`)
		if err := anns.copyTo(w); err != nil {
			return err
		}
		_, _ = w.WriteString(`],"categories":[`)
		categories := jsonItems{w: w}
		for i, name := range cats.names {
			if err := categories.item(cocoCategory{ID: i + 1, Name: name, Supercategory: "none"}); err != nil {
				return err
			}
		}
		_ = w.WriteByte(']')
		if src.predictions {
			_, _ = w.WriteString(`,"predictions":[`)
			if err := preds.copyTo(w); err != nil {
				return err
			}
			_ = w.WriteByte(']')
		}
		_, err = w.WriteString("}\n")
		return err
	})
}

// cocoItem writes image it as COCO image n: the image, its boxes and
// its predictions, numbering labels in cats.
func cocoItem(it exportItem, n int, cats *labelIndex, images, anns, preds *jsonItems) error {
	img := cocoImage{ID: n, FileName: exportFileName(it.image), Width: it.image.Width, Height: it.image.Height,
		GradelineID: it.image.ID, Tags: it.image.Tags, Labels: []string{}, CategoryIDs: []int{}}
	for _, a := range it.annotations {
		if a.st.Label != "" {
			img.Labels = append(img.Labels, a.st.Label)
			img.CategoryIDs = append(img.CategoryIDs, cats.id(a.st.Label)+1)
		}
		for _, b := range a.st.Boxes {
			if err := anns.item(cocoAnnotation{ID: anns.n + 1, ImageID: n, CategoryID: cats.id(b.Label) + 1,
				BBox: [4]float64{b.X, b.Y, b.Width, b.Height}, Area: b.Width * b.Height, Segmentation: []any{},
				GradelineID: a.ID}); err != nil {
				return err
			}
		}
	}
	for _, g := range it.predictions {
		if err := preds.item(cocoResult{ImageID: n, CategoryID: cats.id(g.Label) + 1, Score: g.Score,
			Model: modelAt(g), GradeID: g.ID}); err != nil {
			return err
		}
	}
	return images.item(img)
}

type cocoImage struct {
	ID          int      `json:"id"`
	FileName    string   `json:"file_name"`
	Width       int      `json:"width"`
	Height      int      `json:"height"`
	GradelineID string   `json:"gradeline_id"`
	Tags        []string `json:"tags"`
	// Labels and CategoryIDs are the image-level labels of its annotations.
	Labels      []string `json:"labels"`
	CategoryIDs []int    `json:"category_ids"`
}

type cocoAnnotation struct {
	ID           int        `json:"id"`
	ImageID      int        `json:"image_id"`
	CategoryID   int        `json:"category_id"`
	BBox         [4]float64 `json:"bbox"`
	Area         float64    `json:"area"`
	IsCrowd      int        `json:"iscrowd"`
	Segmentation []any      `json:"segmentation"`
	GradelineID  string     `json:"gradeline_id"`
}

type cocoCategory struct {
	ID            int    `json:"id"`
	Name          string `json:"name"`
	Supercategory string `json:"supercategory"`
}

// cocoResult is an entry of a COCO results list; grades label the whole
// image, so it carries no bbox.
type cocoResult struct {
	ImageID    int     `json:"image_id"`
	CategoryID int     `json:"category_id"`
	Score      float64 `json:"score"`
	Model      string  `json:"model"`
	GradeID    string  `json:"grade_id"`
}

// exportYOLO answers a zip in the YOLO layout: labels/<image>.txt for
// every image (empty without boxes) with rows "class cx cy w h" normalised
// to 0–1, classes.txt and data.yaml, and with ?images=1 the images.
func (s *Server) exportYOLO(c *fiber.Ctx) error {
	src, err := s.exportFrom(c)
	if err != nil {
		return err
	}
	withImages := c.QueryBool("images")
	return s.stream(c, "application/zip", "yolo.zip", func(ctx context.Context, w *bufio.Writer) error {
		z := zip.NewWriter(w)
		var classes labelIndex
		err := src.walk(ctx, func(it exportItem) error {
			name := exportFileName(it.image)
			f, err := z.Create("labels/" + strings.TrimSuffix(name, extOf(name)) + ".txt")
			if err != nil {
				return err
			}
			W, H := float64(it.image.Width), float64(it.image.Height)
			for _, a := range it.annotations {
				for _, b := range a.st.Boxes {
					if W <= 0 || H <= 0 {
						continue
					}
					fmt.Fprintf(f, "%d %.6f %.6f %.6f %.6f\n", classes.id(b.Label),
						(b.X+b.Width/2)/W, (b.Y+b.Height/2)/H, b.Width/W, b.Height/H)
				}
			}
			if !withImages {
				return nil
			}
			data, err := s.images.GetBytes(ctx, it.image.ID)
			if err != nil {
				return fmt.Errorf("export: image %s: %w", it.image.ID, err)
			}
			f, err = z.CreateHeader(&zip.FileHeader{Name: "images/" + name, Method: zip.Store})
			if err != nil {
				return err
			}
			_, err = f.Write(data)
			return err
		})
		if err != nil {
			return err
		}
		f, err := z.Create("classes.txt")
		if err != nil {
			return err
		}
		for _, n := range classes.names {
			fmt.Fprintln(f, n)
		}
		if f, err = z.Create("data.yaml"); err != nil {
			return err
		}
		fmt.Fprintf(f, "# gradeline export\npath: .\ntrain: images\nval: images\nnc: %d\nnames:\n", len(classes.names))
		for i, n := range classes.names {
			b, _ := json.Marshal(n) // a JSON string is a YAML string
			fmt.Fprintf(f, "  %d: %s\n", i, b)
		}
		return z.Close()
	})
}

// exportLabelStudio answers Label Studio JSON tasks: data.image points at
// the content route; annotations as rectanglelabels results in percent
// with original_width/height, image labels as choices; predictions with
// model_version and score.
func (s *Server) exportLabelStudio(c *fiber.Ctx) error {
	src, err := s.exportFrom(c)
	if err != nil {
		return err
	}
	return s.stream(c, fiber.MIMEApplicationJSON, "labelstudio.json", func(ctx context.Context, w *bufio.Writer) error {
		_ = w.WriteByte('[')
		tasks := jsonItems{w: w}
		err := src.walk(ctx, func(it exportItem) error {
			task := lsTask{ID: tasks.n + 1, Data: lsData{Image: "/api/v1/images/" + it.image.ID + "/content", GradelineID: it.image.ID, Tags: it.image.Tags},
				Annotations: []lsAnnotation{}, Predictions: []lsPrediction{}}
			for _, a := range it.annotations {
				task.Annotations = append(task.Annotations, lsAnnotation{ID: a.ID, CompletedBy: a.Author, CreatedAt: a.CreatedAt,
					Result: lsResults(a.st, it.image)})
			}
			for _, g := range it.predictions {
				task.Predictions = append(task.Predictions, lsPrediction{ModelVersion: modelAt(g), Score: g.Score,
					Result: lsResults(bus.Structure{Label: g.Label}, it.image)})
			}
			return tasks.item(task)
		})
		if err != nil {
			return err
		}
		_, err = w.WriteString("]\n")
		return err
	})
}

// Label Studio's task shape (the parts gradeline writes and reads).
type lsTask struct {
	ID          int            `json:"id,omitempty"`
	Data        lsData         `json:"data"`
	Annotations []lsAnnotation `json:"annotations"`
	Predictions []lsPrediction `json:"predictions"`
}

type lsData struct {
	Image       string   `json:"image"`
	GradelineID string   `json:"gradeline_id,omitempty"`
	Tags        []string `json:"tags,omitempty"`
}

type lsAnnotation struct {
	ID string `json:"gradeline_id,omitempty"`
	// Label Studio writes a user number and its own time format: read
	// as whatever they are, never needed on import.
	CompletedBy any        `json:"completed_by,omitempty"`
	CreatedAt   any        `json:"created_at,omitempty"`
	Result      []lsResult `json:"result"`
}

type lsPrediction struct {
	ModelVersion string     `json:"model_version"`
	Score        float64    `json:"score"`
	Result       []lsResult `json:"result"`
}

type lsResult struct {
	ID             string  `json:"id,omitempty"`
	FromName       string  `json:"from_name"`
	ToName         string  `json:"to_name"`
	Type           string  `json:"type"`
	OriginalWidth  int     `json:"original_width,omitempty"`
	OriginalHeight int     `json:"original_height,omitempty"`
	ImageRotation  float64 `json:"image_rotation"`
	Value          lsValue `json:"value"`
}

type lsValue struct {
	X               float64  `json:"x,omitempty"`
	Y               float64  `json:"y,omitempty"`
	Width           float64  `json:"width,omitempty"`
	Height          float64  `json:"height,omitempty"`
	Rotation        float64  `json:"rotation,omitempty"`
	RectangleLabels []string `json:"rectanglelabels,omitempty"`
	Choices         []string `json:"choices,omitempty"`
}

// lsResults is a structured annotation as Label Studio results: a choice
// for the image label, a rectangle in percent of the image per box.
func lsResults(st bus.Structure, img bus.Image) []lsResult {
	out := []lsResult{}
	if st.Label != "" {
		out = append(out, lsResult{FromName: "choice", ToName: "image", Type: "choices", Value: lsValue{Choices: []string{st.Label}}})
	}
	if img.Width <= 0 || img.Height <= 0 {
		return out
	}
	W, H := float64(img.Width), float64(img.Height)
	for i, b := range st.Boxes {
		out = append(out, lsResult{ID: fmt.Sprintf("box%d", i), FromName: "label", ToName: "image", Type: "rectanglelabels",
			OriginalWidth: img.Width, OriginalHeight: img.Height,
			Value: lsValue{X: 100 * b.X / W, Y: 100 * b.Y / H, Width: 100 * b.Width / W, Height: 100 * b.Height / H,
				RectangleLabels: []string{b.Label}}})
	}
	return out
}

func modelAt(g bus.Grade) string {
	if g.ModelVersion == "" {
		return g.Model
	}
	return g.Model + "@" + g.ModelVersion
}

// exportFileName names an image in an export: its id (unique, unlike the
// uploaded names) and the extension of its type.
func exportFileName(img bus.Image) string {
	ext := ".img"
	switch img.ContentType {
	case "image/jpeg":
		ext = ".jpg"
	case "image/png":
		ext = ".png"
	case "image/gif":
		ext = ".gif"
	case "image/webp":
		ext = ".webp"
	case "image/bmp":
		ext = ".bmp"
	}
	return img.ID + ext
}

func extOf(name string) string {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		return name[i:]
	}
	return ""
}

// exportRoutes download the catalogue with its annotations.
func (s *Server) exportRoutes() []route {
	tagParam := param{Name: "tag", Description: "Repeat for several tags (all must match); none exports every image.", Schema: arrOf(M{"type": "string"}), Explode: true}
	predParam := param{Name: "predictions", Description: "1 to include the completed grades (model predictions).", Schema: M{"type": "boolean"}}
	file := func(ct, what string) map[int]resp {
		return withErrors(map[int]resp{200: {Desc: what + " (streamed).", Media: ct, Schema: M{"type": "string", "format": "binary"}}}, 401, 422, 503)
	}
	return []route{
		{Method: "GET", Path: "/api/v1/exports/coco", Tag: "exports", Summary: "Export as COCO JSON", Auth: true, Handler: s.exportCOCO,
			Description: "Every selected image, annotated or not, with width and height; boxes with bbox [x,y,width,height], area and iscrowd 0; image-level labels as the image's categories; ?predictions=1 adds the grades as a COCO results list (predictions).",
			Query:       []param{tagParam, predParam}, Responses: file(fiber.MIMEApplicationJSON, "A COCO document")},
		{Method: "GET", Path: "/api/v1/exports/yolo", Tag: "exports", Summary: "Export as a YOLO zip", Auth: true, Handler: s.exportYOLO,
			Description: "labels/<image>.txt per image (empty without boxes), rows `class cx cy w h` normalised to 0-1; classes.txt and data.yaml; ?images=1 adds images/<image>.",
			Query:       []param{tagParam, {Name: "images", Description: "1 to include the images.", Schema: M{"type": "boolean"}}},
			Responses:   file("application/zip", "A zip")},
		{Method: "GET", Path: "/api/v1/exports/labelstudio", Tag: "exports", Summary: "Export as Label Studio tasks", Auth: true, Handler: s.exportLabelStudio,
			Description: "JSON tasks: data.image is the content route; annotations as rectanglelabels (percent, with original_width/height) and choices; ?predictions=1 adds predictions with model_version and score.",
			Query:       []param{tagParam, predParam}, Responses: file(fiber.MIMEApplicationJSON, "Label Studio tasks")},
	}
}
