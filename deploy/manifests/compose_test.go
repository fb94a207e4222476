package manifests

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../.."

// composeEnv holds dummy values for the variables docker-compose.yml
// requires (${VAR:?...}).
var composeEnv = map[string]string{
	"GRADELINE_JWT_SECRET":  "test-jwt-secret-0123456789abcdef0123456789",
	"GRADELINE_SIGNUP_CODE": "test-signup-code",
	"CLICKHOUSE_PASSWORD":   "test-clickhouse-password",

	"NATS_INGEST_PASSWORD":     "test-nats-ingest",
	"NATS_INFERENCE_PASSWORD":  "test-nats-inference",
	"NATS_ANNOTATOR_PASSWORD":  "test-nats-annotator",
	"NATS_ANALYTICS_PASSWORD":  "test-nats-analytics",
	"NATS_ADMIN_PASSWORD":      "test-nats-admin",
	"NATS_SUBSCRIBER_PASSWORD": "test-nats-subscriber",
}

func TestCompose(t *testing.T) {
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	p, err := LoadCompose(context.Background(), root, composeEnv)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckCompose(p); err != nil {
		t.Fatal(err)
	}
	// Spot checks of what the loader resolved, so a check that silently
	// passes on an empty project cannot hide.
	if got := len(p.Services); got != 7 {
		t.Errorf("%d services, want 7 (nats, mongo, clickhouse and the four of gradeline)", got)
	}
	if v := p.Services["ingest"].Environment["GRADELINE_JWT_SECRET"]; v == nil || *v != composeEnv["GRADELINE_JWT_SECRET"] {
		t.Errorf("ingest's GRADELINE_JWT_SECRET is %v, want the interpolated test value", v)
	}
	for _, name := range []string{"nats-data", "mongo-data", "clickhouse-data"} {
		if _, ok := p.Volumes[name]; !ok {
			t.Errorf("no named volume %q", name)
		}
	}
	if hc := p.Services["nats"].HealthCheck; hc == nil || !strings.Contains(strings.Join(hc.Test, " "), "/healthz?js-enabled-only=true") {
		t.Errorf("nats health check %v does not ask JetStream", hc)
	}
}

// TestComposeBadInput loads mutated copies of docker-compose.yml: each must
// be refused, by the loader or by CheckCompose, naming the problem.
func TestComposeBadInput(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		old, new string // replaced once in the file
		unset    string // a required variable left out of the environment
		want     string
	}{
		{name: "missing secret", unset: "GRADELINE_JWT_SECRET", want: "GRADELINE_JWT_SECRET"},
		{name: "misspelt key", old: "    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8222",
			new: "    healthchek:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8222", want: "healthchek"},
		{name: "no health check", old: "    healthcheck:\n      test: [\"CMD\", \"/usr/local/bin/healthprobe\", \"http://127.0.0.1:9090/readyz\"]\n      interval: 10s\n      timeout: 3s\n      retries: 5\n      start_period: 20s\n",
			new: "", want: `service "inference" has no health check`},
		{name: "shell health check in distroless", old: `["CMD", "/usr/local/bin/healthprobe", "http://127.0.0.1:8080/readyz"]`,
			new: `["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/readyz"]`, want: "has no shell"},
		{name: "health check on the wrong port", old: `"http://127.0.0.1:8080/readyz"`, new: `"http://127.0.0.1:9090/readyz"`, want: "does not ask port 8080"},
		{name: "second published port", old: "    expose: [\"9090\"]\n", new: "    ports: [\"9090:9090\"]\n", want: "publishes port 9090"},
		{name: "dependency not healthy", old: "      clickhouse: {condition: service_healthy}", new: "      clickhouse: {condition: service_started}", want: `depends on "clickhouse" with condition "service_started"`},
		{name: "required env missing", old: "      GRADELINE_ADMIN_ADDR: \":9090\"\n      GRADELINE_REPLICAS: \"1\"\n    expose: [\"9090\"]\n    healthcheck:\n      test: [\"CMD\", \"/usr/local/bin/healthprobe\", \"http://127.0.0.1:9090/readyz\"]\n      interval: 10s\n      timeout: 3s\n      retries: 5\n      start_period: 15s\n    depends_on:\n      nats: {condition: service_healthy}\n      mongo",
			new:  "      GRADELINE_REPLICAS: \"1\"\n    expose: [\"9090\"]\n    healthcheck:\n      test: [\"CMD\", \"/usr/local/bin/healthprobe\", \"http://127.0.0.1:9090/readyz\"]\n      interval: 10s\n      timeout: 3s\n      retries: 5\n      start_period: 15s\n    depends_on:\n      nats: {condition: service_healthy}\n      mongo",
			want: `"annotator": required environment GRADELINE_ADMIN_ADDR`},
		{name: "url to a missing host", old: "@nats:4222", new: "@natz:4222", want: `points at host "natz"`},
		{name: "anonymous nats", old: "NATS_URL: nats://annotator:${NATS_ANNOTATOR_PASSWORD:?set NATS_ANNOTATOR_PASSWORD (see deploy/docker/compose.env.example)}@nats:4222", new: "NATS_URL: nats://nats:4222", want: "no anonymous NATS"},
		{name: "nats without users", old: `command: ["--config", "/etc/nats/nats-auth.conf", `, new: `command: [`, want: "authorization block"},
		{name: "replicas above one server", old: "      GRADELINE_REPLICAS: \"1\"\n    expose: [\"9090\"]", new: "      GRADELINE_REPLICAS: \"3\"\n    expose: [\"9090\"]", want: "GRADELINE_REPLICAS=3"},
		{name: "unknown target", old: "target: inference", new: "target: inferense", want: `build target "inferense"`},
		{name: "missing dockerfile", old: "      dockerfile: deploy/docker/Dockerfile\n      target: analytics", new: "      dockerfile: deploy/docker/Dockerfile.analytics\n      target: analytics", want: "Dockerfile.analytics"},
		{name: "unpinned image", old: "image: mongo:8.0.17@sha256:9814652e33f0cf8b9fddea8b46dfc9d8e19b130dcfdd7b510ca58bb0d40c8b71", new: "image: mongo:8.0", want: `image "mongo:8.0" is not pinned`},
		{name: "bind mount", old: "      - nats-data:/data", new: "      - ./data/nats:/data", want: "bind-mounts"},
		{name: "wrong library path", old: "ONNXRUNTIME_LIB: /usr/local/lib/onnxruntime/libonnxruntime.so.1", new: "ONNXRUNTIME_LIB: /opt/ort/libonnxruntime.so.1", want: "ONNXRUNTIME_LIB=/opt/ort"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			text := string(orig)
			if tt.old != "" {
				if !strings.Contains(text, tt.old) {
					t.Fatalf("docker-compose.yml no longer contains %q: update the test", tt.old)
				}
				text = strings.Replace(text, tt.old, tt.new, 1)
			}
			writeFile(t, filepath.Join(dir, "docker-compose.yml"), text)
			copyFile(t, filepath.Join(repoRoot, ".dockerignore"), filepath.Join(dir, ".dockerignore"))
			copyFile(t, filepath.Join(repoRoot, "deploy/docker/Dockerfile"), filepath.Join(dir, "deploy/docker/Dockerfile"))
			for _, m := range []string{"bus", "ingest", "annotator", "inference", "analytics"} {
				copyFile(t, filepath.Join(repoRoot, m, "go.mod"), filepath.Join(dir, m, "go.mod"))
			}
			copyFile(t, filepath.Join(repoRoot, "deploy/manifests/cmd/healthprobe/main.go"), filepath.Join(dir, "deploy/manifests/cmd/healthprobe/main.go"))
			env := map[string]string{}
			for k, v := range composeEnv {
				if k != tt.unset {
					env[k] = v
				}
			}
			p, err := LoadCompose(context.Background(), dir, env)
			if err == nil {
				err = CheckCompose(p)
			}
			if err == nil {
				t.Fatalf("accepted; want an error mentioning %q", tt.want)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(b))
}
