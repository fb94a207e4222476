package bus

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// TestAccessTableCoversTheContract keeps the permission table in step with
// the rest of bus: every durable consumer belongs to a service, every
// query subject is answered by exactly one service, every stream named exists.
func TestAccessTableCoversTheContract(t *testing.T) {
	for _, c := range Consumers {
		if _, ok := accessOf(c.Owner()); !ok {
			t.Errorf("consumer %s belongs to no service (name it <service> or <service>-...)", c.Durable)
		}
	}
	for _, subj := range svcConstants(t) {
		var by []string
		for _, a := range Access {
			for _, pat := range a.Answers {
				if server.SubjectMatchesFilter(subj, pat) {
					by = append(by, a.User)
				}
			}
		}
		if len(by) != 1 {
			t.Errorf("query subject %s is answered by %v, want exactly one service", subj, by)
		}
	}
	for _, p := range Permissions() {
		if len(p.Publish.Allow) == 0 || len(p.Subscribe.Allow) == 0 {
			// An empty allow list means "everything" to the server.
			t.Errorf("%s: empty allow list", p.User)
		}
	}
}

// svcConstants returns the value of every Svc* constant of the package, so
// a new query subject cannot be added without an answering service.
func svcConstants(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		file, err := parser.ParseFile(fset, f, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			for i, name := range vs.Names {
				if strings.HasPrefix(name.Name, "Svc") && i < len(vs.Values) {
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						v, _ := strconv.Unquote(lit.Value)
						out = append(out, v)
					}
				}
			}
			return true
		})
	}
	if len(out) == 0 {
		t.Fatal("no Svc* constants found")
	}
	return out
}
