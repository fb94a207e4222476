package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest/internal/auth"
)

type annotationRequest struct {
	ImageID    *string         `json:"image_id"`
	Annotation json.RawMessage `json:"annotation"`
	Username   *string         `json:"username"`
}

type annotationAccepted struct {
	ID      string `json:"id"`
	Status  string `json:"status,omitempty"`
	Message string `json:"message"`
}

// decodeAnnotationRequest reads an annotation request body (JSON, at most
// maxAnnotationBody bytes) into v.
func decodeAnnotationRequest(c *fiber.Ctx, v any, strict bool) error {
	if len(c.Body()) > maxAnnotationBody {
		return errorf(http.StatusRequestEntityTooLarge, "annotation request body exceeds %d bytes", maxAnnotationBody)
	}
	if err := requireJSON(c); err != nil {
		return err
	}
	// The annotation is level 2 of the body: the body check names the
	// annotation's own limit, the one rule bus.ValidateAnnotation applies.
	if err := bus.CheckJSON(c.Body(), bus.MaxAnnotationDepth+1); err != nil {
		var je *bus.JSONError
		if errors.As(err, &je) && je.Err == bus.ErrJSONTooDeep {
			return invalid("annotation too deep", fmt.Sprintf("annotation: nested deeper than %d levels", bus.MaxAnnotationDepth))
		}
		return checkJSONBody(c.Body(), bus.MaxAnnotationDepth+1, "body")
	}
	return decodeCheckedJSON(c.Body(), v, strict)
}

// parseAnnotation validates an annotation body and builds its event. The
// author is always the token's user.
func (s *Server) parseAnnotation(c *fiber.Ctx, strict bool) (*bus.AnnotationCreated, error) {
	var req annotationRequest
	if err := decodeAnnotationRequest(c, &req, strict); err != nil {
		return nil, err
	}
	user := userOf(c)
	if req.Username != nil && auth.Normalize(*req.Username) != user {
		return nil, errorf(http.StatusForbidden, "username %q does not match the authenticated user", *req.Username)
	}
	ann, err := compactAnnotation(req.Annotation)
	if err != nil {
		return nil, err
	}
	ev := &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), Author: user, Annotation: ann}
	ev.ID = idFor(c.UserContext(), "annotation")
	st, err := validAnnotationEvent(ev, ann)
	if err != nil {
		return nil, err
	}
	if req.ImageID != nil {
		if !validRef.MatchString(*req.ImageID) {
			return nil, invalid("invalid request body", "image_id: "+refRule)
		}
		ev.ImageID = *req.ImageID
		// Only an image the user owns or is shared may be annotated: any
		// other id is not found, as the image itself would be.
		img, err := s.getImageMeta(c.UserContext(), user, ev.ImageID)
		if err != nil {
			return nil, err
		}
		if err := boxesFit(img, st); err != nil {
			return nil, err
		}
	}
	return ev, nil
}

// boxesFit refuses boxes that reach outside the image, when its size is
// known (the catalogue records it).
func boxesFit(img bus.Image, st bus.Structure) error {
	if img.Width <= 0 || img.Height <= 0 {
		return nil
	}
	if out := st.Outside(img.Width, img.Height); len(out) > 0 {
		return invalid("boxes outside the image", out...)
	}
	return nil
}

// compactAnnotation checks that the annotation is present and a JSON
// object, and returns it compacted; what an annotation may hold is the
// contract's rule, applied by validAnnotationEvent.
func compactAnnotation(js json.RawMessage) ([]byte, error) {
	raw := bytes.TrimSpace(js)
	switch {
	case len(raw) == 0 || bytes.Equal(raw, []byte("null")):
		return nil, invalid("missing fields", "annotation: required (a JSON object)")
	case raw[0] != '{':
		return nil, invalid("invalid request body", "annotation: must be a JSON object")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, invalid("invalid request body", "annotation: not valid JSON")
	}
	return buf.Bytes(), nil
}

// validAnnotationEvent checks an annotation event by the contract's one
// rule (its Validate, which applies bus.ValidateAnnotation), so the edge
// accepts exactly what consumers accept and never publishes what they
// would dead-letter. It returns the annotation's label and boxes, which
// are checked on the way in: exports and tools read them (stored
// annotations stay as they were).
func validAnnotationEvent(ev bus.Event, ann []byte) (bus.Structure, error) {
	err := ev.Validate()
	switch {
	case err == nil:
		st, details := bus.ParseStructure(ann)
		if len(details) > 0 {
			return st, invalid("invalid annotation", details...)
		}
		return st, nil
	case errors.Is(err, bus.ErrJSONTooLarge):
		return bus.Structure{}, &apiError{Status: http.StatusRequestEntityTooLarge, Message: "annotation too large",
			Details: []string{fmt.Sprintf("annotation: %d bytes, at most %d", len(ann), bus.MaxAnnotationBytes)}}
	default:
		return bus.Structure{}, invalid("invalid annotation", err.Error())
	}
}

// createAnnotation answers 202 only after JetStream acknowledged the event.
func (s *Server) createAnnotation(c *fiber.Ctx) error {
	ev, err := s.parseAnnotation(c, true)
	if err != nil {
		return err
	}
	if err := s.publish(c.UserContext(), ev); err != nil {
		return err
	}
	c.Set(fiber.HeaderLocation, "/api/v1/annotations/"+ev.ID)
	return c.Status(http.StatusAccepted).JSON(annotationAccepted{ID: ev.ID, Status: "accepted", Message: "Annotation received."})
}

func (s *Server) listAnnotations(c *fiber.Ctx) error {
	page, perPage, cursor, err := parsePage(c)
	if err != nil {
		return err
	}
	q := bus.AnnotationsQuery{Viewer: userOf(c), ImageID: c.Query("image_id"), Author: c.Query("author"), Cursor: cursor, Page: page, PerPage: perPage,
		AfterSeq: s.writes.after(userOf(c), bus.ConsumerAnnotator.Stream)}
	var details []string
	if q.ImageID != "" && !validRef.MatchString(q.ImageID) {
		details = append(details, "image_id: "+refRule)
	}
	if q.Author != "" {
		q.Author = auth.Normalize(q.Author)
		if !auth.ValidUsername(q.Author) {
			details = append(details, "author: not a valid username")
		}
	}
	if len(details) > 0 {
		return invalid("invalid query", details...)
	}
	return listReply[bus.Annotation](c, s, bus.SvcAnnotationsList, q)
}

func (s *Server) getAnnotation(c *fiber.Ctx) error {
	an, err := s.annotationOf(c)
	if err != nil {
		return err
	}
	return c.JSON(an)
}

// annotationOf reads the annotation named in the path as the caller may
// see it: their own, or one on an image they own or are shared.
func (s *Server) annotationOf(c *fiber.Ctx) (bus.Annotation, error) {
	id := c.Params("id")
	if !validRef.MatchString(id) {
		return bus.Annotation{}, errorf(http.StatusNotFound, "annotation %q not found", id)
	}
	user := userOf(c)
	return request[bus.Annotation](c.UserContext(), s, bus.SvcAnnotationsGet,
		bus.AnnotationGetQuery{Viewer: user, ID: id, AfterSeq: s.writes.after(user, bus.ConsumerAnnotator.Stream)})
}

// authoredAnnotation is annotationOf for a change: only the author may.
func (s *Server) authoredAnnotation(c *fiber.Ctx) (bus.Annotation, error) {
	an, err := s.annotationOf(c)
	if err != nil {
		return an, err
	}
	if an.Author != userOf(c) {
		return an, errorf(http.StatusForbidden, "only the author (%s) may change annotation %s", an.Author, an.ID)
	}
	return an, nil
}

// updateAnnotation replaces the body of the caller's annotation:
// PATCH /api/v1/annotations/{id} with {"annotation": {...}}.
func (s *Server) updateAnnotation(c *fiber.Ctx) error {
	var req struct {
		Annotation json.RawMessage `json:"annotation"`
	}
	if err := decodeAnnotationRequest(c, &req, true); err != nil {
		return err
	}
	ann, err := compactAnnotation(req.Annotation)
	if err != nil {
		return err
	}
	// Checked before the lookup, as a creation is: a bad body is 422
	// whether or not the annotation exists.
	ev := &bus.AnnotationUpdated{Meta: bus.NewMeta(bus.TypeAnnotationUpdated), AnnotationID: c.Params("id"), Author: userOf(c), Annotation: ann}
	st, err := validAnnotationEvent(ev, ann)
	if err != nil {
		return err
	}
	an, err := s.authoredAnnotation(c)
	if err != nil {
		return err
	}
	if an.ImageID != "" && len(st.Boxes) > 0 {
		img, err := s.getImageMeta(c.UserContext(), an.Author, an.ImageID)
		if err == nil {
			err = boxesFit(img, st)
		}
		if err != nil && !isNotFound(err) {
			return err // an image since deleted leaves no size to check
		}
	}
	ev.AnnotationID, ev.Author = an.ID, an.Author
	if err := s.publish(c.UserContext(), ev); err != nil {
		return err
	}
	an.Annotation, an.UpdatedAt = ann, ev.Time.UTC()
	return c.JSON(an)
}

// deleteAnnotation removes the caller's annotation.
func (s *Server) deleteAnnotation(c *fiber.Ctx) error {
	an, err := s.authoredAnnotation(c)
	if err != nil {
		return err
	}
	ev := &bus.AnnotationDeleted{Meta: bus.NewMeta(bus.TypeAnnotationDeleted), AnnotationID: an.ID, Author: an.Author}
	if err := s.publish(c.UserContext(), ev); err != nil {
		return err
	}
	return c.SendStatus(http.StatusNoContent)
}

// annotationRoutes submit, list, read, change and delete annotations.
func (s *Server) annotationRoutes() []route {
	return []route{
		{Method: "POST", Path: "/api/v1/annotations", Tag: "annotations", Summary: "Submit an annotation", Auth: true, Handler: s.createAnnotation,
			Description: "Answers 202 only after JetStream acknowledged the event. The author is the token's user; a body username that differs is 403. Unknown fields are rejected.",
			Body: &reqBody{Required: true, Content: map[string]M{"application/json": ref("AnnotationRequest")},
				Example: M{"image_id": "retina-001", "annotation": M{"label": "microaneurysm", "box": []int{10, 20, 30, 40}}}},
			Responses: withErrors(map[int]resp{202: {Desc: "Accepted (durably stored in the stream).", Schema: ref("AnnotationAccepted"),
				Headers: map[string]string{"Location": "URL of the annotation."}},
				403: errResp("Body username differs from the token's user."), 413: errResp("Body over 1 MiB or annotation over 64 KiB.")}, 400, 401, 415, 422, 503)},
		{Method: "GET", Path: "/api/v1/annotations", Tag: "annotations", Summary: "List annotations", Auth: true, Handler: s.listAnnotations,
			Query:     append([]param{{Name: "image_id", Schema: M{"type": "string"}}, {Name: "author", Schema: M{"type": "string"}}}, pageParams...),
			Responses: withErrors(map[int]resp{200: {Desc: "A page of annotations.", Schema: ref("AnnotationPage")}}, 401, 422, 503)},
		{Method: "GET", Path: "/api/v1/annotations/:id", Tag: "annotations", Summary: "Get an annotation", Auth: true, Handler: s.getAnnotation,
			Description: "Visible to its author, and to the owner of its image and the users the image is shared with; any other is 404.",
			Responses:   withErrors(map[int]resp{200: {Desc: "The annotation.", Schema: ref("Annotation")}}, 401, 404, 503)},
		{Method: "PATCH", Path: "/api/v1/annotations/:id", Tag: "annotations", Summary: "Replace the body of your annotation", Auth: true, Handler: s.updateAnnotation,
			Description: "Only the author. Recorded as an annotation.updated event; the author's next read shows it.",
			Body: &reqBody{Required: true, Content: map[string]M{"application/json": ref("AnnotationPatch")},
				Example: M{"annotation": M{"label": "haemorrhage"}}},
			Responses: withErrors(map[int]resp{200: {Desc: "The annotation as it now reads.", Schema: ref("Annotation")},
				403: errResp("Not the author.")}, 400, 401, 404, 413, 415, 422, 503)},
		{Method: "DELETE", Path: "/api/v1/annotations/:id", Tag: "annotations", Summary: "Delete your annotation", Auth: true, Handler: s.deleteAnnotation,
			Description: "Only the author. Recorded as an annotation.deleted event.",
			Responses:   withErrors(map[int]resp{204: {Desc: "Deleted."}, 403: errResp("Not the author.")}, 401, 404, 503)},
	}
}
