package annotator

import (
	"context"
	"errors"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/annotator/internal/store"
	"github.com/gradeline/gradeline/bus/admin"
)

// readinessTimeout bounds one readiness check: a store that takes longer
// to find one document by _id is not serving.
const readinessTimeout = 2 * time.Second

// MongoCheck is a readiness check against MongoDB at uri, over one client
// kept until ctx ends. It runs what every query needs to work,
// not just a ping: a lookup by _id (an index search on any size of
// collection) in database's annotations, with a deadline that the server
// enforces too (maxTimeMS), so a jammed store reads as not ready.
//
// The client is disconnected when ctx ends: an embedded store's shutdown
// waits for its open connections (FerretDB gave a forgotten one 3 s).
func MongoCheck(ctx context.Context, uri, database string) admin.Check {
	if database == "" {
		database = DefaultDatabase
	}
	client, err := mongo.Connect(options.Client().ApplyURI(uri).
		SetServerSelectionTimeout(readinessTimeout).
		SetTimeout(readinessTimeout))
	if err == nil {
		context.AfterFunc(ctx, func() {
			dctx, cancel := context.WithTimeout(context.Background(), readinessTimeout)
			defer cancel()
			_ = client.Disconnect(dctx)
		})
	}
	return func(ctx context.Context) error {
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, readinessTimeout)
		defer cancel()
		err := client.Database(database).Collection(store.CollAnnotations).
			FindOne(ctx, bson.D{{Key: "_id", Value: "readiness-probe"}}).Err()
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil
		}
		return err
	}
}
