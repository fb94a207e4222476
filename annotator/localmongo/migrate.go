package localmongo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// migratedDir receives the SQLite files of the earlier layout once their
// documents are copied, so a failed copy is simply done again at the next
// start (inserts of documents already copied are skipped as duplicates).
const migratedDir = "sqlite-migrated"

// migrateSQLite copies every document of a data directory made by the
// SQLite layout (Dir/<database>.sqlite) into the running server at uri.
func migrateSQLite(ctx context.Context, dir, uri string, log *slog.Logger) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.sqlite"))
	if err != nil || len(files) == 0 {
		return err
	}
	log.Info("copying the documents of the earlier SQLite store to PostgreSQL (once)", "dir", dir, "databases", len(files))
	start := time.Now()
	old, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Logger:    quiet(nil),
		Handler:   "sqlite",
		SQLiteURL: (&url.URL{Scheme: "file", Path: dir + "/"}).String(),
	})
	if err != nil {
		return fmt.Errorf("localmongo: open the SQLite store in %s: %w", dir, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = old.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	src, err := mongo.Connect(options.Client().ApplyURI(old.MongoDBURI()).SetDirect(true))
	if err != nil {
		return fmt.Errorf("localmongo: migrate: %w", err)
	}
	defer func() { _ = src.Disconnect(context.Background()) }()
	dst, err := mongo.Connect(options.Client().ApplyURI(uri).SetDirect(true))
	if err != nil {
		return fmt.Errorf("localmongo: migrate: %w", err)
	}
	defer func() { _ = dst.Disconnect(context.Background()) }()

	var total int64
	for _, f := range files {
		db := strings.TrimSuffix(filepath.Base(f), ".sqlite")
		colls, err := src.Database(db).ListCollectionNames(ctx, bson.D{})
		if err != nil {
			return fmt.Errorf("localmongo: migrate %s: %w", db, err)
		}
		for _, c := range colls {
			n, err := copyCollection(ctx, src.Database(db).Collection(c), dst.Database(db).Collection(c), log)
			total += n
			if err != nil {
				return fmt.Errorf("localmongo: migrate %s.%s after %d documents: %w", db, c, n, err)
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, migratedDir), 0o750); err != nil {
		return fmt.Errorf("localmongo: migrate: %w", err)
	}
	cancel()
	<-done
	for _, f := range files {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			err := os.Rename(f+suffix, filepath.Join(dir, migratedDir, filepath.Base(f)+suffix))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("localmongo: migrate: %w", err)
			}
		}
	}
	log.Info("SQLite store copied", "documents", total, "took", time.Since(start).Round(time.Millisecond),
		"old_files", filepath.Join(dir, migratedDir))
	return nil
}

// copyCollection copies all documents, in batches, logging progress.
func copyCollection(ctx context.Context, from, to *mongo.Collection, log *slog.Logger) (int64, error) {
	cur, err := from.Find(ctx, bson.D{}, options.Find().SetBatchSize(1000))
	if err != nil {
		return 0, err
	}
	defer cur.Close(ctx)
	var (
		n     int64
		batch []any
		last  = time.Now()
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := to.InsertMany(ctx, batch, options.InsertMany().SetOrdered(false))
		var bwe mongo.BulkWriteException
		if errors.As(err, &bwe) && bwe.WriteConcernError == nil {
			for _, we := range bwe.WriteErrors {
				if !mongo.IsDuplicateKeyError(mongo.WriteException{WriteErrors: mongo.WriteErrors{we.WriteError}}) {
					return err
				}
			}
			err = nil
		}
		if err != nil {
			return err
		}
		n += int64(len(batch))
		batch = batch[:0]
		if time.Since(last) > 5*time.Second {
			log.Info("copying", "collection", from.Database().Name()+"."+from.Name(), "documents", n)
			last = time.Now()
		}
		return nil
	}
	for cur.Next(ctx) {
		batch = append(batch, bson.Raw(append([]byte(nil), cur.Current...)))
		if len(batch) == 1000 {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := cur.Err(); err != nil {
		return n, err
	}
	return n, flush()
}
