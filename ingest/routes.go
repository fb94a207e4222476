package ingest

import (
	"slices"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
)

// M is a JSON object literal for the OpenAPI document.
type M = map[string]any

// route is one HTTP operation: registered on the app and described in the
// OpenAPI document from the same entry, so the two cannot drift apart.
type route struct {
	Method, Path string
	Tag          string
	Summary      string
	Description  string
	Auth         bool
	Query        []param
	Body         *reqBody
	Responses    map[int]resp
	Handler      fiber.Handler
}

type param struct {
	Name        string
	Description string
	Schema      M
	Required    bool
	Explode     bool
}

type reqBody struct {
	Required bool
	// Content maps a media type to its schema.
	Content map[string]M
	Example any
}

type resp struct {
	Desc    string
	Schema  M
	Media   string // default application/json
	Headers map[string]string
}

func ref(name string) M { return M{"$ref": "#/components/schemas/" + name} }
func arrOf(items M) M   { return M{"type": "array", "items": items} }
func errResp(desc string) resp {
	return resp{Desc: desc, Schema: ref("Error")}
}

// withErrors adds the error responses every route of a kind shares.
func withErrors(r map[int]resp, codes ...int) map[int]resp {
	std := map[int]string{
		400: "Malformed body (JSON syntax, multipart).",
		401: "Missing, expired or invalid token.",
		403: "Forbidden.",
		404: "Not found.",
		409: "Conflict.",
		413: "Body larger than the limit.",
		415: "Unsupported Content-Type or image type.",
		422: "Invalid input; details name each offending field.",
		429: "Too many failed attempts; see Retry-After.",
		503: "A backing service (named in the message) is unavailable.",
	}
	for _, c := range codes {
		if _, ok := r[c]; !ok {
			e := errResp(std[c])
			if c == 429 {
				e.Headers = map[string]string{"Retry-After": "Seconds to wait."}
			}
			r[c] = e
		}
	}
	return r
}

var (
	pageParams = []param{
		{Name: "cursor", Description: "The `next` of the previous page (keyset pagination, newest first). Preferred over page.", Schema: M{"type": "string"}},
		{Name: "page", Description: "Page number, from 1 (skips the pages before it; ignored with cursor).", Schema: M{"type": "integer", "minimum": 1, "default": 1}},
		{Name: "per_page", Description: "Items per page.", Schema: M{"type": "integer", "minimum": 1, "maximum": bus.MaxPerPage, "default": bus.DefaultPerPage}},
	}
	credentialsBody = &reqBody{Required: true, Content: map[string]M{
		"application/json":                  ref("Credentials"),
		"application/x-www-form-urlencoded": ref("Credentials"),
		"multipart/form-data":               ref("Credentials"),
	}}
	gradeBody = &reqBody{Required: true, Content: map[string]M{"multipart/form-data": {
		"type": "object",
		"properties": M{
			"image":          M{"type": "string", "format": "binary", "description": "JPEG, PNG, GIF, WebP or BMP; or give image_id."},
			"image_id":       M{"type": "string", "description": "A catalogue image you may see, graded without uploading it again."},
			"model":          M{"type": "string", "description": "Model name (see GET /api/v1/models)."},
			"model_selected": M{"type": "string", "description": "Seed name of the model field; used when model is absent."},
			"callback_url":   M{"type": "string", "format": "uri", "description": "Optional: POST the result here when known, signed (see GET /api/v1/auth/webhook-secret), retried with backoff. http(s) to a public address (GRADELINE_CALLBACK_ALLOW admits others)."},
		},
	}, "application/json": {
		"type": "object", "required": []string{"model", "image_id"},
		"properties": M{
			"image_id":     M{"type": "string", "description": "A catalogue image you may see."},
			"model":        M{"type": "string", "description": "Model name (see GET /api/v1/models)."},
			"callback_url": M{"type": "string", "format": "uri", "description": "Optional: POST the result here when known, signed (see GET /api/v1/auth/webhook-secret), retried with backoff. http(s) to a public address (GRADELINE_CALLBACK_ALLOW admits others)."},
		},
	}}}
	imageBody = &reqBody{Required: true, Content: map[string]M{"multipart/form-data": {
		"type": "object", "required": []string{"image"},
		"properties": M{
			"image": M{"type": "string", "format": "binary", "description": "JPEG, PNG, GIF, WebP or BMP."},
			"tags":  M{"type": "array", "items": M{"type": "string"}, "description": "Repeated fields, or one field holding a JSON array."},
		},
	}}}
	irisQueryExample = M{"species": []string{"setosa", "versicolor"}, "lower": M{"sepal_width": 3.0}, "upper": M{"sepal_length": 6.1}}
	gradeWaitParam   = param{Name: "wait", Description: "How long to wait for the grade: seconds or a duration (0 = answer 202 at once). Default 10s, at most 60s.",
		Schema: M{"type": "string", "example": "5s"}}
	statsAllParam = param{Name: "all", Description: "1: every user's activity, for admins only (a non-admin gets 403; `gradeline admin grant USER` makes an admin). Default 0: the caller's own, admins included.",
		Schema: M{"type": "string", "enum": []string{"0", "1", "true", "false"}, "example": "1"}}
	windowParams = []param{
		{Name: "from", Description: "Start (RFC 3339), default to minus 24h.", Schema: M{"type": "string", "format": "date-time"}},
		{Name: "to", Description: "End (RFC 3339), default now.", Schema: M{"type": "string", "format": "date-time"}},
		{Name: "bucket", Description: "Bucket width as a duration (e.g. 5m, 1h), default 1h.", Schema: M{"type": "string", "example": "1h"}},
	}
)

// routeTable lists every route, by capability; each capability's file
// holds its part.
func (s *Server) routeTable() []route {
	return slices.Concat(s.systemRoutes(), s.userRoutes(), s.annotationRoutes(), s.gradeRoutes(), s.predictionRoutes(), s.exportRoutes(), s.importRoutes(), s.reviewRoutes(),
		s.catalogRoutes(), s.irisRoutes(), s.statsRoutes(), s.seedRoutes(), s.oipRoutes(), s.webRoutes(), s.callbackRoutes())
}

// systemRoutes are liveness, readiness and the API's own description.
func (s *Server) systemRoutes() []route {
	return []route{
		{Method: "GET", Path: "/healthz", Tag: "system", Summary: "Liveness", Handler: s.healthz,
			Responses: map[int]resp{200: {Desc: "Alive.", Schema: M{"type": "object", "properties": M{"status": M{"type": "string"}}}}}},
		{Method: "GET", Path: "/readyz", Tag: "system", Summary: "Readiness: NATS connected and MongoDB answering", Handler: s.readyz,
			Responses: map[int]resp{200: {Desc: "Ready.", Schema: M{"type": "object"}}, 503: errResp("Not ready; details say which dependency.")}},
		{Method: "GET", Path: "/openapi.json", Tag: "system", Summary: "This OpenAPI document", Handler: s.serveOpenAPI,
			Responses: map[int]resp{200: {Desc: "OpenAPI 3 document.", Schema: M{"type": "object"}}}},
		{Method: "GET", Path: "/docs", Tag: "system", Summary: "Interactive API page", Handler: s.serveDocs,
			Responses: map[int]resp{200: {Desc: "HTML page.", Media: "text/html", Schema: M{"type": "string"}}}},
	}
}

// gradeResponses are the answers of a grade submission (v1 and seed).
func gradeResponses() map[int]resp {
	return withErrors(map[int]resp{
		200: {Desc: "Graded within the wait.", Schema: ref("Grade")},
		202: {Desc: "Accepted, not graded yet; poll Location.", Schema: ref("Grade"), Headers: map[string]string{"Location": "URL of the grade."}},
		404: {Desc: "Unknown model; the message names the available models.", Schema: ref("Error")},
		422: {Desc: "Missing fields, undecodable image, or grading failed (the reason is in message, details and reason).", Schema: ref("Error")},
	}, 400, 401, 413, 415, 503)
}

// gradeRoutes grade images and list the models.
func (s *Server) gradeRoutes() []route {
	return []route{
		{Method: "POST", Path: "/api/v1/grades", Tag: "grades", Summary: "Grade an image with a model", Auth: true, Handler: s.submitGrade,
			Description: "Stores the image, publishes it for grading and waits up to ?wait for the result.",
			Query:       []param{gradeWaitParam}, Body: gradeBody, Responses: gradeResponses()},
		{Method: "GET", Path: "/api/v1/grades", Tag: "grades", Summary: "List your grades of an image", Auth: true, Handler: s.listGrades,
			Description: "Newest submission first, each with its result once stored. image_id is required (the image_id a grade answer carries).",
			Query:       append([]param{{Name: "image_id", Required: true, Schema: M{"type": "string"}}}, pageParams...),
			Responses:   withErrors(map[int]resp{200: {Desc: "A page of grades.", Schema: ref("GradePage")}}, 401, 422, 503)},
		{Method: "GET", Path: "/api/v1/grades/events", Tag: "grades", Summary: "Stream your grade results (Server-Sent Events)", Auth: true, Handler: s.gradeEvents,
			Description: "Each result of yours as it completes: `id:` is its sequence in the GRADES stream, `event:` grade.completed or grade.failed, `data:` the grade " +
				"(the result's fields; no submitted_at). Reconnect with `Last-Event-ID` (or ?last_event_id=) to get every result after it, then the live ones: none lost, none twice. " +
				"A comment line every 15 s keeps the stream open.",
			Query: []param{{Name: "last_event_id", Description: "Resume after this event id (for clients that cannot send the Last-Event-ID header).", Schema: M{"type": "integer", "minimum": 1}}},
			Responses: withErrors(map[int]resp{200: {Desc: "An endless text/event-stream.", Media: "text/event-stream", Schema: M{"type": "string"}},
				400: errResp("Last-Event-ID is not a positive integer.")}, 401, 503)},
		{Method: "GET", Path: "/api/v1/grades/:id", Tag: "grades", Summary: "Get a grade", Auth: true, Handler: s.getGrade,
			Responses: withErrors(map[int]resp{200: {Desc: "Completed, or failed with the reason.", Schema: ref("Grade")},
				202: {Desc: "Pending.", Schema: ref("Grade")}}, 401, 404, 503)},
		{Method: "GET", Path: "/api/v1/models", Tag: "grades", Summary: "List the loaded models", Auth: true, Handler: s.listModels,
			Responses: withErrors(map[int]resp{200: {Desc: "Models with labels and input shapes.", Schema: ref("ModelList")}}, 401, 503)},
	}
}
