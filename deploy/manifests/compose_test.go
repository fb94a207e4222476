package manifests

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../.."

// composeEnv holds dummy values for the variables docker-compose.yml
// requires (${VAR:?...}).
var composeEnv = map[string]string{
	"GRADELINE_JWT_SECRET":  "test-jwt-secret-0123456789abcdef0123456789",
	"GRADELINE_SIGNUP_CODE": "test-signup-code",
	"CLICKHOUSE_PASSWORD":   "test-clickhouse-password",
}

func init() {
	// One NATS password per user of the bus contract (NATS_<USER>_PASSWORD).
	for _, u := range bus.Users() {
		composeEnv[bus.PasswordEnv(u)] = "test-nats-" + u
	}
}

func TestCompose(t *testing.T) {
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	p, err := loadCompose(context.Background(), root, composeEnv)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkCompose(p); err != nil {
		t.Fatal(err)
	}
	// Spot checks of what the loader resolved, so a check that silently
	// passes on an empty project cannot hide.
	if got := len(p.Services); got != 8 {
		t.Errorf("%d services, want 8 (nats, mongo, clickhouse, setup and the four of gradeline)", got)
	}
	for _, name := range serviceNames() {
		if d := p.Services[name].DependsOn[setupJob.Compose]; d.Condition != "service_completed_successfully" {
			t.Errorf("%s waits for %s with condition %q", name, setupJob.Compose, d.Condition)
		}
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
// be refused, by the loader or by checkCompose, naming the problem.
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
		{name: "required env missing", old: "      GRADELINE_ADMIN_ADDR: \":9090\"\n      GRADELINE_REPLICAS: \"1\"\n    expose: [\"9090\"]\n    healthcheck:\n      test: [\"CMD\", \"/usr/local/bin/healthprobe\", \"http://127.0.0.1:9090/readyz\"]\n      interval: 10s\n      timeout: 3s\n      retries: 5\n      start_period: 15s\n    depends_on:\n      nats: {condition: service_healthy}\n      setup: {condition: service_completed_successfully}\n      mongo",
			new:  "      GRADELINE_REPLICAS: \"1\"\n    expose: [\"9090\"]\n    healthcheck:\n      test: [\"CMD\", \"/usr/local/bin/healthprobe\", \"http://127.0.0.1:9090/readyz\"]\n      interval: 10s\n      timeout: 3s\n      retries: 5\n      start_period: 15s\n    depends_on:\n      nats: {condition: service_healthy}\n      setup: {condition: service_completed_successfully}\n      mongo",
			want: `"annotator": required environment GRADELINE_ADMIN_ADDR`},
		{name: "url to a missing host", old: "@nats:4222", new: "@natz:4222", want: `points at host "natz"`},
		{name: "anonymous nats", old: "NATS_URL: nats://annotator:${NATS_ANNOTATOR_PASSWORD:?set NATS_ANNOTATOR_PASSWORD (see deploy/docker/compose.env.example)}@nats:4222", new: "NATS_URL: nats://nats:4222", want: "no anonymous NATS"},
		{name: "nats without users", old: `command: ["--config", "/etc/nats/nats-auth.conf", `, new: `command: [`, want: "authorization block"},
		{name: "replicas above one server", old: "      GRADELINE_REPLICAS: \"1\"\n    expose: [\"9090\"]", new: "      GRADELINE_REPLICAS: \"3\"\n    expose: [\"9090\"]", want: "GRADELINE_REPLICAS=3"},
		{name: "unknown target", old: "target: inference", new: "target: inferense", want: `build target "inferense"`},
		{name: "missing dockerfile", old: "      dockerfile: deploy/docker/Dockerfile\n      target: analytics", new: "      dockerfile: deploy/docker/Dockerfile.analytics\n      target: analytics", want: "Dockerfile.analytics"},
		{name: "unpinned image", old: "image: mongo:8.0.17@sha256:9814652e33f0cf8b9fddea8b46dfc9d8e19b130dcfdd7b510ca58bb0d40c8b71", new: "image: mongo:8.0", want: `image "mongo:8.0" is not pinned`},
		{name: "bind mount", old: "      - nats-data:/data", new: "      - ./data/nats:/data", want: "bind-mounts"},
		{name: "service before its streams", old: "      nats: {condition: service_healthy}\n      setup: {condition: service_completed_successfully}\n      clickhouse", new: "      nats: {condition: service_healthy}\n      clickhouse", want: `service "analytics" does not wait for setup`},
		{name: "setup only started", old: "      setup: {condition: service_completed_successfully}\n      clickhouse", new: "      setup: {condition: service_started}\n      clickhouse", want: `depends on "setup" with condition "service_started", want service_completed_successfully`},
		{name: "setup restarted", old: "    restart: \"no\"\n", new: "", want: `restart "unless-stopped"`},
		{name: "setup as a service user", old: "NATS_URL: nats://admin:", new: "NATS_URL: nats://annotator:", want: `want the operator "admin"`},
		{name: "setup without its command", old: "    command: [\"setup\"]\n", new: "", want: `command [], want ["setup"]`},
		{name: "setup from a service image", old: "      target: gradeline\n", new: "      target: ingest\n", want: `build target "ingest", want the Dockerfile target "gradeline"`},
		{name: "wrong library path", old: "ONNXRUNTIME_LIB: /usr/local/lib/onnxruntime/libonnxruntime.so.1", new: "ONNXRUNTIME_LIB: /opt/ort/libonnxruntime.so.1", want: "ONNXRUNTIME_LIB=/opt/ort"},
	}
	// The copy the cases mutate is accepted as it is, so each case's
	// error is the one its mutation caused.
	check := func(t *testing.T, text, unset string) error {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "docker-compose.yml"), text)
		for _, f := range []string{".dockerignore", "deploy/docker/Dockerfile", "deploy/k8s/base/nats-auth.conf",
			"deploy/manifests/cmd/healthprobe/main.go", "deploy/go.mod", "deploy/go.sum", "deploy/cmd/gradeline/main.go",
			"deploy/internal/mongouri/mongouri.go", "deploy/internal/natscreds/natscreds.go",
			"bus/go.mod", "ingest/go.mod", "annotator/go.mod", "inference/go.mod", "analytics/go.mod"} {
			copyFile(t, filepath.Join(repoRoot, f), filepath.Join(dir, f))
		}
		env := map[string]string{}
		for k, v := range composeEnv {
			if k != unset {
				env[k] = v
			}
		}
		p, err := loadCompose(context.Background(), dir, env)
		if err == nil {
			err = checkCompose(p)
		}
		return err
	}
	if err := check(t, string(orig), ""); err != nil {
		t.Fatalf("the unchanged copy is refused: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := string(orig)
			if tt.old != "" {
				if !strings.Contains(text, tt.old) {
					t.Fatalf("docker-compose.yml no longer contains %q: update the test", tt.old)
				}
				text = strings.Replace(text, tt.old, tt.new, 1)
			}
			err := check(t, text, tt.unset)
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
