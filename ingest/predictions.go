package ingest

import (
	"encoding/json"
	"net/http"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
)

// Predictions: every completed grade of a catalogue image (POST
// /api/v1/grades with its image_id) is a model's prediction on it, seen by
// whoever may see the image, and one call turns a prediction into an
// annotation linked to the grade it came from.

// listPredictions lists the completed grades of a catalogue image the
// caller may see, newest first.
func (s *Server) listPredictions(c *fiber.Ctx) error {
	page, perPage, cursor, err := parsePage(c)
	if err != nil {
		return err
	}
	id, user := c.Params("id"), userOf(c)
	if !validRef.MatchString(id) {
		return errorf(http.StatusNotFound, "image %q not found", id)
	}
	return listReply[bus.Grade](c, s, bus.SvcGradesList, bus.GradesQuery{ImageID: id, Viewer: user,
		Cursor: cursor, Page: page, PerPage: perPage, AfterSeq: s.writes.after(user, bus.StreamGrades)})
}

// fromPredictionRequest names the grade to accept.
type fromPredictionRequest struct {
	GradeID string `json:"grade_id"`
}

// annotateFromPrediction makes the caller's annotation on a catalogue
// image from one of their completed grades of it: the grade's label and
// score, the model@version, and the grade id it came from.
func (s *Server) annotateFromPrediction(c *fiber.Ctx) error {
	var req fromPredictionRequest
	if err := requireJSON(c); err != nil {
		return err
	}
	if err := decodeJSON(c.Body(), &req, true); err != nil {
		return err
	}
	if req.GradeID == "" {
		return invalid("missing fields", "grade_id: required")
	}
	ctx, user := c.UserContext(), userOf(c)
	img, err := s.getImageMeta(ctx, user, c.Params("id"))
	if err != nil {
		return err
	}
	if !validRef.MatchString(req.GradeID) {
		return errorf(http.StatusNotFound, "grade %q not found", req.GradeID)
	}
	g, err := request[bus.Grade](ctx, s, bus.SvcGradesGet, bus.GradeGetQuery{ID: req.GradeID, Owner: user,
		AfterSeq: s.writes.after(user, bus.StreamGrades)})
	if err != nil {
		return err
	}
	switch {
	case g.ImageID != img.ID:
		return invalid("grade of another image", "grade_id: grade "+g.ID+" is of image "+g.ImageID+", not "+img.ID)
	case g.Status != bus.GradeStatusCompleted:
		return errorf(http.StatusConflict, "grade %s is %s: only a completed grade is a prediction", g.ID, g.Status)
	}
	ann, err := json.Marshal(struct {
		bus.Structure
		Model string `json:"model"`
	}{bus.Structure{Label: g.Label, Score: g.Score, FromGrade: g.ID}, modelAt(g)})
	if err != nil {
		return err
	}
	ev := &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), ImageID: img.ID, Author: user, Annotation: ann}
	ev.ID = idFor(ctx, "annotation")
	if _, err := validAnnotationEvent(ev, ann); err != nil {
		return err
	}
	if err := s.publish(ctx, ev); err != nil {
		return err
	}
	c.Set(fiber.HeaderLocation, "/api/v1/annotations/"+ev.ID)
	return c.Status(http.StatusAccepted).JSON(bus.Annotation{ID: ev.ID, ImageID: img.ID, Author: user, Annotation: ann, CreatedAt: ev.Time.UTC()})
}

// predictionRoutes list predictions and accept them.
func (s *Server) predictionRoutes() []route {
	return []route{
		{Method: "GET", Path: "/api/v1/images/:id/predictions", Tag: "images", Summary: "Model predictions on an image", Auth: true, Handler: s.listPredictions,
			Description: "The completed grades of the image by anyone who may see it (grade it with POST /api/v1/grades and its image_id), newest first.",
			Query:       pageParams,
			Responses:   withErrors(map[int]resp{200: {Desc: "A page of completed grades.", Schema: ref("GradePage")}}, 401, 404, 422, 503)},
		{Method: "POST", Path: "/api/v1/images/:id/annotations/from-prediction", Tag: "annotations", Summary: "Accept a prediction as your annotation", Auth: true, Handler: s.annotateFromPrediction,
			Description: "Makes an annotation on the image from one of your completed grades of it: {label, score, model, from_grade}.",
			Body: &reqBody{Required: true, Content: map[string]M{"application/json": {"type": "object", "required": []string{"grade_id"},
				"properties": M{"grade_id": M{"type": "string"}}}}, Example: M{"grade_id": "GRADE_ID"}},
			Responses: withErrors(map[int]resp{202: {Desc: "Accepted (durably stored in the stream).", Schema: ref("Annotation"),
				Headers: map[string]string{"Location": "URL of the annotation."}},
				409: errResp("The grade is not completed.")}, 400, 401, 404, 415, 422, 503)},
	}
}
