package analytics

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// addService registers the query endpoints on the "analytics" service.
func (s *service) addService(nc *nats.Conn, timeout time.Duration) (micro.Service, error) {
	return bus.AddService(nc, "analytics", Version, "iris range and statistics, grade and annotation statistics from ClickHouse",
		bus.Endpoint{Name: "iris-range", Subject: bus.SvcIrisRange,
			Handler: bus.Handle(s.log, timeout, query(s, "iris_range", func(ctx context.Context, q bus.IrisRangeQuery) (bus.Page[bus.IrisRow], error) {
				return iris.Range(ctx, s.conn, q)
			}))},
		bus.Endpoint{Name: "iris-stats", Subject: bus.SvcIrisStats,
			Handler: bus.Handle(s.log, timeout, query(s, "iris_stats", func(ctx context.Context, q bus.IrisStatsQuery) ([]bus.IrisStat, error) {
				return iris.Stats(ctx, s.conn, q)
			}))},
		bus.Endpoint{Name: "stats-grades", Subject: bus.SvcStatsGrades,
			Handler: bus.Handle(s.log, timeout, query(s, "stats_grades", func(ctx context.Context, q bus.GradeStatsQuery) ([]bus.GradeStatsRow, error) {
				return GradeStats(ctx, s.conn, q)
			}))},
		bus.Endpoint{Name: "stats-annotations", Subject: bus.SvcStatsAnnotations,
			Handler: bus.Handle(s.log, timeout, query(s, "stats_annotations", func(ctx context.Context, q bus.AnnotationStatsQuery) ([]bus.AnnotationStatsRow, error) {
				return AnnotationStats(ctx, s.conn, q)
			}))},
		bus.Endpoint{Name: "stats-review", Subject: bus.SvcStatsReview,
			Handler: bus.Handle(s.log, timeout, query(s, "stats_review", func(ctx context.Context, q bus.ReviewQuery) ([]bus.ReviewItem, error) {
				return ReviewQueue(ctx, s.conn, q)
			}))},
		bus.Endpoint{Name: "stats-regrade", Subject: bus.SvcStatsRegrade,
			Handler: bus.Handle(s.log, timeout, query(s, "stats_regrade", func(ctx context.Context, q bus.RegradeAgreementQuery) (bus.RegradeAgreement, error) {
				return RegradeAgreement(ctx, s.conn, q)
			}))},
		bus.Endpoint{Name: "stats-agreement", Subject: bus.SvcStatsAgreement,
			Handler: bus.Handle(s.log, timeout, query(s, "stats_agreement", func(ctx context.Context, q bus.AgreementQuery) ([]bus.AgreementRow, error) {
				return Agreement(ctx, s.conn, q)
			}))},
	)
}

// query wraps a query function with its latency metric and turns an
// unreachable ClickHouse into 503 (the edge may retry), leaving other
// failures to bus.Handle's 500.
func query[Req, Resp any](s *service, name string, f func(context.Context, Req) (Resp, error)) func(context.Context, Req) (Resp, error) {
	return func(ctx context.Context, req Req) (Resp, error) {
		start := time.Now()
		resp, err := f(ctx, req)
		outcome := "ok"
		if err != nil {
			outcome = "error"
			var be *bus.Error
			if errors.As(err, &be) {
				outcome = "invalid"
			} else if unreachable(err) {
				s.log.Warn("query failed: clickhouse unreachable", "query", name, "err", err)
				err = &bus.Error{Code: bus.CodeUnavailable, Message: "analytics store unavailable"}
			}
		}
		s.metrics.querySeconds.WithLabelValues(name, outcome).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

func unreachable(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
