package bus

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestExportedIdentifiersAreDocumented keeps the contract readable with go
// doc alone: every package of bus has a package doc, and every exported
// type, function, method, constant and variable a doc comment. A constant
// or variable in a commented group counts as documented, as go doc shows
// the group's comment with it. (Struct fields are documented where their
// name and JSON tag do not say enough; that is not checked.)
func TestExportedIdentifiersAreDocumented(t *testing.T) {
	dirs := []string{"."}
	subs, err := filepath.Glob("*/")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range subs {
		if m, _ := filepath.Glob(filepath.Join(d, "*.go")); len(m) > 0 {
			dirs = append(dirs, filepath.Clean(d))
		}
	}
	var missing []string
	for _, dir := range dirs {
		missing = append(missing, undocumented(t, dir)...)
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("%s has no doc comment", m)
	}
}

func undocumented(t *testing.T, dir string) []string {
	t.Helper()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, dir, func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	miss := func(pos token.Pos, what string) {
		p := fset.Position(pos)
		out = append(out, filepath.Join(dir, filepath.Base(p.Filename))+": "+what)
	}
	for _, pkg := range pkgs {
		hasPkgDoc := false
		for _, f := range pkg.Files {
			if f.Doc != nil {
				hasPkgDoc = true
			}
			for _, d := range f.Decls {
				switch d := d.(type) {
				case *ast.FuncDecl:
					if !d.Name.IsExported() || d.Doc != nil {
						continue
					}
					if d.Recv != nil {
						recv := receiverName(d.Recv.List[0].Type)
						if !ast.IsExported(recv) {
							continue
						}
						miss(d.Pos(), recv+"."+d.Name.Name)
						continue
					}
					miss(d.Pos(), d.Name.Name)
				case *ast.GenDecl:
					for _, s := range d.Specs {
						switch s := s.(type) {
						case *ast.TypeSpec:
							if !s.Name.IsExported() {
								continue
							}
							if s.Doc == nil && d.Doc == nil {
								miss(s.Pos(), s.Name.Name)
							}
						case *ast.ValueSpec:
							if s.Doc != nil || s.Comment != nil || d.Doc != nil {
								continue
							}
							for _, n := range s.Names {
								if n.IsExported() {
									miss(n.Pos(), n.Name)
								}
							}
						}
					}
				}
			}
		}
		if !hasPkgDoc {
			out = append(out, dir+": package "+pkg.Name+" has no package doc")
		}
	}
	return out
}

// receiverName is the type name of a method's receiver (T, *T, T[P]).
func receiverName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.StarExpr:
		return receiverName(e.X)
	case *ast.IndexExpr:
		return receiverName(e.X)
	case *ast.IndexListExpr:
		return receiverName(e.X)
	case *ast.Ident:
		return e.Name
	}
	return ""
}
