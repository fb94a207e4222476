package manifests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDockerfile(t *testing.T) {
	d, err := parseDockerfileFile(filepath.Join(repoRoot, "deploy/docker/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkDockerfile(d); err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs(repoRoot)
	if err := checkBuildContext(d, root); err != nil {
		t.Fatal(err)
	}
	// The parse is what the checks rely on: make sure it saw the file.
	for _, svc := range append(services, service{Name: setupJob.Target}) {
		st := d.Stage(svc.Name)
		if st == nil || st.EffectiveUser() != "65532:65532" {
			t.Errorf("target %q: user %q, want 65532:65532", svc.Name, st.EffectiveUser())
		}
	}
	if got := d.Stage("inference").Base; !strings.HasPrefix(got, "debian:bookworm-") {
		t.Errorf("inference base %q, want Debian slim (cgo, glibc)", got)
	}
	if got := d.Stage("ingest").Base; !strings.HasPrefix(got, "gcr.io/distroless/static-debian12:nonroot@") {
		t.Errorf("ingest base %q, want distroless static", got)
	}
}

func TestDockerfileBadInput(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join(repoRoot, "deploy/docker/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, old, new, want string
	}{
		{"base by tag only", "static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab", "static-debian12:nonroot", "is neither an earlier stage nor an image pinned"},
		{"base by floating name", "FROM ${CGO_RUNTIME_IMAGE} AS inference", "FROM debian AS inference", `FROM debian (= "debian")`},
		{"root user", "USER 65532:65532\nEXPOSE 8080", "USER root\nEXPOSE 8080", `target "ingest" runs as root`},
		{"uid 0", "USER 65532:65532\nEXPOSE 8080", "USER 0\nEXPOSE 8080", `target "ingest" runs as root`},
		{"named user", "USER 65532:65532\nEXPOSE 8080", "USER nonroot\nEXPOSE 8080", "is not numeric"},
		{"no user", "USER 65532:65532\nEXPOSE 8080", "EXPOSE 8080", `target "ingest" sets no USER`},
		{"missing target", "AS analytics\n", "AS analytic\n", `no target "analytics"`},
		{"misspelt instruction", "EXPOSE 8080", "EXPOS 8080", "unknown instruction at line"},
		{"no checksum", `echo "${ORT_SHA256}  libonnxruntime.so.1" | sha256sum -c -; \`, `\`, "verify sha256"},
		{"other onnxruntime", "ARG ORT_VERSION=1.24.1", "ARG ORT_VERSION=1.22.0", "onnxruntime-node@1.24.1"},
		{"static inference", "cd inference && CGO_ENABLED=1", "cd inference && CGO_ENABLED=0", "without CGO_ENABLED=1"},
		{"no build tag", "GOFLAGS=-tags=ferretdb_no_postgresql", "GOFLAGS=-trimpath", "without -tags=ferretdb_no_postgresql"},
		{"wrong entrypoint", `ENTRYPOINT ["/usr/local/bin/analytics"]`, `ENTRYPOINT ["/analytics"]`, "ENTRYPOINT is"},
		{"no health probe", "COPY --from=source /out/healthprobe /usr/local/bin/healthprobe\nCOPY --from=build-annotator", "COPY --from=build-annotator", `target "annotator" does not copy the health probe`},
		{"copy from a missing stage", "COPY --from=build-ingest", "COPY --from=build-ingst", "names no stage"},
		{"final image on a build stage", "FROM ${STATIC_IMAGE} AS ingest", "FROM source AS ingest", "builds on stage"},
		{"copy of a missing file", "COPY deploy/manifests/cmd/healthprobe/main.go", "COPY deploy/manifests/cmd/probe/main.go", "no such file in the build context"},
		{"cli without its default command", "CMD [\"setup\"]\n", "", `target "gradeline": CMD is [], want ["setup"]`},
		{"cli with cgo", "cd deploy && CGO_ENABLED=0", "cd deploy && CGO_ENABLED=1", "builds ./deploy/cmd/gradeline without CGO_ENABLED=0"},
		{"cli as root", "USER 65532:65532\nENTRYPOINT [\"/usr/local/bin/gradeline\"]", "ENTRYPOINT [\"/usr/local/bin/gradeline\"]", `target "gradeline" sets no USER`},
		{"cli built outside its module", "cd deploy && CGO_ENABLED=0 go build", "CGO_ENABLED=0 go build", "no `cd deploy && go build ... ./cmd/gradeline`"},
		{"copy of an ignored file", "COPY bus/ bus/", "COPY bus/ bus/\nCOPY Makefile /src/Makefile", "excluded by .dockerignore"},
	}
	root, _ := filepath.Abs(repoRoot)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := string(orig)
			if !strings.Contains(text, tt.old) {
				t.Fatalf("the Dockerfile no longer contains %q: update the test", tt.old)
			}
			text = strings.Replace(text, tt.old, tt.new, 1)
			d, err := parseDockerfile(strings.NewReader(text))
			if err == nil {
				err = checkDockerfile(d)
			}
			if err == nil {
				err = checkBuildContext(d, root)
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
