package ingest

import (
	"net/http"

	"github.com/gofiber/fiber/v2"
)

// seedRoutes are the seed project's routes, with its bodies and answers.
func (s *Server) seedRoutes() []route {
	return []route{
		{Method: "POST", Path: "/api/register", Tag: "seed", Summary: "Seed alias of POST /api/v1/auth/register", Handler: s.register, Body: credentialsBody,
			Responses: withErrors(map[int]resp{201: {Desc: "Created.", Schema: ref("Token")}, 403: errResp("Wrong signup code."), 409: errResp("Username taken.")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/user/register", Tag: "seed", Summary: "Seed alias of POST /api/v1/auth/register", Handler: s.register, Body: credentialsBody,
			Responses: withErrors(map[int]resp{201: {Desc: "Created.", Schema: ref("Token")}, 403: errResp("Wrong signup code."), 409: errResp("Username taken.")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/login", Tag: "seed", Summary: "Seed alias of POST /api/v1/auth/login", Handler: s.login, Body: credentialsBody,
			Responses: withErrors(map[int]resp{200: {Desc: "Logged in.", Schema: ref("Token")}, 401: errResp("Invalid username or password.")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/user/login", Tag: "seed", Summary: "Seed alias of POST /api/v1/auth/login (form with email and password)", Handler: s.login, Body: credentialsBody,
			Responses: withErrors(map[int]resp{200: {Desc: "Logged in.", Schema: ref("Token")}, 401: errResp("Invalid username or password.")}, 400, 422, 429, 503)},
		{Method: "POST", Path: "/api/annotation", Tag: "seed", Summary: "Seed alias: submit an annotation ({username, annotation})", Auth: true, Handler: s.createAnnotationSeed,
			Body: &reqBody{Required: true, Content: map[string]M{"application/json": ref("AnnotationRequest")},
				Example: M{"username": "alice", "annotation": M{"label": "exudate"}}},
			Responses: withErrors(map[int]resp{200: {Desc: "Accepted (the seed's status).", Schema: ref("AnnotationAccepted")},
				403: errResp("Body username differs from the token's user.")}, 400, 401, 413, 415, 422, 503)},
		{Method: "POST", Path: "/api/grade", Tag: "seed", Summary: "Seed alias of POST /api/v1/grades (form: image, model_selected)", Auth: true, Handler: s.submitGrade,
			Query: []param{gradeWaitParam}, Body: gradeBody, Responses: gradeResponses()},
		{Method: "GET", Path: "/api/image/:id", Tag: "seed", Summary: "Seed alias of GET /api/v1/images/{id}", Auth: true, Handler: s.getImage,
			Responses: withErrors(map[int]resp{200: {Desc: "The image.", Schema: ref("Image")}}, 401, 404, 503)},
		{Method: "POST", Path: "/api/images", Tag: "seed", Summary: "Seed alias of POST /api/v1/images", Auth: true, Handler: s.createImage, Body: imageBody,
			Responses: withErrors(map[int]resp{201: {Desc: "Catalogued.", Schema: ref("Image")}}, 400, 401, 413, 415, 422, 503)},
		{Method: "POST", Path: "/range/", Tag: "seed", Summary: "Seed alias: rows within bounds as a bare list with label", Auth: true, Handler: s.rangeSeed,
			Body:      &reqBody{Content: map[string]M{"application/json": ref("IrisSeedQuery")}, Example: M{"species": "setosa", "lower": M{"sepal_length": 5.0, "sepal_width": 3.0}, "upper": M{"sepal_length": 5.1}}},
			Responses: withErrors(map[int]resp{200: {Desc: "Bare list of rows.", Schema: arrOf(ref("IrisSeedRow"))}}, 400, 401, 422, 503)},
		{Method: "POST", Path: "/stats/mean/", Tag: "seed", Summary: "Seed alias: means per species as a bare list with label", Auth: true, Handler: s.meanSeed,
			Body:      &reqBody{Content: map[string]M{"application/json": ref("IrisSeedQuery")}, Example: irisQueryExample},
			Responses: withErrors(map[int]resp{200: {Desc: "Bare list of means.", Schema: arrOf(ref("IrisSeedMean"))}}, 400, 401, 422, 503)},
	}
}

// createAnnotationSeed is the seed's POST /api/annotation: same body
// ({username, annotation}), the seed's answer {"message": "Annotation
// received."} plus the id, with the seed's status 200.
func (s *Server) createAnnotationSeed(c *fiber.Ctx) error {
	ev, err := s.parseAnnotation(c, false)
	if err != nil {
		return err
	}
	if err := s.publish(c.UserContext(), ev); err != nil {
		return err
	}
	return c.Status(http.StatusOK).JSON(annotationAccepted{ID: ev.ID, Message: "Annotation received."})
}

// seedPerPage is the seed API's default page size.
const seedPerPage = 150

// seedIrisRow is a row as the seed's /range/ answers it: the species under "label".
type seedIrisRow struct {
	Label       string  `json:"label"`
	SepalLength float64 `json:"sepal_length"`
	SepalWidth  float64 `json:"sepal_width"`
	PetalLength float64 `json:"petal_length"`
	PetalWidth  float64 `json:"petal_width"`
}

// rangeSeed is the seed's POST /range/: a bare list of rows with the
// species under "label".
func (s *Server) rangeSeed(c *fiber.Ctx) error {
	b, err := parseIrisBody(c.Body(), seedFields, seedPerPage)
	if err != nil {
		return err
	}
	page, err := s.irisRange(c.UserContext(), b)
	if err != nil {
		return err
	}
	out := make([]seedIrisRow, len(page.Data))
	for i, r := range page.Data {
		out[i] = seedIrisRow{Label: r.Species, SepalLength: r.SepalLength, SepalWidth: r.SepalWidth, PetalLength: r.PetalLength, PetalWidth: r.PetalWidth}
	}
	return c.JSON(out)
}

// meanSeed is the seed's POST /stats/mean/: a bare list of
// {label, mean_sepal_length, ...}, paginated over species as the seed did.
func (s *Server) meanSeed(c *fiber.Ctx) error {
	b, err := parseIrisBody(c.Body(), seedFields, seedPerPage)
	if err != nil {
		return err
	}
	stats, err := s.irisStats(c.UserContext(), b.Filter, "mean", 0)
	if err != nil {
		return err
	}
	rows := statsRows(stats, "mean", nil, false)
	start := min((b.Page-1)*b.PerPage, len(rows))
	end := min(start+b.PerPage, len(rows))
	return c.JSON(rows[start:end])
}
