package manifests

import "github.com/gradeline/gradeline/bus"

// service is one gradeline service as deployed: what it is built from and
// which environment it needs. The table is the single place the checks of
// docker-compose.yml, the Dockerfile and the Kubernetes manifests agree on.
type service struct {
	// Name is the compose service, the Dockerfile target, the Kubernetes
	// Deployment, the binary under /usr/local/bin and the service's own
	// NATS user (the bus contract's name).
	Name string
	// Package is the main package, relative to the repository root.
	Package string
	// Cgo is true for the one binary that links ONNX Runtime.
	Cgo bool
	// Port serves /healthz, /readyz and /metrics: the HTTP port of the edge,
	// the admin port (GRADELINE_ADMIN_ADDR) of the others.
	Port int
	// Env must be set, non-empty, in every deployment.
	Env []string
	// SecretEnv is the part of Env that holds credentials: in Kubernetes it
	// must come from a Secret, never from a literal or a ConfigMap.
	SecretEnv []string
}

// services is the table of the four services.
var services = []service{
	{
		Name: bus.UserIngest, Package: "./ingest/cmd/ingest", Port: 8080,
		Env:       []string{"GRADELINE_HTTP_ADDR", "NATS_URL", "MONGO_URI", "GRADELINE_JWT_SECRET", "GRADELINE_SIGNUP_CODE", bus.EnvReplicas},
		SecretEnv: []string{"MONGO_URI", "GRADELINE_JWT_SECRET", "GRADELINE_SIGNUP_CODE"},
	},
	{
		Name: bus.UserAnnotator, Package: "./annotator/cmd/annotator", Port: 9090,
		Env:       []string{"NATS_URL", "MONGO_URI", "GRADELINE_ADMIN_ADDR", bus.EnvReplicas},
		SecretEnv: []string{"MONGO_URI"},
	},
	{
		Name: bus.UserInference, Package: "./inference/cmd/inference", Port: 9090, Cgo: true,
		Env: []string{"NATS_URL", "ONNXRUNTIME_LIB", "GRADELINE_ADMIN_ADDR", bus.EnvReplicas},
	},
	{
		Name: bus.UserAnalytics, Package: "./analytics/cmd/analytics", Port: 9090,
		Env:       []string{"NATS_URL", "CLICKHOUSE_DSN", "GRADELINE_ADMIN_ADDR", bus.EnvReplicas},
		SecretEnv: []string{"CLICKHOUSE_DSN"},
	},
}

// edgeName is the only service reachable from outside.
const edgeName = bus.UserIngest

// healthProbe is the health check binary in every gradeline image.
const healthProbe = "/usr/local/bin/healthprobe"

// lagScaled names the durable consumer whose backlog scales a worker:
// KEDA's nats-jetstream trigger must name its stream and durable.
var lagScaled = map[string]bus.ConsumerSpec{
	bus.UserInference: bus.ConsumerInference,
	bus.UserAnnotator: bus.ConsumerAnnotator,
}

// job is a one-shot step of a deployment, run from the operator CLI's image.
type job struct {
	// Compose is its service in docker-compose.yml, Kube its Job in deploy/k8s.
	Compose, Kube string
	// Target is the Dockerfile target and the binary under /usr/local/bin.
	Target string
	// Package is the main package, relative to the repository root.
	Package string
	// Args are the command's arguments.
	Args []string
	// User is the NATS user it connects as.
	User string
	// Env must be set, non-empty, in every deployment.
	Env []string
}

// setupJob creates the streams and the image bucket (`gradeline setup`,
// bus.EnsureStreams) before the services start: the one owner of the
// streams, as the NATS operator; the services wait for it.
var setupJob = job{
	Compose: "setup", Kube: "gradeline-setup", Target: "gradeline", Package: "./deploy/cmd/gradeline",
	Args: []string{"setup"}, User: bus.UserAdmin, Env: []string{"NATS_URL", bus.EnvReplicas},
}

// serviceByName returns the row of the table, or false.
func serviceByName(name string) (service, bool) {
	for _, s := range services {
		if s.Name == name {
			return s, true
		}
	}
	return service{}, false
}
