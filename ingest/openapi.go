package ingest

import (
	_ "embed"
	"encoding/json"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
)

//go:embed docs.html
var docsHTML []byte

var pathParam = regexp.MustCompile(`:([A-Za-z0-9_]+)`)

// openAPIPath turns a Fiber path (/x/:id) into an OpenAPI one (/x/{id}).
func openAPIPath(p string) string { return pathParam.ReplaceAllString(p, "{$1}") }

func (s *Server) buildOpenAPI() ([]byte, error) {
	paths := M{}
	for _, r := range s.routes {
		p := openAPIPath(r.Path)
		item, _ := paths[p].(M)
		if item == nil {
			item = M{}
			paths[p] = item
		}
		op := M{
			"summary":     r.Summary,
			"operationId": operationID(r),
			"tags":        []string{r.Tag},
		}
		if r.Description != "" {
			op["description"] = r.Description
		}
		var params []M
		for _, m := range pathParam.FindAllStringSubmatch(r.Path, -1) {
			params = append(params, M{"name": m[1], "in": "path", "required": true, "schema": M{"type": "string"}})
		}
		for _, q := range r.Query {
			pm := M{"name": q.Name, "in": "query", "required": q.Required, "schema": q.Schema}
			if q.Description != "" {
				pm["description"] = q.Description
			}
			if q.Explode {
				pm["style"], pm["explode"] = "form", true
			}
			params = append(params, pm)
		}
		if publishes(r) {
			params = append(params, idempotencyParam)
			r.Responses = withErrors(r.Responses, 409, 422)
		}
		if len(params) > 0 {
			op["parameters"] = params
		}
		if r.Auth {
			op["security"] = []M{{"bearerAuth": []string{}}, {"cookieAuth": []string{}}}
			r.Responses = withErrors(r.Responses, 401)
		}
		if r.Body != nil {
			content := M{}
			for media, schema := range r.Body.Content {
				mt := M{"schema": schema}
				if r.Body.Example != nil && media == "application/json" {
					mt["example"] = r.Body.Example
				}
				if media == "multipart/form-data" {
					if props, ok := schema["properties"].(M); ok {
						if _, ok := props["tags"]; ok {
							mt["encoding"] = M{"tags": M{"style": "form", "explode": true}}
						}
					}
				}
				content[media] = mt
			}
			op["requestBody"] = M{"required": r.Body.Required, "content": content}
		}
		responses := M{}
		codes := make([]int, 0, len(r.Responses))
		for c := range r.Responses {
			codes = append(codes, c)
		}
		sort.Ints(codes)
		for _, c := range codes {
			rs := r.Responses[c]
			out := M{"description": rs.Desc}
			if rs.Schema != nil {
				media := rs.Media
				if media == "" {
					media = "application/json"
				}
				out["content"] = M{media: M{"schema": rs.Schema}}
			}
			if len(rs.Headers) > 0 {
				h := M{}
				for name, desc := range rs.Headers {
					h[name] = M{"description": desc, "schema": M{"type": "string"}}
				}
				out["headers"] = h
			}
			responses[strconv.Itoa(c)] = out
		}
		responses["default"] = M{"description": "Any error, as {code, message, details?}.", "content": M{"application/json": M{"schema": ref("Error")}}}
		if r.Tag == oipTag {
			responses["default"] = M{"description": "Any error, as {\"error\": \"...\"}.", "content": M{"application/json": M{"schema": oipErrorSchema}}}
		}
		op["responses"] = responses
		item[strings.ToLower(r.Method)] = op
	}
	doc := M{
		"openapi": "3.0.3",
		"info": M{
			"title":       "gradeline API",
			"version":     "1.0.0",
			"description": "HTTP edge of gradeline: auth, annotations, image grading, image catalogue, iris analytics. Every error is JSON {code, message, details?}. Every response carries X-Request-Id.",
		},
		"servers": []M{{"url": "/"}},
		// The document's tag list orders the docs page: the v1 API first,
		// the seed's compatibility aliases last.
		"tags": []M{
			{"name": "auth", "description": "Register and log in; the token is a JWT (12 h)"},
			{"name": "grades", "description": "Grade an image with a model"},
			{"name": oipTag, "description": "The Open Inference Protocol v2 (KServe, Triton clients): errors are {\"error\": \"...\"}"},
			{"name": "annotations", "description": "Annotations, stored exactly once"},
			{"name": "images", "description": "Your image catalogue with tags"},
			{"name": "exports", "description": "The catalogue with its annotations as COCO, YOLO or Label Studio; import from Label Studio"},
			{"name": "iris", "description": "Iris measurements, ranges and statistics (bounds inclusive)"},
			{"name": "stats", "description": "Grade and annotation statistics"},
			{"name": "system", "description": "Health, readiness, metrics and this documentation"},
			{"name": "seed", "description": "Compatibility aliases of the seed API"},
		},
		"paths": paths,
		"components": M{
			"securitySchemes": M{
				"bearerAuth": M{"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
				"cookieAuth": M{"type": "apiKey", "in": "cookie", "name": CookieName},
			},
			"schemas": schemas(),
		},
	}
	return json.MarshalIndent(doc, "", "  ")
}

func operationID(r route) string {
	p := strings.NewReplacer("/", "_", ":", "by_", "{", "", "}", "", ".", "_", "-", "_").Replace(strings.Trim(r.Path, "/"))
	if p == "" {
		p = "root"
	}
	return strings.ToLower(r.Method) + "_" + p
}

func schemas() M {
	str := M{"type": "string"}
	num := M{"type": "number"}
	integer := M{"type": "integer"}
	dt := M{"type": "string", "format": "date-time"}
	strs := arrOf(str)
	obj := func(required []string, props M) M {
		o := M{"type": "object", "properties": props}
		if len(required) > 0 {
			o["required"] = required
		}
		return o
	}
	page := func(item string) M {
		return obj([]string{"data", "total", "page", "per_page"}, M{"data": arrOf(ref(item)), "total": integer, "page": integer, "per_page": integer})
	}
	// A record listing pages by key and never counts: total only when the
	// whole result is on this page (then it is exact for free).
	list := func(item string) M {
		return obj([]string{"data", "per_page"}, M{"data": arrOf(ref(item)),
			"next":     M{"type": "string", "description": "Cursor of the following page: pass it as ?cursor=. Absent on the last page."},
			"total":    M{"type": "integer", "description": "Present only when the whole result fits this page (exact). Larger results are not counted."},
			"per_page": integer})
	}
	allScope := M{"type": "boolean", "description": "true: every user's activity (admin, all=1); false: the caller's own."}
	cols := M{"sepal_length": num, "sepal_width": num, "petal_length": num, "petal_width": num}
	bounds := M{"type": "object", "description": "Column -> bound (inclusive).",
		"properties": cols, "additionalProperties": false}
	species := M{"oneOf": []M{{"type": "string", "enum": []string{"setosa", "versicolor", "virginica"}},
		arrOf(M{"type": "string", "enum": []string{"setosa", "versicolor", "virginica"}})}}
	filter := M{"species": species, "lower": bounds, "upper": bounds}
	rangeQ := M{"species": species, "lower": bounds, "upper": bounds,
		"page": M{"type": "integer", "minimum": 1, "default": 1}, "per_page": M{"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
		"sort": M{"type": "string", "enum": []string{"sepal_length", "sepal_width", "petal_length", "petal_width"}}}
	seedQ := M{"species": species, "lower": bounds, "upper": bounds,
		"page": M{"type": "integer", "minimum": 1, "default": 1}, "per_page": M{"type": "integer", "minimum": 1, "maximum": 1000, "default": 150}}
	irisRow := obj([]string{"sepal_length", "sepal_width", "petal_length", "petal_width", "species"},
		M{"sepal_length": num, "sepal_width": num, "petal_length": num, "petal_width": num,
			"species": M{"type": "string", "enum": []string{"setosa", "versicolor", "virginica"}}})
	return M{
		"Error": obj([]string{"code", "message"}, M{"code": integer, "message": str, "details": strs}),
		"Credentials": obj(nil, M{
			"username":   M{"type": "string", "description": "Username or e-mail address."},
			"email":      M{"type": "string", "description": "Alternative identifier field (seed clients)."},
			"password":   M{"type": "string", "minLength": 8},
			"signupCode": M{"type": "string", "description": "Registration only."},
		}),
		"Token": obj([]string{"token", "expiresIn"}, M{"token": str, "expiresIn": M{"type": "integer", "example": 43200}, "username": str}),
		"AnnotationRequest": M{"type": "object", "required": []string{"annotation"}, "additionalProperties": false, "properties": M{
			"image_id":   str,
			"annotation": M{"type": "object", "description": "Any JSON object up to 64 KiB."},
			"username":   M{"type": "string", "description": "Optional; must equal the token's user."},
		}},
		"AnnotationAccepted": obj([]string{"id", "message"}, M{"id": str, "status": M{"type": "string", "example": "accepted"}, "message": M{"type": "string", "example": "Annotation received."}}),
		"Annotation":         obj([]string{"id", "author", "annotation"}, M{"id": str, "image_id": str, "author": str, "annotation": M{"type": "object"}, "created_at": dt}),
		"AnnotationPage":     list("Annotation"),
		"GradePage":          list("Grade"),
		"AnnotationPatch":    obj([]string{"annotation"}, M{"annotation": M{"type": "object"}}),
		"Shares":             obj([]string{"img_id", "shares"}, M{"img_id": str, "shares": strs}),
		"Grade": obj([]string{"id", "status", "model"}, M{
			"id": str, "status": M{"type": "string", "enum": []string{"pending", "completed", "failed"}},
			"image_id": str, "model": str, "model_version": str, "label": str, "score": num,
			"scores":       M{"type": "object", "additionalProperties": num},
			"inference_ms": num, "batch_size": integer, "reason": str, "submitted_at": dt, "completed_at": dt,
			"callbacks": M{"type": "array", "description": "Attempts to deliver the result to the submission's callback_url, oldest first.", "items": ref("CallbackAttempt")},
		}),
		"CallbackAttempt": obj([]string{"attempt", "at", "url", "outcome"}, M{"attempt": integer, "at": dt, "url": str,
			"status_code": M{"type": "integer", "description": "The receiver's status; absent when none came back."},
			"error":       M{"type": "string", "description": "Why no response came back, or why the response failed."},
			"duration_ms": num, "outcome": M{"type": "string", "enum": []string{"delivered", "retrying", "gave_up"}},
			"next_attempt_at": M{"type": "string", "format": "date-time", "description": "When the next attempt is due (retrying): after the backoff, or as the receiver's Retry-After says (429, 503; 1 s to 30 minutes)."},
			"retry_after":     M{"type": "string", "description": "The receiver's Retry-After header as it came (a 429 or 503 with one)."}}),
		"ModelInfo": obj([]string{"name"}, M{"name": str, "version": str, "task": str, "labels": strs,
			"input":     obj(nil, M{"name": str, "layout": str, "width": integer, "height": integer, "channels": integer}),
			"max_batch": integer, "accuracy": num,
			"output": obj(nil, M{"name": str, "kind": M{"type": "string", "enum": []string{"probabilities", "logits", "sigmoid"}}})}),
		"ModelList": obj([]string{"data", "total"}, M{"data": arrOf(ref("ModelInfo")), "total": integer}),
		"Image": obj([]string{"img_id", "owner", "tags"}, M{"img_id": str, "owner": str, "filename": str, "content_type": str,
			"sha256": str, "size": integer, "width": integer, "height": integer, "tags": strs, "created_at": dt, "updated_at": dt}),
		"ImagePage":   list("Image"),
		"Tags":        obj([]string{"img_id", "tags"}, M{"img_id": str, "tags": strs}),
		"TagsRequest": obj([]string{"tags"}, M{"tags": strs}),
		"IrisRow":     irisRow,
		"IrisMeasurements": M{"oneOf": []M{
			obj([]string{"rows"}, M{"rows": arrOf(ref("IrisRow")), "source": str}),
			arrOf(ref("IrisRow")),
		}},
		"IrisAccepted":   obj([]string{"accepted", "events"}, M{"accepted": integer, "events": integer, "event_ids": strs}),
		"IrisFilter":     M{"type": "object", "additionalProperties": false, "properties": filter},
		"IrisRangeQuery": M{"type": "object", "additionalProperties": false, "properties": rangeQ},
		"IrisSeedQuery":  M{"type": "object", "additionalProperties": false, "properties": seedQ},
		"IrisRangePage":  page("IrisRow"),
		"IrisStatsResult": obj([]string{"func", "data"}, M{"func": str, "data": arrOf(M{"type": "object",
			"description":          "label, count and <fn>_<column> for each column (mean_sepal_length, ...); q for quantile.",
			"properties":           M{"label": str, "count": integer, "mean_sepal_length": num, "mean_sepal_width": num, "mean_petal_length": num, "mean_petal_width": num},
			"additionalProperties": num})}),
		"IrisSeedRow": obj([]string{"label"}, M{"label": str, "sepal_length": num, "sepal_width": num, "petal_length": num, "petal_width": num}),
		"IrisSeedMean": obj([]string{"label"}, M{"label": str, "mean_sepal_length": num, "mean_sepal_width": num,
			"mean_petal_length": num, "mean_petal_width": num}),
		"GradeStatsRow": obj(nil, M{"bucket": dt, "model": str, "label": str, "count": integer, "mean_score": num,
			"p50_inference_ms": num, "p99_inference_ms": num}),
		"GradeStats":         obj([]string{"data"}, M{"model": str, "all": allScope, "from": dt, "to": dt, "bucket": str, "data": arrOf(ref("GradeStatsRow"))}),
		"AnnotationStatsRow": obj(nil, M{"bucket": dt, "author": str, "count": integer}),
		"AnnotationStats":    obj([]string{"data"}, M{"all": allScope, "from": dt, "to": dt, "bucket": str, "data": arrOf(ref("AnnotationStatsRow"))}),
	}
}

func (s *Server) serveOpenAPI(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSONCharsetUTF8)
	return c.Send(s.openapi)
}

func (s *Server) serveDocs(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
	// Everything is inline: no CDN, no external fetch but /openapi.json.
	c.Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:")
	return c.Send(docsHTML)
}
