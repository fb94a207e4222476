package ingest

// The web page (the annotation workbench): plain ES modules and a style
// sheet embedded in the binary, so the page works offline and needs no
// build step. It talks to the same API as every other client.

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"

	"github.com/gofiber/fiber/v2"
)

//go:embed web
var webFiles embed.FS

// webCSP lets the page run only its own scripts and styles and talk only
// to its own origin; images come as blob: URLs (fetched with the token).
// It applies to the page's files only: the API answers are not documents.
const webCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; " +
	"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// webAsset is one embedded file as served: its bytes, their gzip form
// when smaller, its type and its ETag.
type webAsset struct {
	body, gz []byte
	ctype    string
	etag     string
}

// webAssets reads and compresses the embedded files once, on first use:
// the page is a few tens of kilobytes, compressed a few times smaller.
var webAssets = sync.OnceValues(func() (map[string]webAsset, error) {
	out := map[string]webAsset{}
	err := fs.WalkDir(webFiles, "web", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := webFiles.ReadFile(p)
		if err != nil {
			return fmt.Errorf("web: read %s: %w", p, err)
		}
		sum := sha256.Sum256(body)
		a := webAsset{body: body, etag: `"` + hex.EncodeToString(sum[:12]) + `"`,
			ctype: mime.TypeByExtension(path.Ext(p))}
		if a.ctype == "" {
			a.ctype = fiber.MIMEOctetStream
		}
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		if _, err := zw.Write(body); err != nil {
			return fmt.Errorf("web: gzip %s: %w", p, err)
		}
		if err := zw.Close(); err != nil {
			return fmt.Errorf("web: gzip %s: %w", p, err)
		}
		if buf.Len() < len(body) {
			a.gz = buf.Bytes()
		}
		out[strings.TrimPrefix(p, "web/")] = a
		return nil
	})
	return out, err
})

// serveWebIndex answers the page itself.
func (s *Server) serveWebIndex(c *fiber.Ctx) error { return s.sendWebAsset(c, "index.html") }

// serveWebAsset answers one of the page's scripts or styles by name.
func (s *Server) serveWebAsset(c *fiber.Ctx) error {
	name := c.Params("file")
	if name == "index.html" || strings.ContainsAny(name, `/\`) {
		return errorf(http.StatusNotFound, "no web file %q", name)
	}
	return s.sendWebAsset(c, name)
}

func (s *Server) sendWebAsset(c *fiber.Ctx, name string) error {
	assets, err := webAssets()
	if err != nil {
		return err
	}
	a, ok := assets[name]
	if !ok {
		return errorf(http.StatusNotFound, "no web file %q", name)
	}
	c.Set(fiber.HeaderContentType, a.ctype)
	c.Set(fiber.HeaderETag, a.etag)
	// Revalidated every time: a new binary's page is never mixed with an
	// old cached script, and an unchanged file costs a 304.
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set(fiber.HeaderVary, fiber.HeaderAcceptEncoding)
	c.Set("Content-Security-Policy", webCSP)
	c.Set(fiber.HeaderXFrameOptions, "DENY")
	c.Set(fiber.HeaderReferrerPolicy, "no-referrer")
	if inm := c.Get(fiber.HeaderIfNoneMatch); inm != "" && etagMatches(inm, a.etag) {
		return c.SendStatus(http.StatusNotModified)
	}
	if a.gz != nil && acceptsGzip(c.Get(fiber.HeaderAcceptEncoding)) {
		c.Set(fiber.HeaderContentEncoding, "gzip")
		return c.Send(a.gz)
	}
	return c.Send(a.body)
}

// etagMatches reports whether an If-None-Match list names etag (or *).
func etagMatches(list, etag string) bool {
	for _, t := range strings.Split(list, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// acceptsGzip reads Accept-Encoding: gzip is acceptable unless its
// quality is zero.
func acceptsGzip(ae string) bool {
	for _, part := range strings.Split(ae, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q := strings.ReplaceAll(strings.TrimSpace(params), " ", "")
		return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
	}
	return false
}

// webRoutes serve the web page and its files.
func (s *Server) webRoutes() []route {
	return []route{
		{Method: "GET", Path: "/", Tag: "system", Summary: "The web page: upload, grade, browse, review and annotate", Handler: s.serveWebIndex,
			Description: "A plain ES-module page embedded in the binary (no CDN). It signs in with the API and sends the token as a bearer header.",
			Responses: map[int]resp{200: {Desc: "HTML page.", Media: "text/html", Schema: M{"type": "string"}},
				304: {Desc: "Not modified (If-None-Match)."}}},
		{Method: "GET", Path: "/web/:file", Tag: "system", Summary: "The web page's scripts and style sheet", Handler: s.serveWebAsset,
			Responses: map[int]resp{200: {Desc: "The file (gzip when accepted).", Media: "*/*", Schema: M{"type": "string"}},
				304: {Desc: "Not modified (If-None-Match)."}, 404: errResp("No such file.")}},
	}
}
