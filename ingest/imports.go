package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
)

// maxImportAnnotations bounds one import request.
const maxImportAnnotations = 10_000

// contentRoute finds the image id in a task's data.image (the content
// route gradeline exports, relative or absolute).
var contentRoute = regexp.MustCompile(`/api/v1/images/([A-Za-z0-9._:\-]{1,128})/content(?:$|\?)`)

// importSkip says why one annotation of an import was not taken.
type importSkip struct {
	Task       int    `json:"task"`
	Annotation int    `json:"annotation"`
	Reason     string `json:"reason"`
}

type importAnswer struct {
	Imported int          `json:"imported"`
	IDs      []string     `json:"ids"`
	Skipped  []importSkip `json:"skipped"`
}

// importLabelStudio takes Label Studio tasks (the shape exportLabelStudio
// writes, as Label Studio exports them) and stores each annotation as the
// caller's annotation on the task's image: choices as the image label,
// rectanglelabels as boxes in pixels. Annotations that came from gradeline
// (they carry gradeline_id) are skipped, so an export imported back adds
// nothing twice; so is whatever cannot be read, each with its reason.
func (s *Server) importLabelStudio(c *fiber.Ctx) error {
	if err := requireJSON(c); err != nil {
		return err
	}
	var tasks []lsTask
	if err := decodeJSON(c.Body(), &tasks, false); err != nil {
		return err
	}
	total := 0
	for _, t := range tasks {
		total += len(t.Annotations)
	}
	if total > maxImportAnnotations {
		return errorf(http.StatusRequestEntityTooLarge, "%d annotations in one import, at most %d: split the tasks", total, maxImportAnnotations)
	}
	imp := &importer{s: s, ctx: c.UserContext(), user: userOf(c), images: map[string]*bus.Image{},
		out: importAnswer{IDs: []string{}, Skipped: []importSkip{}}}
	for ti, t := range tasks {
		if err := imp.task(ti, t); err != nil {
			return err
		}
	}
	return c.JSON(imp.out)
}

// importer takes the annotations of one import request.
type importer struct {
	s      *Server
	ctx    context.Context
	user   string
	images map[string]*bus.Image // nil: not found
	out    importAnswer
}

// task imports the annotations of task ti; an error fails the request
// (the bus or a store is unavailable), anything else skips with a reason.
func (imp *importer) task(ti int, t lsTask) error {
	id := t.Data.GradelineID
	if m := contentRoute.FindStringSubmatch(t.Data.Image); id == "" && m != nil {
		id = m[1]
	}
	for ai, a := range t.Annotations {
		reason, err := imp.annotation(ti, ai, id, a)
		if err != nil {
			return err
		}
		if reason != "" {
			imp.out.Skipped = append(imp.out.Skipped, importSkip{ti, ai, reason})
		}
	}
	return nil
}

// annotation stores annotation ai of task ti on image id, or says why not.
func (imp *importer) annotation(ti, ai int, id string, a lsAnnotation) (skipped string, err error) {
	switch {
	case id == "":
		return "data.image is not a gradeline image (/api/v1/images/{id}/content) and data.gradeline_id is missing", nil
	case a.ID != "":
		return "already in gradeline as annotation " + a.ID, nil
	}
	img, ok := imp.images[id]
	if !ok {
		got, err := imp.s.getImageMeta(imp.ctx, imp.user, id)
		switch {
		case err == nil:
			img = &got
		case !isNotFound(err):
			return "", err
		}
		imp.images[id] = img
	}
	if img == nil {
		return fmt.Sprintf("image %q not found", id), nil
	}
	st, problems := structureOf(a.Result, *img)
	if len(problems) > 0 {
		return problems[0], nil
	}
	ann, err := json.Marshal(st)
	if err != nil {
		return "", err
	}
	ev := &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), ImageID: id, Author: imp.user, Annotation: ann}
	ev.ID = idFor(imp.ctx, fmt.Sprintf("labelstudio/%d/%d", ti, ai))
	if _, err := validAnnotationEvent(ev, ann); err != nil {
		return err.Error(), nil
	}
	if err := boxesFit(*img, st); err != nil {
		return err.Error(), nil
	}
	if err := imp.s.publish(imp.ctx, ev); err != nil {
		return "", err
	}
	imp.out.Imported++
	imp.out.IDs = append(imp.out.IDs, ev.ID)
	return "", nil
}

// structureOf reads Label Studio results: the first choice is the image
// label, each rectangle (percent of the image) a box in pixels.
func structureOf(results []lsResult, img bus.Image) (bus.Structure, []string) {
	var st bus.Structure
	var problems []string
	for i, r := range results {
		switch r.Type {
		case "choices":
			if len(r.Value.Choices) > 0 && st.Label == "" {
				st.Label = r.Value.Choices[0]
			}
		case "rectanglelabels":
			W, H := r.OriginalWidth, r.OriginalHeight
			if W <= 0 || H <= 0 {
				W, H = img.Width, img.Height
			}
			if W <= 0 || H <= 0 || len(r.Value.RectangleLabels) == 0 {
				problems = append(problems, fmt.Sprintf("result %d: a rectangle needs rectanglelabels and the image size", i))
				continue
			}
			if r.Value.Rotation != 0 {
				problems = append(problems, fmt.Sprintf("result %d: rotated rectangles are not supported", i))
				continue
			}
			st.Boxes = append(st.Boxes, bus.Box{Label: r.Value.RectangleLabels[0],
				X: r.Value.X * float64(W) / 100, Y: r.Value.Y * float64(H) / 100,
				Width: r.Value.Width * float64(W) / 100, Height: r.Value.Height * float64(H) / 100})
		default:
			problems = append(problems, fmt.Sprintf("result %d: type %q is not imported (choices and rectanglelabels are)", i, r.Type))
		}
	}
	if st.Label == "" && len(st.Boxes) == 0 && len(problems) == 0 {
		problems = append(problems, "no choices or rectanglelabels result")
	}
	return st, problems
}

// importRoutes bring work done elsewhere back as annotations.
func (s *Server) importRoutes() []route {
	return []route{
		{Method: "POST", Path: "/api/v1/imports/labelstudio", Tag: "exports", Summary: "Import Label Studio tasks as annotations", Auth: true, Handler: s.importLabelStudio,
			Description: "A JSON array of Label Studio tasks whose data.image is a gradeline content route (or with data.gradeline_id). Each annotation becomes yours: choices as the image label, rectanglelabels as boxes in pixels. Annotations exported from gradeline (gradeline_id set) are skipped; so is what cannot be read, each with its reason. An Idempotency-Key makes a retry store nothing twice.",
			Body:        &reqBody{Required: true, Content: map[string]M{"application/json": {"type": "array", "items": M{"type": "object"}}}},
			Responses: withErrors(map[int]resp{200: {Desc: "What was imported and what was skipped, with reasons.",
				Schema: M{"type": "object", "properties": M{"imported": M{"type": "integer"}, "ids": arrOf(M{"type": "string"}), "skipped": arrOf(M{"type": "object"})}}},
				413: errResp("More than 10,000 annotations in one import.")}, 400, 401, 415, 422, 503)},
	}
}
