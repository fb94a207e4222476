package localmongo

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// TestFerretIndexesIdle: after the mirror ran, FerretDB's own non-unique
// btree indexes keep their names and columns but are partial on false
// (never updated by an insert), unique ones are untouched and still
// refuse duplicates, queries are answered as before, and the MongoDB
// index commands still work on them: dropIndexes, createIndexes again.
func TestFerretIndexesIdle(t *testing.T) {
	ctx := context.Background()
	srv, cl := startSmall(t)
	coll := cl.Database("idle").Collection("things")
	for _, m := range []mongo.IndexModel{
		{Keys: bson.D{{Key: "kind", Value: 1}, {Key: "at", Value: -1}}},
		{Keys: bson.D{{Key: "serial", Value: 1}}, Options: options.Index().SetUnique(true)},
	} {
		if _, err := coll.Indexes().CreateOne(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	insert := func(from, to int) {
		t.Helper()
		docs := make([]any, 0, to-from)
		for i := from; i < to; i++ {
			docs = append(docs, bson.D{{Key: "_id", Value: fmt.Sprintf("d%04d", i)}, {Key: "kind", Value: fmt.Sprintf("k%d", i%10)},
				{Key: "at", Value: i}, {Key: "serial", Value: i}})
		}
		if _, err := coll.InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
	}
	insert(0, 500) // an index with rows is converted too
	syncNow(t, srv)
	syncNow(t, srv) // nothing left to do
	insert(500, 1000)

	defs := func() map[string]string {
		t.Helper()
		rows, err := srv.pool.Query(ctx, `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'idle' AND tablename LIKE 'things%'`)
		if err != nil {
			t.Fatal(err)
		}
		type ix struct{ Name, Def string }
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ix])
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, i := range got {
			out[i.Name] = i.Def
		}
		return out
	}
	var compound, unique string
	for name, def := range defs() {
		switch {
		case strings.Contains(def, "USING gin"):
		case strings.Contains(def, "'kind'"):
			compound = name
			if !strings.HasSuffix(def, "WHERE false") || !strings.Contains(def, "'at'") {
				t.Errorf("FerretDB's index on kind, at is not idle with its columns: %s", def)
			}
		case strings.Contains(def, "UNIQUE"):
			unique += name + " "
			if strings.Contains(def, "WHERE") {
				t.Errorf("a unique index was changed: %s", def)
			}
		default:
			t.Errorf("unexpected index %s", def)
		}
	}
	if compound == "" || strings.Count(unique, " ") != 2 {
		t.Fatalf("indexes: compound %q, unique %q; want the compound one and two unique (_id, serial)", compound, unique)
	}
	// Unique indexes still refuse.
	for _, doc := range []bson.D{{{Key: "_id", Value: "d0001"}}, {{Key: "_id", Value: "new"}, {Key: "serial", Value: 7}}} {
		if _, err := coll.InsertOne(ctx, doc); !mongo.IsDuplicateKeyError(err) {
			t.Errorf("insert %v: want a duplicate key error, got %v", doc, err)
		}
	}
	// Queries by the field and sorted by the other answer as before.
	cur, err := coll.Find(ctx, bson.D{{Key: "kind", Value: "k3"}}, options.Find().SetSort(bson.D{{Key: "at", Value: -1}}).SetLimit(3))
	if err != nil {
		t.Fatal(err)
	}
	var got []struct {
		At int `bson:"at"`
	}
	if err := cur.All(ctx, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].At != 993 || got[1].At != 983 || got[2].At != 973 {
		t.Fatalf("kind k3 newest first: %v, want at 993, 983, 973", got)
	}
	// The MongoDB index commands see the index FerretDB made.
	if err := coll.Indexes().DropOne(ctx, "kind_1_at_-1"); err != nil {
		t.Fatalf("dropIndexes on an idle index: %v", err)
	}
	if _, ok := defs()[compound]; ok {
		t.Fatalf("index %s still there after dropIndexes", compound)
	}
	if _, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "kind", Value: 1}, {Key: "at", Value: -1}}}); err != nil {
		t.Fatal(err)
	}
	syncNow(t, srv)
	if def := defs()[compound]; !strings.HasSuffix(def, "WHERE false") {
		t.Fatalf("index created again is not idle after the mirror ran: %q", def)
	}
	if n, err := coll.CountDocuments(ctx, bson.D{{Key: "kind", Value: "k3"}}); err != nil || n != 100 {
		t.Fatalf("count kind k3: %d, %v; want 100", n, err)
	}
}

// syncNow runs the mirror until it completes: its lock waits are short
// (mirrorPool), so on a busy machine a run may give up on a lock the
// background mirror or FerretDB holds (55P03), as the mirror's own ticks
// do; it is then run again.
func syncNow(t testing.TB, srv *Server) {
	t.Helper()
	var err error
	for range 100 {
		if err = srv.SyncIndexes(context.Background()); err == nil || !strings.Contains(err.Error(), "55P03") {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}
