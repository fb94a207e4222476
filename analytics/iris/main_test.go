package iris_test

import (
	"os"
	"testing"

	"github.com/gradeline/gradeline/analytics/internal/chtest"
)

func TestMain(m *testing.M) {
	chtest.Main(&exampleEnv{m})
}

// exampleEnv points CLICKHOUSE_DSN at the shared engine for the Example,
// which connects the way a library user would.
type exampleEnv struct{ m *testing.M }

func (e *exampleEnv) Run() int {
	os.Setenv("CLICKHOUSE_DSN", chtest.Server().DSN())
	return e.m.Run()
}
