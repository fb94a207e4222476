package manifests

import (
	"os/exec"
	"strings"
	"testing"
)

// serverModules must never be linked into a service binary: production
// connects to a real NATS cluster and a real MongoDB, and a downstream
// program that imports bus must not build a server either. The embedded
// servers belong to the local stack and the tests (bus/natsserver,
// annotator/localmongo).
var serverModules = []string{"github.com/nats-io/nats-server", "github.com/FerretDB"}

// TestServiceBinariesLinkNoServer runs go list -deps for the main package
// of every service and of the operator CLI (an image too), and for the
// contract a downstream program imports (bus and the process kit
// bus/admin), and fails when one of them pulls in an embedded server.
func TestServiceBinariesLinkNoServer(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	pkgs := []string{"./bus", "./bus/admin"}
	for _, svc := range services {
		pkgs = append(pkgs, svc.Package)
	}
	pkgs = append(pkgs, setupJob.Package)
	for _, pkg := range pkgs {
		t.Run(pkg, func(t *testing.T) {
			cmd := exec.Command("go", "list", "-deps", pkg)
			cmd.Dir = repoRoot
			out, err := cmd.Output()
			if err != nil {
				msg := ""
				if ee, ok := err.(*exec.ExitError); ok {
					msg = string(ee.Stderr)
				}
				t.Fatalf("go list -deps %s: %v\n%s", pkg, err, msg)
			}
			for _, dep := range strings.Fields(string(out)) {
				for _, m := range serverModules {
					if strings.HasPrefix(dep, m) {
						t.Errorf("%s links %s: import the embedded server only from the local stack or tests", pkg, dep)
						break
					}
				}
			}
		})
	}
}
