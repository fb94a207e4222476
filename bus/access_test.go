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

// TestSubjectsOnTheWire pins the subjects and stream wildcards as earlier
// versions published and captured them (they are derived from the roots
// now), and checks that every event subject is captured by exactly one
// stream and every consumer filter lies within its stream.
func TestSubjectsOnTheWire(t *testing.T) {
	want := map[string][]string{
		StreamAnnotations: {"gradeline.annotations.>"},
		StreamImages:      {"gradeline.images.>"},
		StreamGrades:      {"gradeline.grades.>"},
		StreamCatalog:     {"gradeline.catalog.>"},
		StreamIris:        {"gradeline.iris.>"},
		StreamDeadLetter:  {"gradeline.deadletter.>"},
		StreamCallbacks:   {"gradeline.callbacks.>"},
		StreamRegrades:    {"gradeline.regrades.>"},
	}
	for _, s := range Streams {
		if strings.Join(s.Subjects, " ") != strings.Join(want[s.Name], " ") {
			t.Errorf("stream %s captures %v, want %v", s.Name, s.Subjects, want[s.Name])
		}
	}
	for subj, v := range map[string]string{
		SubjectAnnotationCreated: "gradeline.annotations.created",
		SubjectImageSharesSet:    "gradeline.catalog.images.shares_set",
		SubjectImageSubmitted:    "gradeline.images.submitted",
		SubjectGradeFailed:       "gradeline.grades.failed",
		SubjectIrisMeasured:      "gradeline.iris.measurements",
	} {
		if subj != v {
			t.Errorf("subject %q, want %q", subj, v)
		}
	}
	for _, typ := range EventTypes() {
		subj, err := SubjectOf(typ)
		if err != nil {
			t.Fatal(err)
		}
		var by []string
		for _, s := range Streams {
			for _, w := range s.Subjects {
				if server.SubjectMatchesFilter(subj, w) {
					by = append(by, s.Name)
				}
			}
		}
		if len(by) != 1 {
			t.Errorf("event %s (%s) is captured by %v, want one stream", typ, subj, by)
		}
	}
	for _, c := range Consumers {
		for _, f := range c.FilterSubjects {
			if !server.SubjectMatchesFilter(f, streamSubjects(c.Stream)[0]) {
				t.Errorf("consumer %s filters %s, outside its stream %s", c.Durable, f, c.Stream)
			}
		}
	}
}
