package store

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/gradeline/gradeline/bus"
)

// TestQueriesUseIndexes fails when a query path of the store becomes a
// scan on the embedded store: for every filter the store sends, the plan
// PostgreSQL reports for the SQL FerretDB pushes down (`_jsonb->'f' @> v`
// per equality, the field name a bind parameter) must use an index.
func TestQueriesUseIndexes(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	var anns []*bus.AnnotationCreated
	for i := range 3000 {
		anns = append(anns, annotation(fmt.Sprintf("u%d", i%100), fmt.Sprintf("img-%d", i%300), `{"i":1}`))
	}
	check(t)(s.InsertAnnotations(ctx, anns))
	var cat, grades []bus.Event
	for i := range 2000 {
		cat = append(cat, catalogued(fmt.Sprintf("im%04d", i), fmt.Sprintf("o%d", i%100), fmt.Sprintf("t%d", i%40)))
		g := completed(bus.NewID())
		g.ImageID = fmt.Sprintf("im%04d", i)
		grades = append(grades, g)
	}
	check(t)(s.ApplyCatalog(ctx, cat))
	check(t)(s.ApplyGrades(ctx, grades))
	var subs []*bus.ImageSubmitted
	for i := range 2000 {
		subs = append(subs, submitted(bus.NewID(), fmt.Sprintf("im%04d", i), "o1"))
	}
	check(t)(s.recordPending(ctx, subs))
	// Results stored before the history was one document (CollGrades).
	var legacy []any
	for i := range 2000 {
		legacy = append(legacy, bson.D{{Key: "_id", Value: bus.NewID()}, {Key: "status", Value: bus.GradeStatusCompleted},
			{Key: "image_id", Value: fmt.Sprintf("im%04d", i)}, {Key: "owner", Value: "erin"}, {Key: "model", Value: "fashion"},
			{Key: "model_version", Value: "1"}, {Key: "label", Value: "bag"}, {Key: "completed_at", Value: time.Now().UTC()}})
	}
	if _, err := s.legacy.InsertMany(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	// As many shelf counters as authors at scale make a scan the costlier plan.
	var counters []any
	for i := range 3000 {
		counters = append(counters, bson.D{{Key: "_id", Value: fmt.Sprintf("x%d", i)}, {Key: "n", Value: int64(1)}})
	}
	if _, err := s.shelves.coll.InsertMany(ctx, counters); err != nil {
		t.Fatal(err)
	}
	if _, err := s.imageShelves.coll.InsertMany(ctx, counters); err != nil {
		t.Fatal(err)
	}
	if err := server.SyncIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, server.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	schema := s.db.Name()
	table := func(coll string) string {
		var name string
		q := fmt.Sprintf(`SELECT _jsonb->>'table' FROM %s WHERE _jsonb->>'_id' = $1`, pgx.Identifier{schema, "_ferretdb_database_metadata"}.Sanitize())
		if err := conn.QueryRow(ctx, q, coll).Scan(&name); err != nil {
			t.Fatalf("table of %s: %v", coll, err)
		}
		if _, err := conn.Exec(ctx, "ANALYZE "+pgx.Identifier{schema, name}.Sanitize()); err != nil {
			t.Fatal(err)
		}
		return name
	}
	type eq struct {
		field string
		value string // sjson of the value, as FerretDB sends it
	}
	cases := []struct {
		name, coll string
		filter     []eq
	}{
		{"annotations by image", CollAnnotations, []eq{{"image_id", `"img-7"`}}},
		{"annotations by author", CollAnnotations, []eq{{"author", `"u7"`}}},
		{"annotations by image and author", CollAnnotations, []eq{{"image_id", `"img-7"`}, {"author", `"u7"`}}},
		{"annotations by author's shelf", CollAnnotations, []eq{{"shelf", `"1:u7"`}}},
		{"author's newest shelf", CollShelves, []eq{{"_id", `"u7"`}}},
		{"images by owner's shelf", CollImages, []eq{{"shelf", `"1:o7"`}, {"catalogued", `true`}, {"deleted", `false`}}},
		{"images by owner's shelf and tag", CollImages, []eq{{"shelf", `"1:o7"`}, {"catalogued", `true`}, {"deleted", `false`}, {"tags", `"t7"`}}},
		{"owner's newest shelf", CollImageShelves, []eq{{"_id", `"o7"`}}},
		{"annotation by id", CollAnnotations, []eq{{"_id", `"` + anns[5].ID + `"`}}},
		{"images by owner", CollImages, []eq{{"owner", `"o7"`}, {"catalogued", `true`}, {"deleted", `false`}}},
		{"images by owner and tag", CollImages, []eq{{"owner", `"o7"`}, {"catalogued", `true`}, {"deleted", `false`}, {"tags", `"t7"`}}},
		{"image by id", CollImages, []eq{{"_id", `"im0007"`}, {"owner", `"o7"`}, {"catalogued", `true`}, {"deleted", `false`}}},
		{"grade by id", CollGradeHistory, []eq{{"_id", `"` + grades[3].(*bus.GradeCompleted).GradeID + `"`}}},
		{"pending grade by id", CollGradeHistory, []eq{{"_id", `"` + subs[3].ID + `"`}}},
		{"grades by image and owner", CollGradeHistory, []eq{{"image_id", `"im0007"`}, {"owner", `"o1"`}}},
		{"legacy result by id", CollGrades, []eq{{"_id", `"` + legacy[3].(bson.D)[0].Value.(string) + `"`}}},
		// TaggedImages: each shelf of every owner, and each image's served
		// grade. (Its owners come from the shelf counters, read whole:
		// one small document per owner, which no equality can page.)
		{"tagged images on a shelf", CollImages, []eq{{"shelf", `"1:o7"`}, {"catalogued", `true`}, {"deleted", `false`}, {"tags", `"t7"`}}},
		{"served grade of an image by model version", CollGradeHistory, []eq{{"image_id", `"im0007"`}, {"owner", `"erin"`},
			{"status", `"completed"`}, {"model", `"fashion"`}, {"model_version", `"1"`}}},
		{"served legacy grade of an image by model version", CollGrades, []eq{{"image_id", `"im0007"`}, {"owner", `"erin"`},
			{"status", `"completed"`}, {"model", `"fashion"`}, {"model_version", `"1"`}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var where []string
			var args []any
			for i, f := range tc.filter {
				where = append(where, fmt.Sprintf("_jsonb->$%d @> $%d", 2*i+1, 2*i+2))
				args = append(args, f.field, f.value)
			}
			q := fmt.Sprintf("EXPLAIN SELECT _jsonb FROM %s WHERE %s", pgx.Identifier{schema, table(tc.coll)}.Sanitize(), strings.Join(where, " AND "))
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			rows, err := conn.Query(qctx, q, args...)
			if err != nil {
				t.Fatal(err)
			}
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			plan := strings.Join(lines, "\n")
			if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "_gin_") {
				t.Fatalf("%s is not an index search:\n%s", tc.name, plan)
			}
		})
	}
}
