package ingest

import (
	"net/url"
	"strconv"

	"github.com/gofiber/fiber/v2"
	"golang.org/x/sync/errgroup"

	"github.com/gradeline/gradeline/bus"
)

// reviewEntry is an image of the review queue with its latest prediction.
type reviewEntry struct {
	Image      bus.Image      `json:"image"`
	Prediction bus.ReviewItem `json:"prediction"`
}

// reviewQueue answers the caller's graded catalogue images, lowest top
// score of the latest prediction first (the images a person should look at
// first), optionally only those without an annotation; page by page
// (page=N). Images deleted since their grade are left out, so a page may
// hold fewer than per_page.
func (s *Server) reviewQueue(c *fiber.Ctx) error {
	page, perPage, cursor, err := parsePage(c)
	if err != nil {
		return err
	}
	if cursor != "" {
		return invalid("invalid query", "cursor: the review queue pages by page=N")
	}
	ctx, user := c.UserContext(), userOf(c)
	items, err := request[[]bus.ReviewItem](ctx, s, bus.SvcStatsReview,
		bus.ReviewQuery{Owner: user, Unannotated: c.QueryBool("unannotated"), Page: page, PerPage: perPage})
	if err != nil {
		return err
	}
	entries := make([]*reviewEntry, len(items))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, it := range items {
		g.Go(func() error {
			img, err := s.getImageMeta(gctx, user, it.ImageID)
			switch {
			case err == nil:
				entries[i] = &reviewEntry{Image: img, Prediction: it}
			case !isNotFound(err):
				return err
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	out := []reviewEntry{}
	for _, e := range entries {
		if e != nil {
			out = append(out, *e)
		}
	}
	resp := fiber.Map{"data": out, "page": page, "per_page": perPage}
	if len(items) == perPage {
		next := url.Values{"page": {strconv.Itoa(page + 1)}, "per_page": {strconv.Itoa(perPage)}}
		if c.QueryBool("unannotated") {
			next.Set("unannotated", "1")
		}
		resp["next"] = "/api/v1/review?" + next.Encode()
	}
	return c.JSON(resp)
}

// agreementStats compares the caller's predictions of a model on catalogue
// images with the image labels people gave them, per model version.
func (s *Server) agreementStats(c *fiber.Ctx) error {
	model := c.Query("model")
	switch {
	case model == "":
		return invalid("invalid query", "model: required")
	case !validModel.MatchString(model):
		return invalid("invalid query", "model: "+refRule)
	}
	if a, b := c.Query("a"), c.Query("b"); a != "" || b != "" {
		// Two versions of the model on the same grades (gradeline regrade).
		var details []string
		for _, v := range [][2]string{{"a", a}, {"b", b}} {
			if !validModel.MatchString(v[1]) {
				details = append(details, v[0]+": a model version ("+refRule+"), with the other")
			}
		}
		if len(details) > 0 {
			return invalid("invalid query", details...)
		}
		res, err := request[bus.RegradeAgreement](c.UserContext(), s, bus.SvcStatsRegrade, bus.RegradeAgreementQuery{Owner: userOf(c), Model: model, A: a, B: b})
		if err != nil {
			return err
		}
		return c.JSON(fiber.Map{"model": model, "data": res})
	}
	rows, err := request[[]bus.AgreementRow](c.UserContext(), s, bus.SvcStatsAgreement, bus.AgreementQuery{Owner: userOf(c), Model: model})
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"model": model, "data": nonNil(rows)})
}

// reviewRoutes put the least certain predictions in front of people and
// measure how often models and people agree.
func (s *Server) reviewRoutes() []route {
	return []route{
		{Method: "GET", Path: "/api/v1/review", Tag: "images", Summary: "Review queue: your least certain predictions first", Auth: true, Handler: s.reviewQueue,
			Description: "Your catalogue images graded with POST /api/v1/grades and their image_id, lowest top score of the latest prediction first; unannotated=1 keeps only images nobody has annotated. Pages by page=N.",
			Query:       append([]param{{Name: "unannotated", Description: "1 for images without an annotation only.", Schema: M{"type": "boolean"}}}, pageParams...),
			Responses: withErrors(map[int]resp{200: {Desc: "A page of images with their latest prediction.", Schema: M{"type": "object",
				"properties": M{"data": arrOf(M{"type": "object", "properties": M{"image": ref("Image"), "prediction": M{"type": "object"}}}),
					"page": M{"type": "integer"}, "per_page": M{"type": "integer"}, "next": M{"type": "string"}}}}}, 401, 422, 503)},
		{Method: "GET", Path: "/api/v1/stats/agreement", Tag: "stats", Summary: "Agreement of a model with people, or of two versions", Auth: true, Handler: s.agreementStats,
			Description: "Without a and b: per model version, over your graded catalogue images that have a human image label (not one accepted from a prediction): images compared, agreeing, the rate and the confusion counts. With a and b: over your grades of the model, version a's label against version b's for the same grade (served or from `gradeline regrade`): compared, agreeing, per label of a kept or changed, and the pairs.",
			Query: []param{{Name: "model", Required: true, Schema: M{"type": "string"}},
				{Name: "a", Description: "A model version (with b).", Schema: M{"type": "string"}}, {Name: "b", Description: "Another model version (with a).", Schema: M{"type": "string"}}},
			Responses: withErrors(map[int]resp{200: {Desc: "One row per model version.", Schema: M{"type": "object",
				"properties": M{"model": M{"type": "string"}, "data": arrOf(M{"type": "object"})}}}}, 401, 422, 503)},
	}
}
