package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/gradeline/gradeline/bus"
)

// maxBodyDepth bounds the nesting of every JSON body: an annotation
// (bus.MaxAnnotationDepth levels) inside its request object is the deepest
// body a client has reason to send.
const maxBodyDepth = bus.MaxAnnotationDepth + 1

// decodeJSON decodes one JSON value from data into v. Syntax errors are 400;
// wrong types and (when strict) unknown fields are 422 naming the field, as
// are duplicate keys and nesting beyond maxBodyDepth.
func decodeJSON(data []byte, v any, strict bool) error {
	if err := checkJSONBody(data, maxBodyDepth, "body"); err != nil {
		return err
	}
	return decodeCheckedJSON(data, v, strict)
}

// checkJSONBody applies bus.CheckJSON and turns its findings into client
// errors naming what (the body, or the part of it being checked).
func checkJSONBody(data []byte, depth int, what string) error {
	err := bus.CheckJSON(data, depth)
	if err == nil {
		return nil
	}
	var je *bus.JSONError
	if errors.As(err, &je) && je.Err == bus.ErrJSONNotUTF8 {
		return &apiError{Status: http.StatusBadRequest, Message: "malformed JSON: the body must be UTF-8", Details: []string{what + ": " + err.Error()}}
	}
	return invalid("invalid JSON", what+": "+err.Error())
}

// decodeCheckedJSON is decodeJSON for data checkJSONBody already passed.
func decodeCheckedJSON(data []byte, v any, strict bool) error {
	if len(bytes.TrimSpace(data)) == 0 {
		data = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errorf(http.StatusBadRequest, "malformed JSON: unexpected data after the JSON value")
	}
	return nil
}

// jsonError maps an encoding/json error to a client error.
func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return &apiError{Status: http.StatusBadRequest, Message: "malformed JSON", Details: []string{fmt.Sprintf("offset %d: %v", syn.Offset, syn)}}
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return &apiError{Status: http.StatusBadRequest, Message: "malformed JSON", Details: []string{"unexpected end of input"}}
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "body"
		}
		return invalid("invalid request body", fmt.Sprintf("%s: must be %s, not %s", field, jsonKind(typ.Type.Kind().String()), typ.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		return invalid("invalid request body", fmt.Sprintf("%s: unknown field", strings.Trim(name, `"`)))
	default:
		return &apiError{Status: http.StatusBadRequest, Message: "malformed JSON", Cause: err}
	}
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "float64", "float32", "int", "int64", "int32", "uint64", "uint32", "uint":
		return "a number"
	case "bool":
		return "a boolean"
	case "slice", "array":
		return "an array"
	case "map", "struct":
		return "an object"
	default:
		return "of type " + k
	}
}

// Ids and references clients pass: printable, bounded, no whitespace.
var validRef = regexp.MustCompile(`^[A-Za-z0-9._:\-]{1,128}$`)

// refRule is what validRef checks, for messages.
const refRule = "1 to 128 characters of letters, digits and . _ : -"

func requireJSON(c *fiber.Ctx) error {
	ct := strings.ToLower(strings.TrimSpace(c.Get(fiber.HeaderContentType)))
	if ct == "" || strings.HasPrefix(ct, fiber.MIMEApplicationJSON) || strings.Contains(ct, "+json") {
		return checkJSONCharset(ct)
	}
	return errorf(http.StatusUnsupportedMediaType, "Content-Type must be application/json, not %q", ct)
}

// checkJSONCharset refuses a JSON media type declaring a charset other
// than UTF-8: JSON is UTF-8 (RFC 8259), and decoding UTF-16 bytes as UTF-8
// would silently store something else than the client sent.
func checkJSONCharset(ct string) error {
	if !isJSONType(ct) {
		return nil
	}
	_, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return errorf(http.StatusUnsupportedMediaType, "malformed Content-Type %q", ct)
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
		return errorf(http.StatusUnsupportedMediaType, "JSON must be UTF-8, not charset=%s", cs)
	}
	return nil
}

func isJSONType(ct string) bool {
	mt, _, _ := strings.Cut(strings.ToLower(ct), ";")
	mt = strings.TrimSpace(mt)
	return mt == fiber.MIMEApplicationJSON || strings.HasSuffix(mt, "+json")
}

// parsePage reads ?page=&per_page=&cursor= with defaults and bounds. The
// cursor (a listing's "next") is checked by the service that issued it.
func parsePage(c *fiber.Ctx) (page, perPage int, cursor string, err error) {
	page, perPage = bus.PageDefaults(0, 0)
	cursor = c.Query("cursor")
	var details []string
	if len(cursor) > 512 {
		details = append(details, "cursor: not a cursor returned by a previous page")
	}
	if v := c.Query("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			details = append(details, "page: must be an integer")
		} else {
			page = n
		}
	}
	if v := c.Query("per_page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			details = append(details, "per_page: must be an integer")
		} else {
			perPage = n
		}
	}
	if len(details) > 0 {
		return 0, 0, "", invalid("invalid pagination", details...)
	}
	if err := bus.ValidatePage(page, perPage); err != nil {
		return 0, 0, "", err
	}
	return page, perPage, cursor, nil
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func isForm(c *fiber.Ctx) bool {
	ct := strings.ToLower(c.Get(fiber.HeaderContentType))
	return strings.HasPrefix(ct, fiber.MIMEApplicationForm) || strings.HasPrefix(ct, fiber.MIMEMultipartForm)
}
