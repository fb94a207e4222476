package analytics

import (
	"context"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/gradeline/gradeline/bus/admin"
)

// ClickHouseCheck is a readiness check that pings ClickHouse at dsn over
// one connection kept for the life of the check.
func ClickHouseCheck(dsn string) admin.Check {
	opts, err := clickhouse.ParseDSN(dsn)
	var conn clickhouse.Conn
	if err == nil {
		conn, err = clickhouse.Open(opts)
	}
	return func(ctx context.Context) error {
		if err != nil {
			return err
		}
		return conn.Ping(ctx)
	}
}
