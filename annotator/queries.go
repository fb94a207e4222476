package annotator

import (
	"context"
	"errors"
	"math"
	"net/http"

	"github.com/gradeline/gradeline/annotator/internal/store"
	"github.com/gradeline/gradeline/bus"
)

func (a *app) endpoints() []bus.Endpoint {
	return []bus.Endpoint{
		{Name: "annotations-list", Subject: bus.SvcAnnotationsList, Handler: bus.Handle(a.log, queryTimeout, a.listAnnotations)},
		{Name: "annotations-get", Subject: bus.SvcAnnotationsGet, Handler: bus.Handle(a.log, queryTimeout, a.getAnnotation)},
		{Name: "images-list", Subject: bus.SvcImagesList, Handler: bus.Handle(a.log, queryTimeout, a.listImages)},
		{Name: "images-get", Subject: bus.SvcImagesGet, Handler: bus.Handle(a.log, queryTimeout, a.getImage)},
		{Name: "grades-get", Subject: bus.SvcGradesGet, Handler: bus.Handle(a.log, queryTimeout, a.getGrade)},
	}
}

// page applies the defaults (0 = page 1 / bus.DefaultPerPage), validates,
// and computes the skip without overflowing for absurd page numbers.
func page(p, perPage int) (store.Page, int, int, error) {
	if p == 0 {
		p = 1
	}
	if perPage == 0 {
		perPage = bus.DefaultPerPage
	}
	if err := bus.ValidatePage(p, perPage); err != nil {
		return store.Page{}, 0, 0, err
	}
	skip := int64(math.MaxInt64)
	if int64(p-1) <= math.MaxInt64/int64(perPage) {
		skip = int64(p-1) * int64(perPage)
	}
	return store.Page{Skip: skip, Limit: int64(perPage)}, p, perPage, nil
}

func required(fields ...[2]string) error {
	var details []string
	for _, f := range fields {
		if f[1] == "" {
			details = append(details, f[0]+": is required")
		}
	}
	if len(details) > 0 {
		return &bus.Error{Code: http.StatusUnprocessableEntity, Message: "missing fields", Details: details}
	}
	return nil
}

// dbError turns a store failure into 503: the query is fine, the database
// is not reachable right now.
func (a *app) dbError(ctx context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return err // bus answers 503 "query timed out"
	}
	a.log.Warn("query failed", "err", err, "request_id", bus.RequestID(ctx))
	return &bus.Error{Code: http.StatusServiceUnavailable, Message: "database unavailable"}
}

func notFound(what string) error {
	return &bus.Error{Code: http.StatusNotFound, Message: what + " not found"}
}

func (a *app) listAnnotations(ctx context.Context, q bus.AnnotationsQuery) (bus.Page[bus.Annotation], error) {
	p, pg, pp, err := page(q.Page, q.PerPage)
	if err != nil {
		return bus.Page[bus.Annotation]{}, err
	}
	data, total, err := a.store.ListAnnotations(ctx, store.AnnotationFilter{ImageID: q.ImageID, Author: q.Author}, p)
	if err != nil {
		return bus.Page[bus.Annotation]{}, a.dbError(ctx, err)
	}
	return bus.Page[bus.Annotation]{Data: data, Total: total, Page: pg, PerPage: pp}, nil
}

func (a *app) getAnnotation(ctx context.Context, q bus.AnnotationGetQuery) (bus.Annotation, error) {
	if err := required([2]string{"id", q.ID}); err != nil {
		return bus.Annotation{}, err
	}
	an, ok, err := a.store.GetAnnotation(ctx, q.ID)
	if err != nil {
		return bus.Annotation{}, a.dbError(ctx, err)
	}
	if !ok {
		return bus.Annotation{}, notFound("annotation")
	}
	return an, nil
}

func (a *app) listImages(ctx context.Context, q bus.ImagesQuery) (bus.Page[bus.Image], error) {
	if err := required([2]string{"owner", q.Owner}); err != nil {
		return bus.Page[bus.Image]{}, err
	}
	p, pg, pp, err := page(q.Page, q.PerPage)
	if err != nil {
		return bus.Page[bus.Image]{}, err
	}
	data, total, err := a.store.ListImages(ctx, store.ImageFilter{Owner: q.Owner, Tags: q.Tags}, p)
	if err != nil {
		return bus.Page[bus.Image]{}, a.dbError(ctx, err)
	}
	return bus.Page[bus.Image]{Data: data, Total: total, Page: pg, PerPage: pp}, nil
}

func (a *app) getImage(ctx context.Context, q bus.ImageGetQuery) (bus.Image, error) {
	if err := required([2]string{"owner", q.Owner}, [2]string{"id", q.ID}); err != nil {
		return bus.Image{}, err
	}
	img, ok, err := a.store.GetImage(ctx, q.Owner, q.ID)
	if err != nil {
		return bus.Image{}, a.dbError(ctx, err)
	}
	if !ok {
		return bus.Image{}, notFound("image")
	}
	return img, nil
}

func (a *app) getGrade(ctx context.Context, q bus.GradeGetQuery) (bus.Grade, error) {
	if err := required([2]string{"id", q.ID}); err != nil {
		return bus.Grade{}, err
	}
	g, ok, err := a.store.GetGrade(ctx, q.ID, q.Owner)
	if err != nil {
		return bus.Grade{}, a.dbError(ctx, err)
	}
	if !ok {
		return bus.Grade{}, notFound("grade")
	}
	return g, nil
}
