package manifests

import "github.com/gradeline/gradeline/bus"

// Service is one gradeline service as deployed: what it is built from and
// which environment it needs. The table is the single place the checks of
// docker-compose.yml, the Dockerfile and the Kubernetes manifests agree on.
type Service struct {
	// Name is the compose service, the Dockerfile target, the Kubernetes
	// Deployment and the binary under /usr/local/bin.
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

// Services is the table of the four services.
var Services = []Service{
	{
		Name: "ingest", Package: "./ingest/cmd/ingest", Port: 8080,
		Env:       []string{"GRADELINE_HTTP_ADDR", "NATS_URL", "MONGO_URI", "GRADELINE_JWT_SECRET", "GRADELINE_SIGNUP_CODE", "GRADELINE_REPLICAS"},
		SecretEnv: []string{"MONGO_URI", "GRADELINE_JWT_SECRET", "GRADELINE_SIGNUP_CODE"},
	},
	{
		Name: "annotator", Package: "./annotator/cmd/annotator", Port: 9090,
		Env:       []string{"NATS_URL", "MONGO_URI", "GRADELINE_ADMIN_ADDR", "GRADELINE_REPLICAS"},
		SecretEnv: []string{"MONGO_URI"},
	},
	{
		Name: "inference", Package: "./inference/cmd/inference", Port: 9090, Cgo: true,
		Env: []string{"NATS_URL", "ONNXRUNTIME_LIB", "GRADELINE_ADMIN_ADDR", "GRADELINE_REPLICAS"},
	},
	{
		Name: "analytics", Package: "./analytics/cmd/analytics", Port: 9090,
		Env:       []string{"NATS_URL", "CLICKHOUSE_DSN", "GRADELINE_ADMIN_ADDR", "GRADELINE_REPLICAS"},
		SecretEnv: []string{"CLICKHOUSE_DSN"},
	},
}

// Edge is the only service reachable from outside.
const Edge = "ingest"

// HealthProbe is the health check binary in every gradeline image.
const HealthProbe = "/usr/local/bin/healthprobe"

// LagScaled names the durable consumer whose backlog scales a worker:
// KEDA's nats-jetstream trigger must name its stream and durable.
var LagScaled = map[string]bus.ConsumerSpec{
	"inference": bus.ConsumerInference,
	"annotator": bus.ConsumerAnnotator,
}

// ServiceByName returns the row of the table, or false.
func ServiceByName(name string) (Service, bool) {
	for _, s := range Services {
		if s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}
