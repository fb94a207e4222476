package local_test

import (
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/analytics"
	"github.com/gradeline/gradeline/annotator"
	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/deploy/local"
	"github.com/gradeline/gradeline/inference"
	"github.com/gradeline/gradeline/ingest"
)

var update = flag.Bool("update", false, "rewrite the README's configuration table")

const (
	repoRoot   = "../.."
	tableStart = "<!-- configuration table: generated from the EnvVars of every binary; `go test ./deploy/local -run TestREADMEConfigurationTable -update` rewrites it -->\n"
	tableEnd   = "<!-- end of the configuration table -->"
)

// toolVars are read by tools and tests only, not by a service binary.
var toolVars = []admin.Var{
	{Name: "GRADELINE_DATASETS_DIR", Default: "`.cache/datasets` (`make`)", Meaning: "the datasets Debian ships (`make install`), for `gradeline-train` and the tests that reproduce the models' accuracy"},
}

// readmeVars is every binary's table, local mode's first (its defaults are
// the README's), each variable once.
func readmeVars() []admin.Var {
	var out []admin.Var
	for _, vars := range [][]admin.Var{local.EnvVars, ingest.EnvVars, annotator.EnvVars, inference.EnvVars, analytics.EnvVars, toolVars} {
		for _, v := range vars {
			if !slices.ContainsFunc(out, func(o admin.Var) bool { return o.Name == v.Name }) {
				out = append(out, v)
			}
		}
	}
	return out
}

// The README's configuration table is the binaries' tables.
func TestREADMEConfigurationTable(t *testing.T) {
	path := filepath.Join(repoRoot, "README.md")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	start, end := strings.Index(readme, tableStart), strings.Index(readme, tableEnd)
	if start < 0 || end < start {
		t.Fatalf("README.md: the configuration table's markers are missing:\n%s...\n%s", tableStart, tableEnd)
	}
	want := admin.Markdown(readmeVars())
	got := readme[start+len(tableStart) : end]
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(readme[:start+len(tableStart)]+want+readme[end:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's configuration table is not the binaries' (run go test ./deploy/local -run TestREADMEConfigurationTable -update):\n%s\nwant:\n%s", got, want)
}

var envName = regexp.MustCompile(`"((?:GRADELINE|NATS|MONGO|CLICKHOUSE|ONNXRUNTIME)_[A-Z0-9_]+)"`)

// Every variable the code names (os.Getenv, LookupEnv, a getenv of
// ConfigFromEnv, a constant) is declared, hence in the README.
func TestEveryVariableReadIsDeclared(t *testing.T) {
	declared := map[string]bool{}
	for _, v := range readmeVars() {
		declared[v.Name] = true
	}
	found := map[string][]string{}
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != repoRoot && (strings.HasPrefix(name, ".") || name == "data" || name == "node_modules" || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range envName.FindAllStringSubmatch(string(src), -1) {
			found[m[1]] = append(found[m[1]], path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) < 10 {
		t.Fatalf("only %d variables found under %s: is the walk broken?", len(found), repoRoot)
	}
	for name, paths := range found {
		if !declared[name] {
			t.Errorf("%s is read (%s) but declared in no binary's EnvVars, so the README misses it", name, strings.Join(slices.Compact(paths), ", "))
		}
	}
}
