package annotator

import (
	"github.com/gradeline/gradeline/bus/admin"
)

// EnvVars are the environment variables ConfigFromEnv reads.
var EnvVars = []admin.Var{
	admin.VarNATSURL,
	{Name: "MONGO_URI", Default: "embedded FerretDB on PostgreSQL 15 (local mode); **required** by the service binaries", Meaning: "a real MongoDB (replica set in production)"},
	{Name: "GRADELINE_MONGO_DB", Default: "`" + DefaultDatabase + "`", Meaning: "MongoDB database of the users, annotations, image catalogue and grade history (ingest, annotator, `gradeline admin`)"},
	admin.VarNATSCA, admin.VarAdminAddr, admin.VarLogLevel,
}

// ConfigFromEnv reads the production configuration of the annotator; the
// error lists every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	e := admin.NewEnv(getenv)
	cfg := Config{
		AdminAddr: e.Get("GRADELINE_ADMIN_ADDR"),
		NATSURL:   e.Required("NATS_URL", "e.g. nats://annotator:PASSWORD@nats:4222"),
		MongoURI:  e.Required("MONGO_URI", "e.g. mongodb://mongo:27017/?replicaSet=rs0"),
		Database:  e.Or("GRADELINE_MONGO_DB", DefaultDatabase),
		Logger:    e.Logger(false),
	}
	return cfg, e.Err()
}
