package annotator

import (
	"context"
	"errors"
	"math"
	"slices"

	"github.com/gradeline/gradeline/annotator/internal/store"
	"github.com/gradeline/gradeline/bus"
)

func (a *app) endpoints() []bus.Endpoint {
	return []bus.Endpoint{
		{Name: "annotations-list", Subject: bus.SvcAnnotationsList, Handler: bus.Handle(a.log, queryTimeout, a.listAnnotations)},
		{Name: "annotations-get", Subject: bus.SvcAnnotationsGet, Handler: bus.Handle(a.log, queryTimeout, a.getAnnotation)},
		{Name: "images-list", Subject: bus.SvcImagesList, Handler: bus.Handle(a.log, queryTimeout, a.listImages)},
		{Name: "images-get", Subject: bus.SvcImagesGet, Handler: bus.Handle(a.log, queryTimeout, a.getImage)},
		{Name: "images-tagged", Subject: bus.SvcImagesTagged, Handler: bus.Handle(a.log, queryTimeout, a.taggedImages)},
		{Name: "grades-get", Subject: bus.SvcGradesGet, Handler: bus.Handle(a.log, queryTimeout, a.getGrade)},
		{Name: "grades-list", Subject: bus.SvcGradesList, Handler: bus.Handle(a.log, queryTimeout, a.listGrades)},
	}
}

// page applies the defaults (bus.PageDefaults), validates,
// and reads the cursor, which wins over a page number.
func page(p, perPage int, cursor string) (store.Page, error) {
	p, perPage = bus.PageDefaults(p, perPage)
	if err := bus.ValidatePage(p, perPage); err != nil {
		return store.Page{}, err
	}
	out := store.Page{Limit: int64(perPage)}
	if cursor != "" {
		c, err := store.ParseCursor(cursor)
		if err != nil {
			return store.Page{}, &bus.Error{Code: bus.CodeUnprocessable, Message: "invalid cursor",
				Details: []string{"cursor: " + err.Error()}}
		}
		out.After = c
		return out, nil
	}
	out.Skip = int64(math.MaxInt64)
	if int64(p-1) <= math.MaxInt64/int64(perPage) {
		out.Skip = int64(p-1) * int64(perPage)
	}
	return out, nil
}

func required(fields ...[2]string) error {
	var details []string
	for _, f := range fields {
		if f[1] == "" {
			details = append(details, f[0]+": is required")
		}
	}
	if len(details) > 0 {
		return &bus.Error{Code: bus.CodeUnprocessable, Message: "missing fields", Details: details}
	}
	return nil
}

// dbError turns a store failure into 503: the query is fine, the database
// is not reachable right now.
func (a *app) dbError(ctx context.Context, err error) error {
	if errors.Is(err, store.ErrBadCursor) {
		// A cursor of another listing (e.g. from a page by image used on a
		// page by author) is the caller's mistake, not the database's.
		return &bus.Error{Code: bus.CodeUnprocessable, Message: "invalid cursor",
			Details: []string{"cursor: " + err.Error() + " of this listing"}}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return err // bus answers 503 "query timed out"
	}
	a.log.Warn("query failed", "err", err, "request_id", bus.RequestID(ctx))
	return &bus.Error{Code: bus.CodeUnavailable, Message: "database unavailable"}
}

func notFound(what string) error {
	return &bus.Error{Code: bus.CodeNotFound, Message: what + " not found"}
}

func (a *app) listAnnotations(ctx context.Context, q bus.AnnotationsQuery) (bus.List[bus.Annotation], error) {
	if err := required([2]string{"viewer", q.Viewer}); err != nil {
		return bus.List[bus.Annotation]{}, err
	}
	p, err := page(q.Page, q.PerPage, q.Cursor)
	if err != nil {
		return bus.List[bus.Annotation]{}, err
	}
	// Visibility is part of the query: an image the viewer may see, or the
	// viewer's own annotations.
	f := store.AnnotationFilter{ImageID: q.ImageID, Author: q.Author}
	if q.ImageID == "" {
		if q.Author != "" && q.Author != q.Viewer {
			return bus.List[bus.Annotation]{}, &bus.Error{Code: bus.CodeUnprocessable, Message: "another author's annotations are listed per image",
				Details: []string{"image_id: required with an author other than yourself"}}
		}
		f.Author = q.Viewer
	} else if err := a.visibleImage(ctx, q.Viewer, q.ImageID); err != nil {
		return bus.List[bus.Annotation]{}, err
	}
	a.applied.wait(ctx, bus.ConsumerAnnotator, q.AfterSeq)
	list, err := a.store.ListAnnotations(ctx, f, p,
		func(id string, err error) {
			a.log.Error("annotation skipped in a listing: stored document unreadable", "id", id, "err", err, "request_id", bus.RequestID(ctx))
		})
	if err != nil {
		return bus.List[bus.Annotation]{}, a.dbError(ctx, err)
	}
	return list, nil
}

func (a *app) getAnnotation(ctx context.Context, q bus.AnnotationGetQuery) (bus.Annotation, error) {
	if err := required([2]string{"viewer", q.Viewer}, [2]string{"id", q.ID}); err != nil {
		return bus.Annotation{}, err
	}
	a.applied.wait(ctx, bus.ConsumerAnnotator, q.AfterSeq)
	an, ok, err := a.store.GetAnnotation(ctx, q.ID)
	if err != nil {
		return bus.Annotation{}, a.dbError(ctx, err)
	}
	if !ok {
		return bus.Annotation{}, notFound("annotation")
	}
	if an.Author != q.Viewer {
		if an.ImageID == "" {
			return bus.Annotation{}, notFound("annotation")
		}
		if err := a.visibleImage(ctx, q.Viewer, an.ImageID); err != nil {
			if isNotFound(err) {
				return bus.Annotation{}, notFound("annotation")
			}
			return bus.Annotation{}, err
		}
	}
	return an, nil
}

// visibleImage is nil when viewer owns image id or it is shared with them,
// a 404 otherwise.
func (a *app) visibleImage(ctx context.Context, viewer, id string) error {
	_, ok, err := a.store.GetImage(ctx, viewer, id)
	if err != nil {
		return a.dbError(ctx, err)
	}
	if !ok {
		return notFound("image")
	}
	return nil
}

func isNotFound(err error) bool { return bus.IsCode(err, bus.CodeNotFound) }

func (a *app) listImages(ctx context.Context, q bus.ImagesQuery) (bus.List[bus.Image], error) {
	if err := required([2]string{"owner", q.Owner}); err != nil {
		return bus.List[bus.Image]{}, err
	}
	p, err := page(q.Page, q.PerPage, q.Cursor)
	if err != nil {
		return bus.List[bus.Image]{}, err
	}
	a.applied.wait(ctx, bus.ConsumerAnnotatorCatalog, q.AfterSeq)
	list, err := a.store.ListImages(ctx, store.ImageFilter{Owner: q.Owner, Tags: q.Tags}, p)
	if err != nil {
		return bus.List[bus.Image]{}, a.dbError(ctx, err)
	}
	return list, nil
}

// taggedImages answers one page of every owner's images carrying a tag,
// for the operator's regrade (no user's visibility applies: the edge has
// no route to it).
func (a *app) taggedImages(ctx context.Context, q bus.TaggedImagesQuery) (bus.List[bus.TaggedImage], error) {
	if err := required([2]string{"tag", q.Tag}); err != nil {
		return bus.List[bus.TaggedImage]{}, err
	}
	if (q.Model == "") != (q.Version == "") {
		return bus.List[bus.TaggedImage]{}, &bus.Error{Code: bus.CodeUnprocessable, Message: "model and version go together",
			Details: []string{"model, version: both or neither"}}
	}
	_, perPage := bus.PageDefaults(1, q.PerPage)
	if err := bus.ValidatePage(1, perPage); err != nil {
		return bus.List[bus.TaggedImage]{}, err
	}
	data, next, err := a.store.TaggedImages(ctx, store.TaggedFilter{Tag: q.Tag, Since: q.Since, Model: q.Model, Version: q.Version}, q.Cursor, perPage)
	if err != nil {
		return bus.List[bus.TaggedImage]{}, a.dbError(ctx, err)
	}
	return bus.List[bus.TaggedImage]{Data: data, Next: next, PerPage: perPage}, nil
}

func (a *app) getImage(ctx context.Context, q bus.ImageGetQuery) (bus.Image, error) {
	if err := required([2]string{"owner", q.Owner}, [2]string{"id", q.ID}); err != nil {
		return bus.Image{}, err
	}
	a.applied.wait(ctx, bus.ConsumerAnnotatorCatalog, q.AfterSeq)
	img, ok, err := a.store.GetImage(ctx, q.Owner, q.ID)
	if err != nil {
		return bus.Image{}, a.dbError(ctx, err)
	}
	if !ok {
		return bus.Image{}, notFound("image")
	}
	return img, nil
}

// getGrade answers a grade from the one record the store keeps of it,
// read as readGrades says.
func (a *app) getGrade(ctx context.Context, q bus.GradeGetQuery) (bus.Grade, error) {
	if err := required([2]string{"owner", q.Owner}, [2]string{"id", q.ID}); err != nil {
		return bus.Grade{}, err
	}
	var (
		g  bus.Grade
		ok bool
	)
	err := a.readGrades(ctx, q.AfterSeq, func() (incomplete bool, err error) {
		g, ok, err = a.store.GetGrade(ctx, q.ID, q.Owner)
		// Unknown may be a result another edge replica handed out a
		// moment ago, not stored yet.
		return !ok || g.Status == bus.GradeStatusPending, err
	})
	if err != nil {
		return bus.Grade{}, a.dbError(ctx, err)
	}
	if !ok {
		return bus.Grade{}, notFound("grade")
	}
	if g.Status != bus.GradeStatusPending {
		// Attempts exist only once a result does.
		if g.Callbacks, err = a.store.CallbackAttempts(ctx, q.ID); err != nil {
			return bus.Grade{}, a.dbError(ctx, err)
		}
	}
	return g, nil
}

func (a *app) listGrades(ctx context.Context, q bus.GradesQuery) (bus.List[bus.Grade], error) {
	who := [2]string{"owner", q.Owner}
	if q.Viewer != "" {
		who = [2]string{"viewer", q.Viewer}
	}
	if err := required(who, [2]string{"image_id", q.ImageID}); err != nil {
		return bus.List[bus.Grade]{}, err
	}
	p, err := page(q.Page, q.PerPage, q.Cursor)
	if err != nil {
		return bus.List[bus.Grade]{}, err
	}
	if q.Viewer != "" {
		// Predictions follow their image, as annotations do.
		if err := a.visibleImage(ctx, q.Viewer, q.ImageID); err != nil {
			return bus.List[bus.Grade]{}, err
		}
	}
	var list bus.List[bus.Grade]
	err = a.readGrades(ctx, q.AfterSeq, func() (incomplete bool, err error) {
		list, err = a.store.ListGrades(ctx, q.ImageID, q.Owner, p)
		return slices.ContainsFunc(list.Data, func(g bus.Grade) bool { return g.Status == bus.GradeStatusPending }), err
	})
	if err != nil {
		return bus.List[bus.Grade]{}, a.dbError(ctx, err)
	}
	if q.Viewer != "" {
		list.Data = slices.DeleteFunc(list.Data, func(g bus.Grade) bool { return g.Status != bus.GradeStatusCompleted })
		if list.Total != nil {
			n := int64(len(list.Data))
			list.Total = &n
		}
	}
	return list, nil
}

// readGrades reads grades once the grade history has stored the owner's
// last grade the edge answered (afterSeq, its GRADES stream sequence:
// the result handed out, or the grade.pending record of a 202), and when
// read then finds the answer incomplete (a grade pending, or unknown), once
// more after the results the GRADES stream holds at that moment are
// stored: the edge, any replica, may already have handed the client its
// result. Both waits are bounded together by bus.ReadYourWritesWait. So a
// grade just answered is never read back as unknown, nor a result as
// pending.
func (a *app) readGrades(ctx context.Context, afterSeq uint64, read func() (incomplete bool, err error)) error {
	wctx, cancel := context.WithTimeout(ctx, bus.ReadYourWritesWait)
	defer cancel()
	a.applied.wait(wctx, bus.ConsumerAnnotatorGrades, afterSeq)
	incomplete, err := read()
	if err != nil || !incomplete {
		return err
	}
	if last := a.streamLast(wctx, bus.ConsumerAnnotatorGrades.Stream); last > 0 {
		a.applied.wait(wctx, bus.ConsumerAnnotatorGrades, last)
		_, err = read()
	}
	return err
}

// streamLast is the last sequence of stream; 0 when it cannot be read (the
// query then answers with what is stored).
func (a *app) streamLast(ctx context.Context, stream string) uint64 {
	st, err := a.applied.js.Stream(ctx, stream)
	if err != nil {
		a.log.Debug("stream info for read-your-writes", "stream", stream, "err", err, "request_id", bus.RequestID(ctx))
		return 0
	}
	return st.CachedInfo().State.LastSeq
}
