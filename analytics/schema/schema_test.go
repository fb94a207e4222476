package schema_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/gradeline/gradeline/analytics/internal/chtest"
	"github.com/gradeline/gradeline/analytics/schema"
)

func TestMain(m *testing.M) { chtest.Main(m) }

var quiet = slog.New(slog.DiscardHandler)

func TestMigrateRecordsAndIsIdempotent(t *testing.T) {
	ctx := context.Background()
	_, conn := chtest.Database(t)
	applied, err := schema.Migrate(ctx, conn, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != len(schema.Migrations) {
		t.Fatalf("applied %v, want all %d migrations", applied, len(schema.Migrations))
	}
	done, err := schema.Applied(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range schema.Migrations {
		if !done[m.Version] {
			t.Errorf("migration %d not recorded", m.Version)
		}
	}
	for _, table := range []string{schema.TableIris, schema.TableGrades, schema.TableAnnotations, schema.TableMigrations} {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = ?", table).Scan(&n); err != nil || n != 1 {
			t.Errorf("table %s: %d, %v", table, n, err)
		}
	}
	again, err := schema.Migrate(ctx, conn, quiet)
	if err != nil || len(again) != 0 {
		t.Fatalf("second run applied %v, err %v", again, err)
	}
}

// Replicas starting at once may both apply a migration: every statement
// is idempotent, so neither fails, and the version is recorded once.
func TestConcurrentMigrate(t *testing.T) {
	ctx := context.Background()
	dsn, conn := chtest.Database(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		c := chtest.Connect(t, dsn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := schema.Migrate(ctx, c, quiet)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+schema.TableMigrations+" FINAL").Scan(&n); err != nil || n != uint64(len(schema.Migrations)) {
		t.Fatalf("%d recorded versions (FINAL), %v; want %d", n, err, len(schema.Migrations))
	}
}
