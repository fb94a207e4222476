package localmongo

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// startSmall starts an embedded store with a small cache and connects a
// client; both end with the test.
func startSmall(t *testing.T) (*Server, *mongo.Client) {
	t.Helper()
	srv, err := Start(context.Background(), Options{Dir: t.TempDir(), SharedBuffers: "32MB"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	cl, err := mongo.Connect(options.Client().ApplyURI(srv.URI()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Disconnect(context.Background()) })
	return srv, cl
}

// TestFerretDBLayout pins what the index mirror relies on: FerretDB's
// metadata table, its table naming and the way it pushes an equality
// filter down. An upgrade that changes any of it fails here first.
func TestFerretDBLayout(t *testing.T) {
	ctx := context.Background()
	srv, cl := startSmall(t)
	coll := cl.Database("layout").Collection("things")
	if _, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "zeta", Value: 1}, {Key: "alpha", Value: -1}}}); err != nil {
		t.Fatal(err)
	}
	docs := make([]any, 2000)
	for i := range docs {
		docs[i] = bson.D{{Key: "_id", Value: fmt.Sprintf("d%04d", i)}, {Key: "zeta", Value: fmt.Sprintf("z%d", i%100)}, {Key: "alpha", Value: i}}
	}
	if _, err := coll.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	if err := srv.SyncIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	pool := srv.pool
	want, err := wantedIndexes(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	var fields []string
	for _, m := range want {
		if m.Schema == "layout" {
			fields = append(fields, m.Field)
		}
	}
	// _id always; the first key of the compound index, not the second.
	if strings.Join(fields, ",") != "_id,zeta" {
		t.Fatalf("mirrored fields %v, want [_id zeta]", fields)
	}
	if _, err := pool.Exec(ctx, "ANALYZE "+pgx.Identifier{"layout", want[len(want)-1].Table}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	for _, m := range want {
		if m.Schema != "layout" {
			continue
		}
		val := `"d0001"`
		if m.Field == "zeta" {
			val = `"z7"`
		}
		// The filter exactly as FerretDB sends it: field name as a parameter.
		q := fmt.Sprintf(`EXPLAIN SELECT _jsonb FROM %s WHERE _jsonb->$1 @> $2`, pgx.Identifier{m.Schema, m.Table}.Sanitize())
		plan := explain(t, srv.PostgresURL(), q, m.Field, val)
		if !strings.Contains(plan, m.Name()) {
			t.Errorf("filter on %s does not use %s:\n%s", m.Field, m.Name(), plan)
		}
	}
	// And through FerretDB itself: the same rows come back.
	n, err := coll.CountDocuments(ctx, bson.D{{Key: "zeta", Value: "z7"}})
	if err != nil || n != 20 {
		t.Fatalf("count zeta=z7: %d, %v; want 20", n, err)
	}
}

func explain(t *testing.T, url, q string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}
