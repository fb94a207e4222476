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
// of every service and fails when one of them pulls in an embedded server.
func TestServiceBinariesLinkNoServer(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	for _, svc := range Services {
		t.Run(svc.Name, func(t *testing.T) {
			cmd := exec.Command("go", "list", "-deps", svc.Package)
			cmd.Dir = repoRoot
			out, err := cmd.Output()
			if err != nil {
				msg := ""
				if ee, ok := err.(*exec.ExitError); ok {
					msg = string(ee.Stderr)
				}
				t.Fatalf("go list -deps %s: %v\n%s", svc.Package, err, msg)
			}
			for _, pkg := range strings.Fields(string(out)) {
				for _, m := range serverModules {
					if strings.HasPrefix(pkg, m) {
						t.Errorf("%s links %s: import the embedded server only from the local stack or tests", svc.Package, pkg)
						break
					}
				}
			}
		})
	}
}
