package localmongo_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/gradeline/gradeline/annotator/localmongo"
)

// A data directory written by the earlier release (FerretDB on SQLite,
// one <database>.sqlite per database in Dir) starts on the PostgreSQL
// store with every document, and the old files are moved aside.
func TestMigrateSQLiteDataDir(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	// What the earlier localmongo.Start did: FerretDB's sqlite handler on Dir.
	old, err := ferretdb.New(&ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: "127.0.0.1:0"}, Handler: "sqlite",
		SQLiteURL: (&url.URL{Scheme: "file", Path: dir + "/"}).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = old.Run(runCtx) }()
	cl := connect(t, old.MongoDBURI())
	const n = 2500
	docs := make([]any, n)
	for i := range docs {
		docs[i] = bson.D{{Key: "_id", Value: fmt.Sprintf("a%05d", i)}, {Key: "image_id", Value: fmt.Sprintf("img-%d", i%10)}, {Key: "n", Value: i}}
	}
	if _, err := cl.Database("gradeline").Collection("annotations").InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Database("other").Collection("users").InsertOne(ctx, bson.D{{Key: "_id", Value: "ada"}}); err != nil {
		t.Fatal(err)
	}
	_ = cl.Disconnect(ctx)
	stop()
	<-done

	srv, err := localmongo.Start(ctx, localmongo.Options{Dir: dir, SharedBuffers: "32MB"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	cl = connect(t, srv.URI())
	coll := cl.Database("gradeline").Collection("annotations")
	if got, err := coll.CountDocuments(ctx, bson.D{}); err != nil || got != n {
		t.Fatalf("annotations after migration: %d, %v; want %d", got, err, n)
	}
	var d struct{ N int }
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "a01234"}}).Decode(&d); err != nil || d.N != 1234 {
		t.Fatalf("document a01234: %+v, %v", d, err)
	}
	if got, err := cl.Database("other").Collection("users").CountDocuments(ctx, bson.D{}); err != nil || got != 1 {
		t.Fatalf("second database: %d, %v", got, err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.sqlite")); len(m) != 0 {
		t.Fatalf("old files left in place: %v", m)
	}
	if _, err := os.Stat(filepath.Join(dir, "sqlite-migrated", "gradeline.sqlite")); err != nil {
		t.Fatalf("old file not kept aside: %v", err)
	}

	// A second start copies nothing again.
	_ = cl.Disconnect(ctx)
	_ = srv.Close()
	srv2, err := localmongo.Start(ctx, localmongo.Options{Dir: dir, SharedBuffers: "32MB"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv2.Close() })
	cl = connect(t, srv2.URI())
	if got, err := cl.Database("gradeline").Collection("annotations").CountDocuments(ctx, bson.D{}); err != nil || got != n {
		t.Fatalf("after restart: %d, %v", got, err)
	}
}
