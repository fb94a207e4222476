package local

import (
	"context"

	"github.com/ClickHouse/clickhouse-go/v2"
)

func pingClickHouse(ctx context.Context, dsn string) error {
	opts, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		return err
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Ping(ctx)
}
