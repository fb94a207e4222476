package iris_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/gradeline/gradeline/analytics/iris"
	"github.com/gradeline/gradeline/analytics/schema"
)

// Query iris measurements from a Go program: no NATS, no HTTP, just a
// ClickHouse connection.
func Example() {
	ctx := context.Background()
	opts, err := clickhouse.ParseDSN(os.Getenv("CLICKHOUSE_DSN")) // e.g. clickhouse://127.0.0.1:9000/default
	if err != nil {
		log.Fatal(err)
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// Create the tables and load the canonical 150 rows (both idempotent).
	if _, err := schema.Migrate(ctx, conn, nil); err != nil {
		log.Fatal(err)
	}
	if _, err := iris.Provision(ctx, conn); err != nil {
		log.Fatal(err)
	}

	// Mean of every column per species.
	stats, err := iris.Stats(ctx, conn, iris.StatsQuery{Func: "mean"})
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range stats {
		fmt.Printf("%-10s n=%d mean sepal length %.3f\n", s.Label, s.Count, s.Values["sepal_length"])
	}

	// Setosa flowers with a sepal length between 5.5 and 6 cm, both bounds
	// inclusive, shortest sepal first, two rows per page.
	page, err := iris.Range(ctx, conn, iris.RangeQuery{
		IrisFilter: iris.Filter{
			Species: []string{"setosa"},
			Lower:   map[string]float64{"sepal_length": 5.5},
			Upper:   map[string]float64{"sepal_length": 6},
		},
		Sort:    "sepal_length",
		PerPage: 2,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d rows match; page %d:\n", page.Total, page.Page)
	for _, r := range page.Data {
		fmt.Printf("  %+v\n", r)
	}
	// Output:
	// setosa     n=50 mean sepal length 5.006
	// versicolor n=50 mean sepal length 5.936
	// virginica  n=50 mean sepal length 6.588
	// 5 rows match; page 1:
	//   {SepalLength:5.5 SepalWidth:4.2 PetalLength:1.4 PetalWidth:0.2 Species:setosa}
	//   {SepalLength:5.5 SepalWidth:3.5 PetalLength:1.3 PetalWidth:0.2 Species:setosa}
}
