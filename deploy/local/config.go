package local

import (
	"fmt"
	"runtime/debug"

	"github.com/gradeline/gradeline/analytics/localch"
	"github.com/gradeline/gradeline/annotator/localmongo"
	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/gradeline/gradeline/inference"
	"github.com/gradeline/gradeline/ingest"
)

// Defaults of local mode.
const (
	DefaultDataDir   = "./data"
	DefaultAdminAddr = "127.0.0.1:9090"
)

// EnvVars are the environment variables of local mode (gradeline-local,
// `make run`): those ConfigFromEnv reads, and those the embedded servers'
// launchers read themselves.
var EnvVars = []admin.Var{
	{Name: "GRADELINE_HTTP_ADDR", Default: "`" + ingest.DefaultAddr + "`", Meaning: "listen address of the HTTP edge"},
	{Name: "GRADELINE_DATA_DIR", Default: "`" + DefaultDataDir + "`", Meaning: "data of the embedded servers and the local JWT secret (the `gradeline` CLI finds the stack's URLs there)"},
	admin.VarNATSURL,
	admin.VarNATSCA,
	{Name: "MONGO_URI", Default: "embedded FerretDB on PostgreSQL 15", Meaning: "a real MongoDB (replica set in production); **required** by the service binaries and read by `gradeline admin`"},
	{Name: localmongo.PostgresBinEnv, Default: "`.cache/postgresql/bin` (`make`), else `/usr/lib/postgresql/15/bin`", Meaning: "PostgreSQL 15 programs for the embedded store (`initdb`, `postgres`)"},
	{Name: "CLICKHOUSE_DSN", Default: "embedded ClickHouse engine", Meaning: "a real clickhouse-server, e.g. `clickhouse://host:9000/default`; **required** by the analytics binary"},
	{Name: "GRADELINE_JWT_SECRET", Default: "generated once, kept in the data dir", Meaning: "HS256 signing secret, at least 32 bytes; **required** outside local mode"},
	{Name: "GRADELINE_SIGNUP_CODE", Default: "`" + ingest.LocalSignupCode + "`", Meaning: "code needed to register; **required** outside local mode"},
	{Name: "GRADELINE_GRADE_WAIT", Default: "`" + ingest.DefaultGradeWait.String() + "`", Meaning: "how long `POST /api/v1/grades` waits for the grade before answering 202 with its `Location` (a request's `?wait=` overrides it)"},
	{Name: "GRADELINE_CALLBACK_ALLOW", Default: "none", Meaning: "comma-separated CIDRs a grade's `callback_url` may reach although they are not public (loopback, private, link-local ...); refused otherwise, at submission and again when delivering"},
	{Name: "GRADELINE_MODELS_DIR", Meaning: "colon-separated folders of extra model directories"},
	inference.VarMaxQueueDelay,
	{Name: natsserver.EnvNATSSync, Default: "server default (`2m`)", Meaning: "local mode: how often the embedded NATS fsyncs its streams (JetStream `sync_interval`); `always` fsyncs every event before it is acknowledged, so a power cut on the single node loses nothing acknowledged, at the cost measured under Performance; or a duration (`1s`). A real NATS server takes `jetstream { sync_interval: always }` in its configuration"},
	{Name: "ONNXRUNTIME_LIB", Default: "`.cache/onnxruntime/libonnxruntime.so.1`", Meaning: "another copy of ONNX Runtime (≥ 1.24)"},
	{Name: localch.EnvLauncher, Default: "`.cache/chdb/gradeline-chdb`", Meaning: "the ClickHouse engine launcher built by `make install`"},
	admin.VarAdminAddr,
	admin.VarLogLevel,
	{Name: "GOGC", Default: fmt.Sprintf("`%d` in local mode", DefaultGCPercent), Meaning: "Go's garbage collector target (see `runtime/debug.SetGCPercent`): local mode runs every service in one process and trades memory (the heap grows to about 5× its live size, ~300 MB under `make bench`) for less collector CPU; set it to override"},
}

// DefaultGCPercent is the collector target of local mode when GOGC is not
// set: all services share one heap of ~65 MB live under load, collected
// about four times a second at Go's default of 100.
const DefaultGCPercent = 400

// SetGC applies DefaultGCPercent unless GOGC is set, which the runtime
// has then read already.
func SetGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
	}
}

// ConfigFromEnv reads the configuration of local mode: every server
// whose URL is unset is embedded. The error lists every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	e := admin.NewEnv(getenv)
	cfg := Config{
		DataDir:       e.Or("GRADELINE_DATA_DIR", DefaultDataDir),
		HTTPAddr:      e.Or("GRADELINE_HTTP_ADDR", ingest.DefaultAddr),
		AdminAddr:     e.Or("GRADELINE_ADMIN_ADDR", DefaultAdminAddr),
		NATSURL:       e.Get("NATS_URL"),
		MongoURI:      e.Get("MONGO_URI"),
		ClickHouseDSN: e.Get("CLICKHOUSE_DSN"),
		SignupCode:    e.Or("GRADELINE_SIGNUP_CODE", ingest.LocalSignupCode),
		GradeWait:     e.Duration("GRADELINE_GRADE_WAIT", ingest.DefaultGradeWait, 0),
		ModelsDirs:    e.Paths("GRADELINE_MODELS_DIR"),
		MaxQueueDelay: e.Duration("GRADELINE_MAX_QUEUE_DELAY", inference.DefaultMaxQueueDelay, 0),
		ORTLib:        e.Get("ONNXRUNTIME_LIB"),
		ChdbLauncher:  e.Get(localch.EnvLauncher),
		Logger:        e.Logger(true),
	}
	if v := getenv("GRADELINE_JWT_SECRET"); v != "" { // else generated once into the data dir
		cfg.JWTSecret = e.Secret("GRADELINE_JWT_SECRET", ingest.MinSecretBytes, "random bytes, e.g. `openssl rand -hex 32`, or unset to keep one in the data dir")
	}
	e.Parse("GRADELINE_CALLBACK_ALLOW", "comma-separated CIDRs or addresses, e.g. 127.0.0.1", func(v string) (err error) {
		cfg.CallbackAllow, err = ingest.ParseTrustedProxies(v)
		return err
	})
	var err error
	cfg.NATSSync, err = natsserver.ParseSync(e.Get(natsserver.EnvNATSSync))
	e.Add(err)
	return cfg, e.Err()
}
