package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
)

const maxDetails = 20

// irisRowIn is a measurement row with presence detection.
type irisRowIn struct {
	SepalLength *float64 `json:"sepal_length"`
	SepalWidth  *float64 `json:"sepal_width"`
	PetalLength *float64 `json:"petal_length"`
	PetalWidth  *float64 `json:"petal_width"`
	Species     *string  `json:"species"`
}

func addDetail(details []string, d string) []string {
	if len(details) < maxDetails {
		return append(details, d)
	}
	if len(details) == maxDetails {
		return append(details, "... more errors omitted")
	}
	return details
}

// parseMeasurements accepts {"rows": [...], "source"?} or a bare array.
func parseMeasurements(body []byte) ([]bus.IrisRow, string, error) {
	trimmed := bytes.TrimSpace(body)
	var rawRows []json.RawMessage
	var source string
	if len(trimmed) > 0 && trimmed[0] == '[' {
		if err := decodeJSON(trimmed, &rawRows, true); err != nil {
			return nil, "", err
		}
	} else {
		var req struct {
			Rows   *[]json.RawMessage `json:"rows"`
			Source string             `json:"source"`
		}
		if err := decodeJSON(trimmed, &req, true); err != nil {
			return nil, "", err
		}
		if req.Rows == nil {
			return nil, "", invalid("missing fields", "rows: required (an array of measurements)")
		}
		rawRows, source = *req.Rows, req.Source
		if len(source) > 128 || (source != "" && !validRef.MatchString(source)) {
			return nil, "", invalid("invalid request body", "source: up to 128 characters of letters, digits and . _ : -")
		}
	}
	if len(rawRows) == 0 {
		return nil, "", invalid("invalid request body", "rows: at least one measurement is required")
	}
	rows := make([]bus.IrisRow, 0, len(rawRows))
	var details []string
	for i, raw := range rawRows {
		var in irisRowIn
		if err := decodeJSON(raw, &in, true); err != nil {
			if ae, ok := err.(*apiError); ok && len(ae.Details) > 0 {
				details = addDetail(details, fmt.Sprintf("rows[%d].%s", i, ae.Details[0]))
			} else {
				details = addDetail(details, fmt.Sprintf("rows[%d]: %v", i, err))
			}
			continue
		}
		var missing []string
		for name, p := range map[string]*float64{"sepal_length": in.SepalLength, "sepal_width": in.SepalWidth,
			"petal_length": in.PetalLength, "petal_width": in.PetalWidth} {
			if p == nil {
				missing = append(missing, name)
			}
		}
		if in.Species == nil {
			missing = append(missing, "species")
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			for _, m := range missing {
				details = addDetail(details, fmt.Sprintf("rows[%d].%s: required", i, m))
			}
			continue
		}
		row := bus.IrisRow{SepalLength: *in.SepalLength, SepalWidth: *in.SepalWidth, PetalLength: *in.PetalLength,
			PetalWidth: *in.PetalWidth, Species: *in.Species}
		if err := row.Validate(); err != nil {
			details = addDetail(details, fmt.Sprintf("rows[%d]: %v", i, err))
			continue
		}
		rows = append(rows, row)
	}
	if len(details) > 0 {
		return nil, "", invalid("invalid measurements", details...)
	}
	return rows, source, nil
}

// createMeasurements validates the rows, publishes them in events of at
// most bus.MaxIrisRows and answers 202 once every event was acknowledged.
func (s *Server) createMeasurements(c *fiber.Ctx) error {
	if err := requireJSON(c); err != nil {
		return err
	}
	rows, source, err := parseMeasurements(c.Body())
	if err != nil {
		return err
	}
	ctx := c.UserContext()
	var events []*bus.IrisMeasured
	for start := 0; start < len(rows); start += bus.MaxIrisRows {
		end := min(start+bus.MaxIrisRows, len(rows))
		ev := &bus.IrisMeasured{Meta: bus.NewMeta(bus.TypeIrisMeasured), Source: source, Rows: rows[start:end]}
		ev.ID = idFor(ctx, fmt.Sprintf("iris/%d", start))
		events = append(events, ev)
	}
	// Four publishes in flight: each waits for its PubAck, and a failure
	// of one must not stop the others (the answer counts what was stored).
	errs := make([]error, len(events))
	var g errgroup.Group
	g.SetLimit(4)
	for i, ev := range events {
		g.Go(func() error { errs[i] = s.publish(ctx, ev); return nil })
	}
	_ = g.Wait()
	accepted, published := 0, 0
	var ids []string
	var firstErr error
	for i, err := range errs {
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		accepted += len(events[i].Rows)
		published++
		ids = append(ids, events[i].ID)
	}
	if firstErr != nil {
		return &apiError{Status: http.StatusServiceUnavailable,
			Message: fmt.Sprintf("only %d of %d rows (%d of %d events) were accepted; the event store did not acknowledge the rest", accepted, len(rows), published, len(events)),
			Extra:   map[string]any{"accepted": accepted, "events": published, "event_ids": ids}}
	}
	return c.Status(http.StatusAccepted).JSON(fiber.Map{"accepted": accepted, "events": published, "event_ids": ids})
}

// irisBody is a parsed range/stats body.
type irisBody struct {
	Filter  bus.IrisFilter
	Page    int
	PerPage int
	Sort    string
}

// parseIrisBody parses {species?, lower?, upper?, page?, per_page?, sort?}
// by hand so that every wrong type is reported with its field. allowed
// lists the keys this endpoint takes; defPerPage 0 is the contract's default
// (the seed's routes page by 150).
func parseIrisBody(body []byte, allowed []string, defPerPage int) (irisBody, error) {
	var out irisBody
	out.Page, out.PerPage = bus.PageDefaults(0, defPerPage)
	var fields map[string]json.RawMessage
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		trimmed = []byte("{}")
	}
	if trimmed[0] != '{' {
		if !json.Valid(trimmed) {
			return out, errorf(http.StatusBadRequest, "malformed JSON")
		}
		return out, invalid("invalid request body", "body: must be a JSON object")
	}
	if err := decodeJSON(trimmed, &fields, false); err != nil {
		return out, err
	}
	var details []string
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		raw := bytes.TrimSpace(fields[k])
		if !slices.Contains(allowed, k) {
			details = append(details, fmt.Sprintf("%s: unknown field (allowed: %s)", quoteField(k), strings.Join(allowed, ", ")))
			continue
		}
		if bytes.Equal(raw, []byte("null")) {
			continue
		}
		details = setIrisField(&out, k, raw, details)
	}
	// Every offending field is named at once, not one check at a time.
	var be *bus.Error
	if err := out.Filter.Validate(); errors.As(err, &be) {
		details = append(details, be.Details...)
	}
	if slices.Contains(allowed, "page") {
		if err := bus.ValidatePage(out.Page, out.PerPage); errors.As(err, &be) {
			details = append(details, be.Details...)
		}
	}
	if len(details) > 0 {
		sort.Strings(details)
		return out, invalid("invalid iris query", details...)
	}
	return out, nil
}

// setIrisField parses one field of a range/stats body into out and
// returns what is wrong with it, added to details.
func setIrisField(out *irisBody, k string, raw json.RawMessage, details []string) []string {
	switch k {
	case "species":
		var one string
		var many []string
		if json.Unmarshal(raw, &one) == nil {
			out.Filter.Species = []string{one}
		} else if json.Unmarshal(raw, &many) == nil {
			out.Filter.Species = many
		} else {
			details = append(details, "species: must be a string or an array of strings")
		}
	case "lower", "upper":
		var m map[string]json.RawMessage
		if json.Unmarshal(raw, &m) != nil || raw[0] != '{' {
			details = append(details, k+": must be an object mapping columns to numbers")
			return details
		}
		bounds := map[string]float64{}
		cols := make([]string, 0, len(m))
		for col := range m {
			cols = append(cols, col)
		}
		sort.Strings(cols)
		for _, col := range cols {
			v, err := jsonNumber(m[col])
			if err != nil {
				details = append(details, fmt.Sprintf("%s.%s: must be a number", k, quoteField(col)))
				continue
			}
			bounds[col] = v
		}
		if k == "lower" {
			out.Filter.Lower = bounds
		} else {
			out.Filter.Upper = bounds
		}
	case "page", "per_page":
		v, err := jsonNumber(raw)
		if err != nil || v != math.Trunc(v) || math.Abs(v) > 1e9 {
			details = append(details, k+": must be an integer")
			return details
		}
		if k == "page" {
			out.Page = int(v)
		} else {
			out.PerPage = int(v)
		}
	case "sort":
		var col string
		if json.Unmarshal(raw, &col) != nil {
			details = append(details, "sort: must be a string naming a column")
		} else if !slices.Contains(bus.IrisColumns, col) {
			details = append(details, fmt.Sprintf("sort: unknown column %s (known: %v)", quoteField(col), bus.IrisColumns))
		} else {
			out.Sort = col
		}
	}
	return details
}

// quoteField shows a client-supplied name safely inside a message.
func quoteField(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	if validRef.MatchString(s) {
		return s
	}
	return strconv.Quote(s)
}

// jsonNumber accepts only a JSON number (not a numeric string).
func jsonNumber(raw json.RawMessage) (float64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || !(raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')) {
		return 0, fmt.Errorf("not a number")
	}
	var v float64
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, err
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("not finite")
	}
	return v, nil
}

var (
	rangeFields = []string{"species", "lower", "upper", "page", "per_page", "sort"}
	statsFields = []string{"species", "lower", "upper"}
	seedFields  = []string{"species", "lower", "upper", "page", "per_page"}
)

func (s *Server) irisRange(ctx context.Context, b irisBody) (bus.Page[bus.IrisRow], error) {
	page, err := request[bus.Page[bus.IrisRow]](ctx, s, bus.SvcIrisRange,
		bus.IrisRangeQuery{IrisFilter: b.Filter, Page: b.Page, PerPage: b.PerPage, Sort: b.Sort})
	if page.Data == nil {
		page.Data = []bus.IrisRow{}
	}
	return page, err
}

// rangeV1 answers {data, page, per_page, total} as the analytics service does.
func (s *Server) rangeV1(c *fiber.Ctx) error {
	if err := requireJSON(c); err != nil {
		return err
	}
	b, err := parseIrisBody(c.Body(), rangeFields, 0)
	if err != nil {
		return err
	}
	page, err := s.irisRange(c.UserContext(), b)
	if err != nil {
		return err
	}
	return c.JSON(page)
}

// statsRows names every value "<fn>_<column>" next to label and count.
func statsRows(stats []bus.IrisStat, fn string, q *float64, withCount bool) []map[string]any {
	out := make([]map[string]any, 0, len(stats))
	for _, st := range stats {
		row := map[string]any{"label": st.Label}
		for _, col := range bus.IrisColumns {
			if v, ok := st.Values[col]; ok {
				row[fn+"_"+col] = v
			}
		}
		if withCount {
			row["count"] = st.Count
		}
		if q != nil {
			row["q"] = *q
		}
		out = append(out, row)
	}
	return out
}

func (s *Server) irisStats(ctx context.Context, f bus.IrisFilter, fn string, q float64) ([]bus.IrisStat, error) {
	return request[[]bus.IrisStat](ctx, s, bus.SvcIrisStats, bus.IrisStatsQuery{IrisFilter: f, Func: fn, Q: q})
}

// statsV1 serves /api/v1/iris/stats/mean and /api/v1/iris/stats/{fn}.
func (s *Server) statsV1(c *fiber.Ctx) error {
	fn := c.Params("fn", "mean")
	if c.Route().Path == "/api/v1/iris/stats/mean" {
		fn = "mean"
	}
	if !slices.Contains(bus.IrisStatsFuncs, fn) {
		return invalid("unknown statistic", fmt.Sprintf("fn: unknown function %s (known: %s)", quoteField(fn), strings.Join(bus.IrisStatsFuncs, ", ")))
	}
	var q *float64
	if v := c.Query("q"); v != "" || fn == "quantile" {
		if fn != "quantile" {
			return invalid("invalid query", "q: only the quantile function takes q")
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || f < 0 || f > 1 {
			return invalid("invalid query", "q: required for quantile, a number between 0 and 1")
		}
		q = &f
	}
	if err := requireJSON(c); err != nil {
		return err
	}
	b, err := parseIrisBody(c.Body(), statsFields, 0)
	if err != nil {
		return err
	}
	var qv float64
	if q != nil {
		qv = *q
	}
	stats, err := s.irisStats(c.UserContext(), b.Filter, fn, qv)
	if err != nil {
		return err
	}
	return c.JSON(fiber.Map{"func": fn, "data": statsRows(stats, fn, q, true)})
}

// irisRoutes add iris measurements and query them.
func (s *Server) irisRoutes() []route {
	return []route{
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
	}
}
