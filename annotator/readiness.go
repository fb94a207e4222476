package annotator

import (
	"context"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/bus/admin"
)

// MongoCheck is a readiness check that pings MongoDB at uri over one
// client kept for the life of the check.
func MongoCheck(uri string) admin.Check {
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(2 * time.Second))
	return func(ctx context.Context) error {
		if err != nil {
			return err
		}
		return client.Ping(ctx, nil)
	}
}
