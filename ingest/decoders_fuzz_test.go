package ingest

import (
	"bytes"
	"errors"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"
)

// clientError fails t unless err is nil or an *apiError with a 4xx status:
// what a client sends never makes a 500.
func clientError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var ae *apiError
	if !errors.As(err, &ae) || ae.Status < 400 || ae.Status > 499 {
		t.Fatalf("not a client error: %#v", err)
	}
}

func FuzzDecodeJSONBody(f *testing.F) {
	for _, s := range []string{`{"annotation":{"a":1}}`, `{"annotation":{"a":1},"annotation":2}`, `{"image_id":5}`, `{`, ``, `[]`,
		"{\"a\":\"\xff\"}", `{"annotation":` + strings.Repeat("[", 100) + `}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req annotationRequest
		clientError(t, decodeJSON(data, &req, true))
	})
}

func FuzzIrisMeasurements(f *testing.F) {
	for _, s := range []string{`{"rows":[{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,"petal_width":0.2,"species":"setosa"}]}`,
		`[{"sepal_length":-1}]`, `{"rows":[]}`, `{"rows":null}`, `[1e400]`, `{"rows":[{"species":"x","species":"y"}]}`, `[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rows, _, err := parseMeasurements(data)
		clientError(t, err)
		if err == nil {
			for _, r := range rows {
				if verr := r.Validate(); verr != nil {
					t.Fatalf("accepted an invalid row %+v: %v", r, verr)
				}
			}
		}
	})
}

func FuzzTags(f *testing.F) {
	for _, s := range []string{`["a","b"]`, `eye`, `["a",`, `[1]`, "a\x00b", strings.Repeat("x", 70), `[""]`, "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		tags, err := formTags([]string{v, v})
		clientError(t, err)
		if err == nil && len(tags) > maxTags {
			t.Fatalf("%d tags", len(tags))
		}
	})
}

// FuzzUpload sends fuzzed multipart bodies through Fiber's parser to the
// upload checks the catalogue applies.
func FuzzUpload(f *testing.F) {
	var b bytes.Buffer
	_ = png.Encode(&b, image.NewGray(image.Rect(0, 0, 3, 3)))
	good := "--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n" + b.String() + "\r\n--B\r\nContent-Disposition: form-data; name=\"tags\"\r\n\r\n[\"x\"]\r\n--B--\r\n"
	f.Add([]byte(good))
	f.Add([]byte(good[:len(good)/2]))
	f.Add([]byte("--B\r\n\r\n--B--"))
	f.Add([]byte("--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"../../etc/passwd\"\r\n\r\nGIF89a\r\n--B--\r\n"))
	s := &Server{cfg: Config{MaxBodyBytes: 1 << 20}}
	app := fiber.New(fiber.Config{ErrorHandler: func(c *fiber.Ctx, err error) error {
		var ae *apiError
		if errors.As(err, &ae) {
			return c.SendStatus(ae.Status)
		}
		return c.Status(599).SendString(err.Error())
	}})
	app.Post("/", func(c *fiber.Ctx) error {
		form, err := multipartForm(c)
		if err != nil {
			return err
		}
		up, err := readUpload(form, "image", s.cfg.MaxBodyBytes)
		if err != nil {
			return err
		}
		if err := validateWholeImage(c.UserContext(), up); err != nil {
			return err
		}
		_, err = formTags(form.Value["tags"])
		return err
	})
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/", bytes.NewReader(body))
		req.Header.Set("Content-Type", "multipart/form-data; boundary=B")
		res, err := app.Test(req, -1)
		if err != nil {
			// fasthttp refused the request itself (a body it cannot read);
			// a real server answers that through Fiber's error handler.
			return
		}
		msg, _ := io.ReadAll(res.Body)
		if res.StatusCode >= 500 || (res.StatusCode != http.StatusOK && res.StatusCode < 400) {
			t.Fatalf("status %d: %s", res.StatusCode, msg)
		}
	})
}
