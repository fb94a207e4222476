package inference

import (
	"fmt"
	"time"

	"github.com/gradeline/gradeline/bus/admin"
)

// maxQueueDelayLimit bounds GRADELINE_MAX_QUEUE_DELAY: a longer wait only
// adds latency.
const maxQueueDelayLimit = 10 * time.Second

// maxModelsPoll bounds GRADELINE_MODELS_POLL.
const maxModelsPoll = time.Hour

// VarMaxQueueDelay is the batching delay, read by the inference service
// and by local mode alike.
var VarMaxQueueDelay = admin.Var{Name: "GRADELINE_MAX_QUEUE_DELAY", Default: "`" + DefaultMaxQueueDelay.String() + "`", Meaning: "how long a model version's queue waits to fill a batch after its oldest image arrived (Triton's `max_queue_delay`), for models whose `model.yaml` sets no `max_queue_delay`; such a queue also runs at once when nothing else waits on the server (a lone client does not pay the delay)"}

// EnvVars are the environment variables ConfigFromEnv reads (and
// GRADELINE_MAX_IMAGE_PIXELS, read when the package loads).
var EnvVars = []admin.Var{
	admin.VarNATSURL,
	{Name: "ONNXRUNTIME_LIB", Default: "`.cache/onnxruntime/libonnxruntime.so.1` (`make`); **required** by the service binary", Meaning: "another copy of ONNX Runtime (≥ 1.24)"},
	{Name: "GRADELINE_MODELS_DIR", Meaning: "colon-separated folders of extra model directories"},
	{Name: "GRADELINE_MODELS_POLL", Default: "`" + DefaultModelsPoll.String() + "`", Meaning: "how often each inference replica scans its models folders for new, changed and removed versions (`off`: never; the repository API still loads and unloads)"},
	VarMaxQueueDelay,
	{Name: EnvMaxImagePixels, Default: fmt.Sprintf("`%d` (16 MP)", DefaultMaxImagePixels), Meaning: "absolute cap on the pixels inference decodes; below it each model decodes at most `input.max_pixels` of its `model.yaml` (default 64× its input, at least 4 MP); a JPEG much larger than the input is decoded downscaled (libjpeg DCT scaling, up to 1/8) and the limit applies to what is decoded; other larger images fail with a 422 naming the limit"},
	admin.VarNATSCA, admin.VarAdminAddr, admin.VarLogLevel,
}

// ConfigFromEnv reads the production configuration of inference; the
// error lists every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	e := admin.NewEnv(getenv)
	cfg := Config{
		AdminAddr:     e.Get("GRADELINE_ADMIN_ADDR"),
		NATSURL:       e.Required("NATS_URL", "e.g. nats://inference:PASSWORD@nats:4222"),
		ORTLib:        e.Required("ONNXRUNTIME_LIB", "the path of libonnxruntime.so.1; `make install` puts it in .cache/onnxruntime"),
		ModelsDirs:    e.Paths("GRADELINE_MODELS_DIR"),
		MaxQueueDelay: e.Duration("GRADELINE_MAX_QUEUE_DELAY", DefaultMaxQueueDelay, maxQueueDelayLimit),
		Logger:        e.Logger(false),
	}
	if e.Get("GRADELINE_MODELS_POLL") == "off" {
		cfg.ModelsPoll = -1
	} else {
		cfg.ModelsPoll = e.Duration("GRADELINE_MODELS_POLL", DefaultModelsPoll, maxModelsPoll)
	}
	e.Parse(EnvMaxImagePixels, fmt.Sprintf("use e.g. %d", DefaultMaxImagePixels), func(v string) error {
		if _, err := parseMaxImagePixels(v); err != nil {
			return err
		}
		return nil
	})
	return cfg, e.Err()
}
