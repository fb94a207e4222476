package ingest

import (
	"github.com/gofiber/fiber/v2"
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
		{Name: "per_page", Description: "Items per page.", Schema: M{"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
	}
	credentialsBody = &reqBody{Required: true, Content: map[string]M{
		"application/json":                  ref("Credentials"),
		"application/x-www-form-urlencoded": ref("Credentials"),
		"multipart/form-data":               ref("Credentials"),
	}}
	gradeBody = &reqBody{Required: true, Content: map[string]M{"multipart/form-data": {
		"type": "object", "required": []string{"image"},
		"properties": M{
			"image":          M{"type": "string", "format": "binary", "description": "JPEG, PNG, GIF, WebP or BMP."},
			"model":          M{"type": "string", "description": "Model name (see GET /api/v1/models)."},
			"model_selected": M{"type": "string", "description": "Seed name of the model field; used when model is absent."},
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

func (s *Server) routeTable() []route {
	gradeResponses := withErrors(map[int]resp{
		200: {Desc: "Graded within the wait.", Schema: ref("Grade")},
		202: {Desc: "Accepted, not graded yet; poll Location.", Schema: ref("Grade"), Headers: map[string]string{"Location": "URL of the grade."}},
		404: {Desc: "Unknown model; the message names the available models.", Schema: ref("Error")},
		422: {Desc: "Missing fields, undecodable image, or grading failed (the reason is in message, details and reason).", Schema: ref("Error")},
	}, 400, 401, 413, 415, 503)
	return []route{
		// System.
		{Method: "GET", Path: "/healthz", Tag: "system", Summary: "Liveness", Handler: s.healthz,
			Responses: map[int]resp{200: {Desc: "Alive.", Schema: M{"type": "object", "properties": M{"status": M{"type": "string"}}}}}},
		{Method: "GET", Path: "/readyz", Tag: "system", Summary: "Readiness: NATS connected and MongoDB answering", Handler: s.readyz,
			Responses: map[int]resp{200: {Desc: "Ready.", Schema: M{"type": "object"}}, 503: errResp("Not ready; details say which dependency.")}},
		{Method: "GET", Path: "/openapi.json", Tag: "system", Summary: "This OpenAPI document", Handler: s.serveOpenAPI,
			Responses: map[int]resp{200: {Desc: "OpenAPI 3 document.", Schema: M{"type": "object"}}}},
		{Method: "GET", Path: "/docs", Tag: "system", Summary: "Interactive API page", Handler: s.serveDocs,
			Responses: map[int]resp{200: {Desc: "HTML page.", Media: "text/html", Schema: M{"type": "string"}}}},

		// Auth.
		{Method: "POST", Path: "/api/v1/auth/register", Tag: "auth", Summary: "Create an account", Handler: s.register,
			Description: "Needs the signup code. Usernames are unique case-insensitively; e-mail addresses are valid usernames. Passwords have at least 8 characters.",
			Body:        credentialsBody,
			Responses: withErrors(map[int]resp{201: {Desc: "Created; the token is also set as an HttpOnly cookie.", Schema: ref("Token")},
				403: errResp("Wrong signup code."), 409: errResp("Username taken (case-insensitive).")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/v1/auth/login", Tag: "auth", Summary: "Log in with username (or email) and password", Handler: s.login,
			Description: "Accepts JSON or a form. Unknown user and wrong password answer the same 401. Repeated failures for one account from one client address, or from one address overall, answer 429 with Retry-After and a delay that grows with each further failure; the account is never locked as a whole.",
			Body:        credentialsBody,
			Responses: withErrors(map[int]resp{200: {Desc: "Logged in; the token is also set as an HttpOnly, SameSite=Strict cookie.", Schema: ref("Token")},
				401: errResp("Invalid username or password.")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/v1/auth/logout", Tag: "auth", Summary: "Log out: revoke the token of this request", Auth: true, Handler: s.logout,
			Description: "The token (bearer or cookie) is revoked on every edge replica until it expires, and the cookie is cleared. Other tokens of the user stay valid.",
			Responses:   withErrors(map[int]resp{200: {Desc: "Revoked.", Schema: M{"type": "object", "properties": M{"status": M{"type": "string"}}}}}, 401, 503)},
		{Method: "POST", Path: "/api/register", Tag: "seed", Summary: "Seed alias of POST /api/v1/auth/register", Handler: s.register, Body: credentialsBody,
			Responses: withErrors(map[int]resp{201: {Desc: "Created.", Schema: ref("Token")}, 403: errResp("Wrong signup code."), 409: errResp("Username taken.")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/user/register", Tag: "seed", Summary: "Seed alias of POST /api/v1/auth/register", Handler: s.register, Body: credentialsBody,
			Responses: withErrors(map[int]resp{201: {Desc: "Created.", Schema: ref("Token")}, 403: errResp("Wrong signup code."), 409: errResp("Username taken.")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/login", Tag: "seed", Summary: "Seed alias of POST /api/v1/auth/login", Handler: s.login, Body: credentialsBody,
			Responses: withErrors(map[int]resp{200: {Desc: "Logged in.", Schema: ref("Token")}, 401: errResp("Invalid username or password.")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/user/login", Tag: "seed", Summary: "Seed alias of POST /api/v1/auth/login (form with email and password)", Handler: s.login, Body: credentialsBody,
			Responses: withErrors(map[int]resp{200: {Desc: "Logged in.", Schema: ref("Token")}, 401: errResp("Invalid username or password.")}, 400, 422, 429, 503)},

		// Annotations.
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
		{Method: "POST", Path: "/api/annotation", Tag: "seed", Summary: "Seed alias: submit an annotation ({username, annotation})", Auth: true, Handler: s.createAnnotationSeed,
			Body: &reqBody{Required: true, Content: map[string]M{"application/json": ref("AnnotationRequest")},
				Example: M{"username": "alice", "annotation": M{"label": "exudate"}}},
			Responses: withErrors(map[int]resp{200: {Desc: "Accepted (the seed's status).", Schema: ref("AnnotationAccepted")},
				403: errResp("Body username differs from the token's user.")}, 400, 401, 413, 415, 422, 503)},

		// Grading.
		{Method: "POST", Path: "/api/v1/grades", Tag: "grades", Summary: "Grade an image with a model", Auth: true, Handler: s.submitGrade,
			Description: "Stores the image, publishes it for grading and waits up to ?wait for the result.",
			Query:       []param{gradeWaitParam}, Body: gradeBody, Responses: gradeResponses},
		{Method: "GET", Path: "/api/v1/grades/:id", Tag: "grades", Summary: "Get a grade", Auth: true, Handler: s.getGrade,
			Responses: withErrors(map[int]resp{200: {Desc: "Completed, or failed with the reason.", Schema: ref("Grade")},
				202: {Desc: "Pending.", Schema: ref("Grade")}}, 401, 404, 503)},
		{Method: "POST", Path: "/api/grade", Tag: "seed", Summary: "Seed alias of POST /api/v1/grades (form: image, model_selected)", Auth: true, Handler: s.submitGrade,
			Query: []param{gradeWaitParam}, Body: gradeBody, Responses: gradeResponses},
		{Method: "GET", Path: "/api/v1/models", Tag: "grades", Summary: "List the loaded models", Auth: true, Handler: s.listModels,
			Responses: withErrors(map[int]resp{200: {Desc: "Models with labels and input shapes.", Schema: ref("ModelList")}}, 401, 503)},

		// Image catalogue.
		{Method: "POST", Path: "/api/v1/images", Tag: "images", Summary: "Add an image to your catalogue", Auth: true, Handler: s.createImage, Body: imageBody,
			Responses: withErrors(map[int]resp{201: {Desc: "Catalogued.", Schema: ref("Image"), Headers: map[string]string{"Location": "URL of the image."}}}, 400, 401, 413, 415, 422, 503)},
		{Method: "GET", Path: "/api/v1/images", Tag: "images", Summary: "List your images, filtered by tags (all must match)", Auth: true, Handler: s.listImages,
			Query:     append([]param{{Name: "tag", Description: "Repeat for several tags.", Schema: arrOf(M{"type": "string"}), Explode: true}}, pageParams...),
			Responses: withErrors(map[int]resp{200: {Desc: "A page of images.", Schema: ref("ImagePage")}}, 401, 422, 503)},
		{Method: "GET", Path: "/api/v1/images/:id", Tag: "images", Summary: "Image metadata", Auth: true, Handler: s.getImage,
			Responses: withErrors(map[int]resp{200: {Desc: "The image.", Schema: ref("Image")}}, 401, 404, 503)},
		{Method: "DELETE", Path: "/api/v1/images/:id", Tag: "images", Summary: "Delete an image", Auth: true, Handler: s.deleteImage,
			Responses: withErrors(map[int]resp{204: {Desc: "Deleted."}}, 401, 404, 503)},
		{Method: "GET", Path: "/api/v1/images/:id/content", Tag: "images", Summary: "Image bytes", Auth: true, Handler: s.imageContent,
			Description: "ETag is the sha256 of the bytes; If-None-Match answers 304.",
			Responses: withErrors(map[int]resp{200: {Desc: "The bytes.", Media: "image/*", Schema: M{"type": "string", "format": "binary"},
				Headers: map[string]string{"ETag": "Quoted sha256 of the bytes."}}, 304: {Desc: "Not modified."}}, 401, 404, 503)},
		{Method: "GET", Path: "/api/v1/images/:id/shares", Tag: "images", Summary: "Users your image is shared with", Auth: true, Handler: s.listShares,
			Responses: withErrors(map[int]resp{200: {Desc: "The share list.", Schema: ref("Shares")}, 403: errResp("Shared with you; only the owner sees the list.")}, 401, 404, 503)},
		{Method: "PUT", Path: "/api/v1/images/:id/shares/:username", Tag: "images", Summary: "Share your image with a user", Auth: true, Handler: s.putShare,
			Description: "They may then see the image and its annotations, and annotate it. Idempotent.",
			Responses:   withErrors(map[int]resp{200: {Desc: "The share list.", Schema: ref("Shares")}, 403: errResp("Not the owner.")}, 401, 404, 422, 503)},
		{Method: "DELETE", Path: "/api/v1/images/:id/shares/:username", Tag: "images", Summary: "Stop sharing your image with a user", Auth: true, Handler: s.deleteShare,
			Responses: withErrors(map[int]resp{200: {Desc: "The share list.", Schema: ref("Shares")}, 403: errResp("Not the owner.")}, 401, 404, 503)},
		{Method: "GET", Path: "/api/v1/images/:id/tags", Tag: "images", Summary: "Tags of an image", Auth: true, Handler: s.getTags,
			Responses: withErrors(map[int]resp{200: {Desc: "Tags.", Schema: ref("Tags")}}, 401, 404, 503)},
		{Method: "PUT", Path: "/api/v1/images/:id/tags", Tag: "images", Summary: "Replace the tags of an image", Auth: true, Handler: s.putTags,
			Body:      &reqBody{Required: true, Content: map[string]M{"application/json": ref("TagsRequest")}, Example: M{"tags": []string{"retina", "left-eye"}}},
			Responses: withErrors(map[int]resp{200: {Desc: "Tags set.", Schema: ref("Tags")}}, 400, 401, 404, 415, 422, 503)},
		{Method: "DELETE", Path: "/api/v1/images/:id/tags", Tag: "images", Summary: "Remove all tags of an image", Auth: true, Handler: s.deleteTags,
			Responses: withErrors(map[int]resp{200: {Desc: "Tags removed.", Schema: ref("Tags")}}, 401, 404, 503)},
		{Method: "GET", Path: "/api/image/:id", Tag: "seed", Summary: "Seed alias of GET /api/v1/images/{id}", Auth: true, Handler: s.getImage,
			Responses: withErrors(map[int]resp{200: {Desc: "The image.", Schema: ref("Image")}}, 401, 404, 503)},
		{Method: "POST", Path: "/api/images", Tag: "seed", Summary: "Seed alias of POST /api/v1/images", Auth: true, Handler: s.createImage, Body: imageBody,
			Responses: withErrors(map[int]resp{201: {Desc: "Catalogued.", Schema: ref("Image")}}, 400, 401, 413, 415, 422, 503)},

		// Iris.
		{Method: "POST", Path: "/api/v1/iris/measurements", Tag: "iris", Summary: "Add iris measurements", Auth: true, Handler: s.createMeasurements,
			Description: "Validates every row, publishes events of at most 10000 rows, answers 202 once all were acknowledged.",
			Body: &reqBody{Required: true, Content: map[string]M{"application/json": ref("IrisMeasurements")},
				Example: M{"rows": []M{{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2, "species": "setosa"}}}},
			Responses: withErrors(map[int]resp{202: {Desc: "Accepted.", Schema: ref("IrisAccepted")}}, 400, 401, 413, 415, 422, 503)},
		{Method: "POST", Path: "/api/v1/iris/range", Tag: "iris", Summary: "Rows within bounds", Auth: true, Handler: s.rangeV1,
			Description: "lower <= value <= upper, both inclusive. Stable order (sort column, then row id) so pages never overlap or skip.",
			Body:        &reqBody{Content: map[string]M{"application/json": ref("IrisRangeQuery")}, Example: irisQueryExample},
			Responses:   withErrors(map[int]resp{200: {Desc: "A page of rows.", Schema: ref("IrisRangePage")}}, 400, 401, 415, 422, 503)},
		{Method: "POST", Path: "/api/v1/iris/stats/mean", Tag: "iris", Summary: "Mean per species", Auth: true, Handler: s.statsV1,
			Body:      &reqBody{Content: map[string]M{"application/json": ref("IrisFilter")}, Example: irisQueryExample},
			Responses: withErrors(map[int]resp{200: {Desc: "Per species {label, mean_<column>..., count}.", Schema: ref("IrisStatsResult")}}, 400, 401, 415, 422, 503)},
		{Method: "POST", Path: "/api/v1/iris/stats/:fn", Tag: "iris", Summary: "Statistic per species: min, max, median, stddev, count, quantile (?q=)", Auth: true, Handler: s.statsV1,
			Query:     []param{{Name: "q", Description: "Quantile in [0, 1]; required for quantile.", Schema: M{"type": "number", "minimum": 0, "maximum": 1}}},
			Body:      &reqBody{Content: map[string]M{"application/json": ref("IrisFilter")}, Example: irisQueryExample},
			Responses: withErrors(map[int]resp{200: {Desc: "Per species {label, <fn>_<column>..., count}.", Schema: ref("IrisStatsResult")}}, 400, 401, 415, 422, 503)},
		{Method: "POST", Path: "/range/", Tag: "seed", Summary: "Seed alias: rows within bounds as a bare list with label", Auth: true, Handler: s.rangeSeed,
			Body:      &reqBody{Content: map[string]M{"application/json": ref("IrisSeedQuery")}, Example: M{"species": "setosa", "lower": M{"sepal_length": 5.0, "sepal_width": 3.0}, "upper": M{"sepal_length": 5.1}}},
			Responses: withErrors(map[int]resp{200: {Desc: "Bare list of rows.", Schema: arrOf(ref("IrisSeedRow"))}}, 400, 401, 422, 503)},
		{Method: "POST", Path: "/stats/mean/", Tag: "seed", Summary: "Seed alias: means per species as a bare list with label", Auth: true, Handler: s.meanSeed,
			Body:      &reqBody{Content: map[string]M{"application/json": ref("IrisSeedQuery")}, Example: irisQueryExample},
			Responses: withErrors(map[int]resp{200: {Desc: "Bare list of means.", Schema: arrOf(ref("IrisSeedMean"))}}, 400, 401, 422, 503)},

		// Statistics.
		{Method: "GET", Path: "/api/v1/stats/grades", Tag: "stats", Summary: "Grades per time bucket and label", Auth: true, Handler: s.gradeStats,
			Description: "Counts the grades the caller submitted. An admin may pass all=1 for every user's grades.",
			Query:       append([]param{{Name: "model", Schema: M{"type": "string"}}, statsAllParam}, windowParams...),
			Responses: withErrors(map[int]resp{200: {Desc: "Count, mean top score, p50/p99 inference time per bucket and label.", Schema: ref("GradeStats")},
				403: errResp("all=1 from a user without the admin role.")}, 401, 422, 503)},
		{Method: "GET", Path: "/api/v1/stats/annotations", Tag: "stats", Summary: "Annotations per time bucket and author", Auth: true, Handler: s.annotationStats,
			Description: "Counts the annotations the caller made. An admin may pass all=1 for every user's annotations, per author.",
			Query:       append([]param{statsAllParam}, windowParams...),
			Responses: withErrors(map[int]resp{200: {Desc: "Counts per bucket and author.", Schema: ref("AnnotationStats")},
				403: errResp("all=1 from a user without the admin role.")}, 401, 422, 503)},
	}
}
