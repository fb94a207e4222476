package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

const (
	maxTags   = 64
	maxTagLen = 64
)

// cleanTags trims, validates and de-duplicates tags, keeping their order.
func cleanTags(tags []string) ([]string, error) {
	out := make([]string, 0, len(tags))
	var details []string
	for i, t := range tags {
		t = strings.TrimSpace(t)
		switch {
		case t == "":
			details = append(details, fmt.Sprintf("tags[%d]: must not be empty", i))
		case utf8.RuneCountInString(t) > maxTagLen:
			details = append(details, fmt.Sprintf("tags[%d]: at most %d characters", i, maxTagLen))
		case strings.ContainsFunc(t, func(r rune) bool { return unicode.IsControl(r) || r == utf8.RuneError }):
			details = append(details, fmt.Sprintf("tags[%d]: must not contain control characters", i))
		default:
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	if len(out) > maxTags {
		details = append(details, fmt.Sprintf("tags: at most %d tags", maxTags))
	}
	if len(details) > 0 {
		return nil, invalid("invalid tags", details...)
	}
	return out, nil
}

// formTags reads tags as repeated fields or one JSON array field.
func formTags(values []string) ([]string, error) {
	var tags []string
	for _, v := range values {
		if strings.HasPrefix(strings.TrimSpace(v), "[") {
			var arr []string
			if err := json.Unmarshal([]byte(v), &arr); err != nil {
				return nil, invalid("invalid tags", "tags: a JSON array of strings or repeated fields")
			}
			tags = append(tags, arr...)
			continue
		}
		tags = append(tags, v)
	}
	return cleanTags(tags)
}

func (s *Server) getImageMeta(ctx context.Context, owner, id string) (bus.Image, error) {
	if !validRef.MatchString(id) {
		return bus.Image{}, errorf(http.StatusNotFound, "image %q not found", id)
	}
	return request[bus.Image](ctx, s, bus.SvcImagesGet, bus.ImageGetQuery{Owner: owner, ID: id,
		AfterSeq: s.writes.after(owner, bus.ConsumerAnnotatorCatalog.Stream)})
}

// ownImage is getImageMeta for a change: a user the image is shared with
// may read it, only its owner may change it.
func (s *Server) ownImage(ctx context.Context, user, id string) (bus.Image, error) {
	img, err := s.getImageMeta(ctx, user, id)
	if err != nil {
		return img, err
	}
	if img.Owner != user {
		return img, errorf(http.StatusForbidden, "image %s is shared with you; only its owner (%s) may change it", img.ID, img.Owner)
	}
	return img, nil
}

func isNotFound(err error) bool {
	var be *bus.Error
	if errors.As(err, &be) && be.Code == bus.CodeNotFound {
		return true
	}
	var ae *apiError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// createImage: multipart image + tags -> 201 with the catalogue entry.
func (s *Server) createImage(c *fiber.Ctx) error {
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
	tags, err := formTags(form.Value["tags"])
	if err != nil {
		return err
	}
	ctx := c.UserContext()
	user := userOf(c)
	id := idFor(ctx, "image")
	ref, err := s.storeImage(ctx, id, up)
	if err != nil {
		return err
	}
	ev := &bus.ImageCatalogued{Meta: bus.NewMeta(bus.TypeImageCatalogued), ImageID: id, Owner: user,
		Filename: up.Filename, Width: up.Width, Height: up.Height, Tags: tags, Image: ref}
	ev.ID = idFor(ctx, "image.catalogued")
	if err := s.publish(ctx, ev); err != nil {
		if !hasIdempotencyKey(ctx) { // else an earlier, accepted try may own the bytes
			_ = s.images.Delete(context.WithoutCancel(ctx), id)
		}
		return err
	}
	// The entry as the catalogue will hold it; the owner's next read waits
	// for it to be stored (read-your-writes, see writeMarks).
	img := bus.Image{ID: id, Owner: user, Filename: up.Filename, ContentType: up.ContentType, SHA256: up.SHA256,
		Size: ref.Size, Width: up.Width, Height: up.Height, Tags: tags, CreatedAt: ev.Time.UTC(), UpdatedAt: ev.Time.UTC()}
	if img.Tags == nil {
		img.Tags = []string{}
	}
	c.Set(fiber.HeaderLocation, "/api/v1/images/"+id)
	return c.Status(http.StatusCreated).JSON(img)
}

func (s *Server) getImage(c *fiber.Ctx) error {
	img, err := s.getImageMeta(c.UserContext(), userOf(c), c.Params("id"))
	if err != nil {
		return err
	}
	if img.Tags == nil {
		img.Tags = []string{}
	}
	return c.JSON(img)
}

// imageContent streams the bytes with their type and the sha256 as ETag.
func (s *Server) imageContent(c *fiber.Ctx) error {
	ctx := c.UserContext()
	img, err := s.getImageMeta(ctx, userOf(c), c.Params("id"))
	if err != nil {
		return err
	}
	etag := `"` + img.SHA256 + `"`
	c.Set(fiber.HeaderETag, etag)
	c.Set(fiber.HeaderCacheControl, "private, no-cache")
	if inm := c.Get(fiber.HeaderIfNoneMatch); inm != "" {
		for _, t := range strings.Split(inm, ",") {
			t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
			if t == etag || t == "*" {
				return c.SendStatus(http.StatusNotModified)
			}
		}
	}
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	data, err := s.images.GetBytes(gctx, img.ID)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return errorf(http.StatusNotFound, "the bytes of image %q are gone", img.ID)
	}
	if err != nil {
		return &apiError{Status: http.StatusServiceUnavailable, Message: "the object store (NATS JetStream) is unavailable", Details: []string{err.Error()}}
	}
	ct := img.ContentType
	if !acceptedTypes[ct] {
		ct = http.DetectContentType(data)
	}
	c.Set(fiber.HeaderContentType, ct)
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
	return c.Send(data)
}

func (s *Server) listImages(c *fiber.Ctx) error {
	page, perPage, cursor, err := parsePage(c)
	if err != nil {
		return err
	}
	var raw []string
	for _, v := range c.Context().QueryArgs().PeekMulti("tag") {
		raw = append(raw, string(v))
	}
	tags, err := cleanTags(raw)
	if err != nil {
		return err
	}
	user := userOf(c)
	resp, err := request[bus.List[bus.Image]](c.UserContext(), s, bus.SvcImagesList,
		bus.ImagesQuery{Owner: user, Tags: tags, Cursor: cursor, Page: page, PerPage: perPage,
			AfterSeq: s.writes.after(user, bus.ConsumerAnnotatorCatalog.Stream)})
	if err != nil {
		return err
	}
	if resp.Data == nil {
		resp.Data = []bus.Image{}
	}
	for i := range resp.Data {
		if resp.Data[i].Tags == nil {
			resp.Data[i].Tags = []string{}
		}
	}
	return c.JSON(resp)
}

type tagsResponse struct {
	ID   string   `json:"img_id"`
	Tags []string `json:"tags"`
}

func (s *Server) getTags(c *fiber.Ctx) error {
	img, err := s.getImageMeta(c.UserContext(), userOf(c), c.Params("id"))
	if err != nil {
		return err
	}
	if img.Tags == nil {
		img.Tags = []string{}
	}
	return c.JSON(tagsResponse{ID: img.ID, Tags: img.Tags})
}

// parseTagsBody accepts {"tags": [...]} or a bare array as JSON, or a
// form with repeated tags fields.
func parseTagsBody(c *fiber.Ctx) ([]string, error) {
	if isForm(c) {
		if strings.HasPrefix(strings.ToLower(c.Get(fiber.HeaderContentType)), fiber.MIMEMultipartForm) {
			form, err := c.MultipartForm()
			if err != nil {
				return nil, &apiError{Status: http.StatusBadRequest, Message: "malformed multipart form", Cause: err}
			}
			return formTags(form.Value["tags"])
		}
		var vals []string
		for _, v := range c.Context().PostArgs().PeekMulti("tags") {
			vals = append(vals, string(v))
		}
		return formTags(vals)
	}
	if err := requireJSON(c); err != nil {
		return nil, err
	}
	body := strings.TrimSpace(string(c.Body()))
	if strings.HasPrefix(body, "[") {
		var arr []string
		if err := decodeJSON([]byte(body), &arr, true); err != nil {
			return nil, err
		}
		return cleanTags(arr)
	}
	var req struct {
		Tags *[]string `json:"tags"`
	}
	if err := decodeJSON([]byte(body), &req, true); err != nil {
		return nil, err
	}
	if req.Tags == nil {
		return nil, invalid("missing fields", "tags: required (an array of strings)")
	}
	return cleanTags(*req.Tags)
}

func (s *Server) setTags(c *fiber.Ctx, tags []string) error {
	ctx := c.UserContext()
	user := userOf(c)
	img, err := s.ownImage(ctx, user, c.Params("id"))
	if err != nil {
		return err
	}
	ev := &bus.ImageTagsSet{Meta: bus.NewMeta(bus.TypeImageTagsSet), ImageID: img.ID, Owner: user, Tags: tags}
	if err := s.publish(ctx, ev); err != nil {
		return err
	}
	return c.JSON(tagsResponse{ID: img.ID, Tags: tags})
}

func (s *Server) putTags(c *fiber.Ctx) error {
	tags, err := parseTagsBody(c)
	if err != nil {
		return err
	}
	return s.setTags(c, tags)
}

func (s *Server) deleteTags(c *fiber.Ctx) error { return s.setTags(c, []string{}) }

// deleteImage publishes the deletion, then removes the bytes.
func (s *Server) deleteImage(c *fiber.Ctx) error {
	ctx := c.UserContext()
	user := userOf(c)
	img, err := s.ownImage(ctx, user, c.Params("id"))
	if err != nil {
		return err
	}
	ev := &bus.ImageDeleted{Meta: bus.NewMeta(bus.TypeImageDeleted), ImageID: img.ID, Owner: user}
	if err := s.publish(ctx, ev); err != nil {
		return err
	}
	if err := s.images.Delete(ctx, img.ID); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		s.log.Warn("deleting image bytes", "id", img.ID, "err", err)
	}
	return c.SendStatus(http.StatusNoContent)
}

// catalogRoutes are the image catalogue: images, their bytes, tags and shares.
func (s *Server) catalogRoutes() []route {
	return []route{
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
	}
}
