package analytics

import (
	"github.com/gradeline/gradeline/bus/admin"
)

// EnvVars are the environment variables ConfigFromEnv reads.
var EnvVars = []admin.Var{
	admin.VarNATSURL,
	{Name: "CLICKHOUSE_DSN", Default: "embedded ClickHouse engine (local mode); **required** by the service binaries", Meaning: "a real clickhouse-server, e.g. `clickhouse://host:9000/default`"},
	admin.VarNATSCA, admin.VarAdminAddr, admin.VarLogLevel,
}

// ConfigFromEnv reads the production configuration of analytics; the
// error lists every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	e := admin.NewEnv(getenv)
	cfg := Config{
		AdminAddr:     e.Get("GRADELINE_ADMIN_ADDR"),
		NATSURL:       e.Required("NATS_URL", "e.g. nats://analytics:PASSWORD@nats:4222"),
		ClickHouseDSN: e.Required("CLICKHOUSE_DSN", "e.g. clickhouse://clickhouse:9000/default"),
		Logger:        e.Logger(false),
	}
	return cfg, e.Err()
}
