package ingest

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
)

// Statistics routes count the caller's own activity: the grades they
// submitted and the annotations they made. An admin (a role on the user
// record, granted by `gradeline admin grant USER`) may ask for everyone's
// with ?all=1; without it an admin sees their own like anyone else, so a
// dashboard never widens by surprise when its user is made an admin.

// timeWindow parses ?from=&to=&bucket= (RFC 3339 times, Go durations)
// and checks the window by the contract's rule, so a bad window is 422
// even when analytics is down.
func timeWindow(c *fiber.Ctx) (from, to time.Time, bucket time.Duration, err error) {
	var details []string
	for _, p := range []struct {
		name string
		t    *time.Time
	}{{"from", &from}, {"to", &to}} {
		if v := c.Query(p.name); v != "" {
			if *p.t, err = time.Parse(time.RFC3339, v); err != nil {
				details = append(details, p.name+": must be an RFC 3339 time, e.g. 2026-01-02T15:04:05Z")
			}
		}
	}
	if v := c.Query("bucket"); v != "" {
		switch bucket, err = time.ParseDuration(v); {
		case err != nil:
			details = append(details, "bucket: must be a duration such as 5m, 1h or 24h")
		case bucket == 0: // given, not left to the default
			details = append(details, fmt.Sprintf("bucket: must be at least %v", bus.MinStatsBucket))
		}
	}
	if len(details) > 0 {
		return from, to, bucket, invalid("invalid query", details...)
	}
	err = bus.NormalizeStatsWindow(&from, &to, &bucket, time.Now())
	return from, to, bucket, err
}

// statsScope resolves whose activity a statistics request counts: the
// caller's own, or everyone's with ?all=1, which only an admin may ask for
// (403 otherwise). The role is read from the user record on every such
// request rather than carried in the token, so a revoke takes effect at once.
func (s *Server) statsScope(c *fiber.Ctx) (user string, all bool, err error) {
	user = userOf(c)
	if v := c.Query("all"); v != "" {
		all, err = strconv.ParseBool(v)
		if err != nil {
			return "", false, invalid("invalid query", "all: must be 1 or 0 (or true or false)")
		}
	}
	if !all {
		return user, false, nil
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), 10*time.Second)
	defer cancel()
	admin, err := s.users.HasRole(ctx, user, RoleAdmin)
	if err != nil {
		return "", false, storeUnavailable(err)
	}
	if !admin {
		return "", false, &apiError{Status: http.StatusForbidden, Message: "only an admin may see every user's statistics",
			Details: []string{"all: needs the admin role (granted with `gradeline admin grant USER`); without all you see your own"}}
	}
	return "", true, nil
}

func (s *Server) gradeStats(c *fiber.Ctx) error {
	from, to, bucket, err := timeWindow(c)
	if err != nil {
		return err
	}
	model := c.Query("model")
	if model != "" && !validModel.MatchString(model) {
		return invalid("invalid query", "model: "+refRule)
	}
	owner, all, err := s.statsScope(c)
	if err != nil {
		return err
	}
	rows, err := request[[]bus.GradeStatsRow](c.UserContext(), s, bus.SvcStatsGrades,
		bus.GradeStatsQuery{Owner: owner, All: all, Model: model, From: from, To: to, Bucket: bucket})
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"model": model, "all": all, "from": from, "to": to, "bucket": bucket.String(), "data": nonNil(rows)})
}

func (s *Server) annotationStats(c *fiber.Ctx) error {
	from, to, bucket, err := timeWindow(c)
	if err != nil {
		return err
	}
	author, all, err := s.statsScope(c)
	if err != nil {
		return err
	}
	rows, err := request[[]bus.AnnotationStatsRow](c.UserContext(), s, bus.SvcStatsAnnotations,
		bus.AnnotationStatsQuery{Author: author, All: all, From: from, To: to, Bucket: bucket})
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"all": all, "from": from, "to": to, "bucket": bucket.String(), "data": nonNil(rows)})
}

// statsRoutes count the caller's (or, for admins, everyone's) grades and annotations.
func (s *Server) statsRoutes() []route {
	return []route{
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

// nonNil makes an empty reply a JSON [] rather than null.
func nonNil[T any](rows []T) []T {
	if rows == nil {
		return []T{}
	}
	return rows
}
