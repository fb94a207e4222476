package manifests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServicesReadTheirEnvironment keeps the deployment files and the
// programs in step: every variable the manifests set for a service must be
// read by that service (its main package, the service package that owns
// its ConfigFromEnv, or the bus helpers and process kit it calls),
// else a deployment would configure nothing, e.g. streams left at one
// replica or an admin port the probes cannot reach.
func TestServicesReadTheirEnvironment(t *testing.T) {
	shared := goSources(t, filepath.Join(repoRoot, "bus")) + goSources(t, filepath.Join(repoRoot, "bus", "admin"))
	for _, svc := range services {
		t.Run(svc.Name, func(t *testing.T) {
			main := filepath.Join(repoRoot, svc.Package)
			src := goSources(t, main) + goSources(t, filepath.Dir(filepath.Dir(main))) + shared
			for _, name := range svc.Env {
				if !strings.Contains(src, `"`+name+`"`) {
					t.Errorf("%s does not read %s, which docker-compose.yml and deploy/k8s set for it", svc.Package, name)
				}
			}
		})
	}
	t.Run(setupJob.Target, func(t *testing.T) {
		src := goSources(t, filepath.Join(repoRoot, setupJob.Package)) + shared
		for _, name := range setupJob.Env {
			if !strings.Contains(src, `"`+name+`"`) {
				t.Errorf("%s does not read %s, which docker-compose.yml and deploy/k8s set for it", setupJob.Package, name)
			}
		}
	})
}

// goSources concatenates the non-test Go files of one directory.
func goSources(t *testing.T, dir string) string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files in %s", dir)
	}
	var b strings.Builder
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(text)
	}
	return b.String()
}
