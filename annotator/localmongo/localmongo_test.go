package localmongo_test

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/annotator/localmongo"
)

func connect(t *testing.T, uri string) *mongo.Client {
	t.Helper()
	cl, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Disconnect(context.Background()) })
	return cl
}

func TestInsertUniqueRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	srv, err := localmongo.Start(ctx, localmongo.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	if srv.URI() != "mongodb://"+addr+"/" {
		t.Fatalf("URI %q does not match Addr %q", srv.URI(), addr)
	}
	cl := connect(t, srv.URI())
	coll := cl.Database("t").Collection("c")
	if _, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys: bson.D{{Key: "name", Value: 1}}, Options: options.Index().SetUnique(true),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}, {Key: "name", Value: "x"}}); err != nil {
		t.Fatal(err)
	}
	for _, doc := range []bson.D{
		{{Key: "_id", Value: "a"}, {Key: "name", Value: "y"}}, // same _id
		{{Key: "_id", Value: "b"}, {Key: "name", Value: "x"}}, // same unique name
	} {
		_, err := coll.InsertOne(ctx, doc)
		if !mongo.IsDuplicateKeyError(err) {
			t.Fatalf("insert %v: want duplicate key error, got %v", doc, err)
		}
	}
	_ = cl.Disconnect(ctx)
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil { // idempotent
		t.Fatal(err)
	}

	// Same Dir and Addr: the data and the unique index are still there.
	srv2, err := localmongo.Start(ctx, localmongo.Options{Dir: dir, Addr: addr})
	if err != nil {
		t.Fatalf("restart on %s: %v", addr, err)
	}
	defer srv2.Close()
	if srv2.Addr() != addr {
		t.Fatalf("restart addr %s, want %s", srv2.Addr(), addr)
	}
	coll = connect(t, srv2.URI()).Database("t").Collection("c")
	n, err := coll.CountDocuments(ctx, bson.D{})
	if err != nil || n != 1 {
		t.Fatalf("count after restart = %d, %v; want 1", n, err)
	}
	_, err = coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "c"}, {Key: "name", Value: "x"}})
	if !mongo.IsDuplicateKeyError(err) {
		t.Fatalf("unique index lost after restart: %v", err)
	}
}

func TestStartBadInput(t *testing.T) {
	ctx := context.Background()
	if _, err := localmongo.Start(ctx, localmongo.Options{}); err == nil {
		t.Fatal("Start without Dir succeeded")
	}
	srv, err := localmongo.Start(ctx, localmongo.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// A port already in use is an error, not a hang.
	if s2, err := localmongo.Start(ctx, localmongo.Options{Dir: t.TempDir(), Addr: srv.Addr()}); err == nil {
		s2.Close()
		t.Fatal("Start on a used address succeeded")
	}
}
