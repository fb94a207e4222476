package manifests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/gradeline/gradeline/bus"
)

const k8sDir = repoRoot + "/deploy/k8s"

// kustomizations returns the base and every overlay, relative to root.
func kustomizations(t *testing.T, root string) []string {
	t.Helper()
	dirs := []string{"base"}
	overlays, err := os.ReadDir(filepath.Join(root, "overlays"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range overlays {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join("overlays", e.Name()))
		}
	}
	if len(dirs) < 2 {
		t.Fatalf("no overlays under %s/overlays", root)
	}
	return dirs
}

func checkKustomization(root, dir string) ([]object, error) {
	objs, err := renderKustomization(filepath.Join(root, dir))
	if err != nil {
		return nil, err
	}
	return objs, checkKubernetes(objs, kubeOptions{PinnedImages: dir != "base"})
}

func TestKubernetes(t *testing.T) {
	for _, dir := range kustomizations(t, k8sDir) {
		t.Run(dir, func(t *testing.T) {
			objs, err := checkKustomization(k8sDir, dir)
			if err != nil {
				t.Fatal(err)
			}
			// What the checks above saw, so an empty render cannot pass.
			count := map[string]int{}
			for _, o := range objs {
				count[o.Kind]++
				if d, ok := o.Value.(*appsv1.StatefulSet); ok && d.Name == "nats" && *d.Spec.Replicas != 3 {
					t.Errorf("nats has %d replicas", *d.Spec.Replicas)
				}
				if cm, ok := o.Value.(*corev1.ConfigMap); ok && strings.HasPrefix(cm.Name, "gradeline-config") && cm.Data["GRADELINE_REPLICAS"] != "3" {
					t.Errorf("%s: GRADELINE_REPLICAS=%q", o, cm.Data["GRADELINE_REPLICAS"])
				}
			}
			want := map[string]int{"Deployment": 4, "StatefulSet": 1, "PodDisruptionBudget": 5, "Service": 6,
				"Ingress": 1, "HorizontalPodAutoscaler": 1, "ScaledObject": 2, "ConfigMap": 3, "Secret": 0,
				"NetworkPolicy": 4, "Certificate": 1, "Job": 1}
			for kind, n := range want {
				if count[kind] != n {
					t.Errorf("%d %s objects, want %d", count[kind], kind, n)
				}
			}
		})
	}
}

// TestKubernetesBadInput renders mutated copies of deploy/k8s: each must be
// refused, by the strict decoder or by checkKubernetes, naming the problem.
func TestKubernetesBadInput(t *testing.T) {
	tests := []struct {
		name, file, old, new string
		overlay              string // default overlays/production
		want                 string
	}{
		{name: "misspelt probe field", file: "base/ingest.yaml", old: "          readinessProbe:", new: "          readinesProbe:", want: `unknown field "spec.template.spec.containers[0].readinesProbe"`},
		{name: "misspelt field, wrong case", file: "base/analytics.yaml", old: "periodSeconds: 5", new: "periodseconds: 5", want: "unknown field"},
		{name: "field given twice", file: "base/ingest.yaml", old: "  minReplicas: 2\n", new: "  minReplicas: 2\n  minReplicas: 3\n", want: "minReplicas"},
		{name: "wrong value type", file: "base/nats.yaml", old: "  replicas: 3", new: "  replicas: three", want: "replicas"},
		{name: "misspelt KEDA field", file: "base/inference.yaml", old: "  minReplicaCount: 2", new: "  minReplicasCount: 2", want: `unknown field "spec.minReplicasCount"`},
		{name: "misspelt KEDA metadata", file: "base/annotator.yaml", old: "        lagThreshold:", new: "        lagTreshold:", want: `unknown metadata "lagTreshold"`},
		{name: "unknown kind", file: "base/ingest.yaml", old: "apiVersion: autoscaling/v2", new: "apiVersion: autoscaling/v3", want: `no Go type known for apiVersion "autoscaling/v3"`},
		{name: "nats of two", file: "base/nats.yaml", old: "  replicas: 3", new: "  replicas: 2", want: "replicas 2, want 3"},
		{name: "nats missing a route", file: "base/nats.yaml", old: "        nats://nats-2.nats-headless:6222\n", new: "", want: "no route nats://nats-2.nats-headless:6222"},
		{name: "streams at one replica", file: "base/config.env", old: "GRADELINE_REPLICAS=3", new: "GRADELINE_REPLICAS=1", want: `GRADELINE_REPLICAS="1", want 3`},
		{name: "nats pdb below quorum", file: "base/nats.yaml", old: "  minAvailable: 2", new: "  minAvailable: 1", want: "below the JetStream quorum"},
		{name: "no readiness probe", file: "base/inference.yaml", old: "          readinessProbe:\n            httpGet:\n              path: /readyz\n              port: admin\n            periodSeconds: 5\n            timeoutSeconds: 3\n            failureThreshold: 3\n", new: "", want: "container inference: no readinessProbe"},
		{name: "no memory limit", file: "base/ingest.yaml", old: "            limits:\n              memory: 512Mi\n", new: "", want: "no resources.limits.memory"},
		{name: "probe on a missing port", file: "base/analytics.yaml", old: "              path: /healthz\n              port: admin\n            periodSeconds: 10", new: "              path: /healthz\n              port: metrics\n            periodSeconds: 10", want: "probe port metrics"},
		{name: "root allowed", file: "base/annotator.yaml", old: "        runAsNonRoot: true", new: "        runAsNonRoot: false", want: "runAsNonRoot is not true"},
		{name: "secret in the manifests", file: "base/kustomization.yaml", old: "configMapGenerator:", new: "secretGenerator:\n  - name: gradeline-secrets\n    literals: [GRADELINE_JWT_SECRET=hunter2]\nconfigMapGenerator:", want: "secrets are never in the manifests"},
		{name: "secret as a literal", file: "base/ingest.yaml", old: "            - name: GRADELINE_JWT_SECRET\n              valueFrom:\n                secretKeyRef:\n                  name: gradeline-secrets\n                  key: GRADELINE_JWT_SECRET\n", new: "            - name: GRADELINE_JWT_SECRET\n              value: hunter2\n", want: "GRADELINE_JWT_SECRET must come from a Secret"},
		{name: "secret in the config map", file: "base/config.env", old: "GRADELINE_REPLICAS=", new: "MONGO_URI=mongodb://u:p@mongo/\nGRADELINE_REPLICAS=", want: "holds MONGO_URI"},
		{name: "anonymous nats", file: "base/annotator.yaml", old: "value: tls://annotator:$(NATS_PASSWORD)@nats:4222", new: "value: tls://nats:4222", want: "no anonymous NATS"},
		{name: "another service's nats user", file: "base/ingest.yaml", old: "value: tls://ingest:$(NATS_PASSWORD)@nats:4222", new: "value: tls://admin:$(NATS_PASSWORD)@nats:4222", want: `want its own user "ingest"`},
		{name: "nats without tls", file: "base/inference.yaml", old: "value: tls://inference:", new: "value: nats://inference:", want: "want tls"},
		{name: "nats password as a literal", file: "base/analytics.yaml", old: "tls://analytics:$(NATS_PASSWORD)@", new: "tls://analytics:hunter2@", want: "not a $(VAR) reference"},
		{name: "nats without users", file: "base/nats.yaml", old: "    include ../nats-auth/nats-auth.conf\n", new: "", want: "no authorization block"},
		{name: "nats password not from a secret", file: "base/nats.yaml", old: "            - name: NATS_SUBSCRIBER_PASSWORD\n              valueFrom:\n                secretKeyRef:\n                  name: gradeline-nats\n                  key: subscriber\n", new: "", want: "reads $NATS_SUBSCRIBER_PASSWORD"},
		{name: "nats open to every pod", file: "base/networkpolicy.yaml", old: "            matchExpressions:\n              - key: app.kubernetes.io/name\n                operator: In\n                values: [ingest, annotator, inference, analytics, gradeline-setup]\n", new: "            matchLabels: {}\n", want: "beyond the services"},
		{name: "setup job kept from nats", file: "base/networkpolicy.yaml", old: "values: [ingest, annotator, inference, analytics, gradeline-setup]", new: "values: [ingest, annotator, inference, analytics]", want: "no NetworkPolicy admits the Job gradeline-setup"},
		{name: "no setup job", file: "base/kustomization.yaml", old: "  - setup.yaml\n", new: "", want: `no Job "gradeline-setup"`},
		{name: "setup job never removed", file: "base/setup.yaml", old: "  ttlSecondsAfterFinished: 600\n", new: "", want: "no ttlSecondsAfterFinished"},
		{name: "setup job without retries", file: "base/setup.yaml", old: "  backoffLimit: 10\n", new: "  backoffLimit: 0\n", want: "backoffLimit 0"},
		{name: "setup as a service user", file: "base/setup.yaml", old: "value: tls://admin:", new: "value: tls://ingest:", want: `want its own user "admin"`},
		{name: "setup runs something else", file: "base/setup.yaml", old: `args: ["setup"]`, new: `args: ["streams"]`, want: `want the image's entrypoint with args ["setup"]`},
		{name: "setup from a service image", file: "base/setup.yaml", old: "image: gradeline/gradeline", new: "image: gradeline/ingest", want: `want the image of the Dockerfile target "gradeline"`},
		{name: "setup as root", file: "base/setup.yaml", old: "runAsNonRoot: true", new: "runAsNonRoot: false", want: "Job gradeline/gradeline-setup: pod securityContext.runAsNonRoot is not true"},
		{name: "setup unpinned", file: "overlays/production/kustomization.yaml", old: "    newName: ghcr.io/gradeline/gradeline\n    newTag: \"0.1.0\"", new: "    newName: ghcr.io/gradeline/gradeline\n    newTag: latest", want: `container gradeline: image "ghcr.io/gradeline/gradeline:latest" has no release tag or digest`},
		{name: "setup job kept from its CA", file: "base/setup.yaml", old: "            items:\n              - key: ca.crt\n                path: ca.crt\n", new: "", want: "more of nats-tls than ca.crt"},
		{name: "mongodb open to analytics", file: "base/networkpolicy.yaml", old: "        values: [ingest, annotator]", new: "        values: [ingest, annotator, analytics]", want: "opens port 27017 to analytics"},
		{name: "private key in a service", file: "base/ingest.yaml", old: "            items:\n              - key: ca.crt\n                path: ca.crt\n", new: "", want: "more of nats-tls than ca.crt"},
		{name: "required env missing", file: "base/analytics.yaml", old: "            - name: CLICKHOUSE_DSN\n", new: "            - name: CLICKHOUSE_URL\n", want: "required environment CLICKHOUSE_DSN is not set"},
		{name: "wrong consumer", file: "base/inference.yaml", old: "consumer: inference", new: "consumer: inferense",
			want: "no ScaledObject scales inference on the lag of " + bus.ConsumerInference.Stream + "/" + bus.ConsumerInference.Durable},
		{name: "keda endpoint in another namespace", overlay: "overlays/staging", file: "overlays/staging/kustomization.yaml", old: "value: nats-headless.gradeline-staging.svc.cluster.local:8222", new: "value: nats-headless.gradeline.svc.cluster.local:8222", want: "want nats-headless.gradeline-staging.svc.cluster.local:8222"},
		{name: "keda endpoint not headless", file: "base/annotator.yaml", old: "natsServerMonitoringEndpoint: nats-headless.", new: "natsServerMonitoringEndpoint: nats.", want: "is not the headless Service"},
		{name: "replicas fight the autoscaler", file: "base/ingest.yaml", old: "  revisionHistoryLimit: 5", new: "  replicas: 2\n  revisionHistoryLimit: 5", want: "sets replicas while"},
		{name: "ingress to a missing port", file: "base/ingress.yaml", old: "                  name: http", new: "                  name: https", want: "is not a port of Service ingest"},
		{name: "ingress to a worker", file: "base/ingress.yaml", old: "                name: ingest", new: "                name: annotator\n", want: `exposes Service "annotator"`},
		{name: "service selects nothing", file: "base/inference.yaml", old: "spec:\n  selector:\n    app.kubernetes.io/name: inference", new: "spec:\n  selector:\n    app.kubernetes.io/name: inferense", want: "selects no pods"},
		{name: "no pdb", file: "base/analytics.yaml", old: "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: analytics", new: "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: analytic", want: "analytics: no PodDisruptionBudget selects its pods"},
		{name: "unpinned image", file: "overlays/production/kustomization.yaml", old: "    newTag: \"0.1.0\"\n  - name: gradeline/annotator", new: "    newTag: latest\n  - name: gradeline/annotator", want: "has no release tag or digest"},
		{name: "fallback without AverageValue", file: "base/inference.yaml", old: "      metricType: AverageValue\n", new: "", want: "fallback needs metricType AverageValue"},
		{name: "writable root", file: "base/nats.yaml", old: "readOnlyRootFilesystem: true", new: "readOnlyRootFilesystem: false", want: "readOnlyRootFilesystem is not true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if err := os.CopyFS(root, os.DirFS(k8sDir)); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(root, tt.file)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), tt.old) {
				t.Fatalf("%s no longer contains %q: update the test", tt.file, tt.old)
			}
			writeFile(t, path, strings.Replace(string(b), tt.old, tt.new, 1))
			overlay := tt.overlay
			if overlay == "" {
				overlay = "overlays/production"
			}
			_, err = checkKustomization(root, overlay)
			if err == nil {
				t.Fatalf("accepted; want an error mentioning %q", tt.want)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error does not mention %q:\n%v", tt.want, err)
			}
		})
	}
}
