package manifests

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// dockerfile is the part of a parsed Dockerfile the checks look at.
type dockerfile struct {
	// Args are the global ARGs (before the first FROM) with their defaults.
	Args   map[string]string
	Stages []*stage
	// Unknown lists instructions the parser does not know (it ignores
	// them; docker build would fail), as "line N: WORD".
	Unknown []string
}

// stage is one FROM ... AS name block.
type stage struct {
	Name string
	// From is the base as written; Base is it with global ARGs expanded.
	From, Base string
	// Parent is the stage this one builds on, or nil for an image.
	Parent *stage
	Line   int
	// User is the last USER of this stage ("" when none).
	User string
	// Args are the ARGs declared in the stage, with their defaults.
	Args map[string]string
	Env  map[string]string
	// Copies are the COPY/ADD instructions, in order.
	Copies      []dockerCopy
	Runs        []string
	Healthcheck []string
	Entrypoint  []string
	Cmd         []string
}

// dockerCopy is one COPY or ADD.
type dockerCopy struct {
	From    string // --from stage, "" for the build context
	Sources []string
	Dest    string
	Line    int
}

// EffectiveUser is the USER in force at the end of the stage, following the
// stages it builds on ("" when none sets one, i.e. the image's default).
func (s *stage) EffectiveUser() string {
	for st := s; st != nil; st = st.Parent {
		if st.User != "" {
			return st.User
		}
	}
	return ""
}

// LookupEnv returns an ENV of the stage or the stages it builds on.
func (s *stage) LookupEnv(key string) (string, bool) {
	for st := s; st != nil; st = st.Parent {
		if v, ok := st.Env[key]; ok {
			return v, true
		}
	}
	return "", false
}

// Stage returns the stage named name, or nil.
func (d *dockerfile) Stage(name string) *stage {
	for _, s := range d.Stages {
		if s.Name == name {
			return s
		}
	}
	return nil
}

var knownInstructions = []string{"add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from",
	"healthcheck", "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir"}

// parseDockerfile reads a Dockerfile with BuildKit's own parser.
func parseDockerfile(r io.Reader) (*dockerfile, error) {
	res, err := parser.Parse(r)
	if err != nil {
		return nil, fmt.Errorf("dockerfile: %w", err)
	}
	d := &dockerfile{Args: map[string]string{}}
	var cur *stage
	for _, n := range res.AST.Children {
		cmd := strings.ToLower(n.Value)
		args := nodeArgs(n)
		if !slices.Contains(knownInstructions, cmd) {
			d.Unknown = append(d.Unknown, fmt.Sprintf("line %d: %s", n.StartLine, n.Value))
			continue
		}
		if cmd == "from" {
			if len(args) != 1 && !(len(args) == 3 && strings.EqualFold(args[1], "AS")) {
				return nil, fmt.Errorf("dockerfile: line %d: FROM wants IMAGE [AS NAME], got %q", n.StartLine, args)
			}
			cur = &stage{From: args[0], Base: expandArgs(args[0], d.Args), Line: n.StartLine, Args: map[string]string{}, Env: map[string]string{}}
			if len(args) == 3 {
				cur.Name = args[2]
			}
			cur.Parent = d.Stage(cur.Base)
			d.Stages = append(d.Stages, cur)
			continue
		}
		if cur == nil {
			if cmd != "arg" {
				return nil, fmt.Errorf("dockerfile: line %d: %s before the first FROM", n.StartLine, n.Value)
			}
			for _, a := range args {
				k, v, _ := strings.Cut(a, "=")
				d.Args[k] = v
			}
			continue
		}
		switch cmd {
		case "arg":
			for _, a := range args {
				k, v, _ := strings.Cut(a, "=")
				cur.Args[k] = v
			}
		case "user":
			if len(args) > 0 {
				cur.User = args[0]
			}
		case "env":
			// The parser gives key, value, "=" triples.
			for i := 0; i+1 < len(args); i += 3 {
				cur.Env[args[i]] = args[i+1]
			}
		case "copy", "add":
			if len(args) < 2 {
				return nil, fmt.Errorf("dockerfile: line %d: %s wants a source and a destination", n.StartLine, n.Value)
			}
			c := dockerCopy{Sources: args[:len(args)-1], Dest: args[len(args)-1], Line: n.StartLine}
			for _, f := range n.Flags {
				if v, ok := strings.CutPrefix(f, "--from="); ok {
					c.From = v
				}
			}
			cur.Copies = append(cur.Copies, c)
		case "run":
			cur.Runs = append(cur.Runs, strings.Join(args, " "))
		case "healthcheck":
			cur.Healthcheck = args
		case "entrypoint":
			cur.Entrypoint = args
		case "cmd":
			cur.Cmd = args
		}
	}
	if len(d.Stages) == 0 {
		return nil, errors.New("dockerfile: no FROM")
	}
	return d, nil
}

// parseDockerfileFile parses the Dockerfile at path.
func parseDockerfileFile(path string) (*dockerfile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d, err := parseDockerfile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

func nodeArgs(n *parser.Node) []string {
	var args []string
	for a := n.Next; a != nil; a = a.Next {
		args = append(args, a.Value)
	}
	return args
}

var argRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

func expandArgs(s string, args map[string]string) string {
	return argRef.ReplaceAllStringFunc(s, func(m string) string {
		return args[argRef.FindStringSubmatch(m)[1]]
	})
}

// pinnedImage matches NAME:TAG@sha256:DIGEST: the tag says what it is, the
// digest makes the pull reproducible.
var pinnedImage = regexp.MustCompile(`^[a-z0-9][a-z0-9._/-]*(:[0-9]+)?/?[a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}@sha256:[0-9a-f]{64}$`)

// isPinnedImage reports whether ref names an image by tag and digest.
func isPinnedImage(ref string) bool { return pinnedImage.MatchString(ref) }

// ortLib is the ONNX Runtime the inference image carries.
var ortLib = struct{ Package, SHA256, Path string }{
	Package: "onnxruntime-node@1.24.1",
	SHA256:  "53ef1ac028dd1b05554b8da28d9159eb3876f99868193d2aaa6e67f0243c23d4",
	Path:    "/usr/local/lib/onnxruntime/libonnxruntime.so.1",
}

// checkDockerfile checks the multi-target Dockerfile of the services: pinned
// bases, one final target per service running its binary as a non-root
// user with a health check, inference with a verified ONNX Runtime, and
// the target of the setup job (checkDockerfileJob).
func checkDockerfile(d *dockerfile) error {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	for _, u := range d.Unknown {
		fail("dockerfile: unknown instruction at %s", u)
	}
	seen := map[string]bool{}
	for _, s := range d.Stages {
		if s.Name != "" {
			if seen[s.Name] {
				fail("dockerfile: line %d: stage %q defined twice", s.Line, s.Name)
			}
			seen[s.Name] = true
		}
		if s.Parent == nil && !isPinnedImage(s.Base) {
			fail("dockerfile: line %d: FROM %s (= %q) is neither an earlier stage nor an image pinned as name:tag@sha256:digest", s.Line, s.From, s.Base)
		}
		for _, c := range s.Copies {
			if c.From != "" && d.Stage(c.From) == nil {
				fail("dockerfile: line %d: COPY --from=%s names no stage", c.Line, c.From)
			}
		}
	}
	for _, svc := range services {
		st := d.Stage(svc.Name)
		if st == nil {
			fail("dockerfile: no target %q", svc.Name)
			continue
		}
		if st.Parent != nil {
			fail("dockerfile: target %q builds on stage %q: a final image starts from a small base image", svc.Name, st.Parent.Name)
		}
		checkUser(st, fail)
		bin := "/usr/local/bin/" + svc.Name
		if !slices.Equal(st.Entrypoint, []string{bin}) {
			fail("dockerfile: target %q: ENTRYPOINT is %q, want [%q]", svc.Name, st.Entrypoint, bin)
		}
		src := copiedFrom(d, st, bin)
		if src == nil {
			fail("dockerfile: target %q does not copy its binary to %s", svc.Name, bin)
		} else {
			checkGoBuild(svc, src, fail)
		}
		if copiedFrom(d, st, healthProbe) == nil {
			fail("dockerfile: target %q does not copy the health probe to %s", svc.Name, healthProbe)
		}
		if len(st.Healthcheck) < 2 || st.Healthcheck[0] != "CMD" || st.Healthcheck[1] != healthProbe {
			fail("dockerfile: target %q: HEALTHCHECK is %q, want CMD %s URL", svc.Name, st.Healthcheck, healthProbe)
		}
		if svc.Cgo {
			checkONNXRuntime(d, st, fail)
		}
	}
	checkDockerfileJob(d, setupJob, fail)
	return errors.Join(errs...)
}

// checkDockerfileJob checks the target of a one-shot job: a small base, a
// non-root user, its binary built without cgo inside its module as the
// entrypoint, and the job's arguments as the default command.
func checkDockerfileJob(d *dockerfile, j job, fail func(string, ...any)) {
	st := d.Stage(j.Target)
	if st == nil {
		fail("dockerfile: no target %q", j.Target)
		return
	}
	if st.Parent != nil {
		fail("dockerfile: target %q builds on stage %q: a final image starts from a small base image", j.Target, st.Parent.Name)
	}
	checkUser(st, fail)
	bin := "/usr/local/bin/" + j.Target
	if !slices.Equal(st.Entrypoint, []string{bin}) {
		fail("dockerfile: target %q: ENTRYPOINT is %q, want [%q]", j.Target, st.Entrypoint, bin)
	}
	if !slices.Equal(st.Cmd, j.Args) {
		fail("dockerfile: target %q: CMD is %q, want %q", j.Target, st.Cmd, j.Args)
	}
	if src := copiedFrom(d, st, bin); src == nil {
		fail("dockerfile: target %q does not copy its binary to %s", j.Target, bin)
	} else {
		checkGoBuild(service{Name: j.Target, Package: j.Package}, src, fail)
	}
}

func checkUser(st *stage, fail func(string, ...any)) {
	u := st.EffectiveUser()
	uid, _, _ := strings.Cut(u, ":")
	switch {
	case u == "":
		fail("dockerfile: target %q sets no USER: it would run as root", st.Name)
	case uid == "0" || uid == "root":
		fail("dockerfile: target %q runs as root (USER %s)", st.Name, u)
	case strings.Trim(uid, "0123456789") != "":
		// Kubernetes' runAsNonRoot can only verify a numeric user.
		fail("dockerfile: target %q: USER %s is not numeric", st.Name, u)
	}
}

// copiedFrom returns the stage a final image copies dest from (nil if it
// does not), following one level of COPY --from.
func copiedFrom(d *dockerfile, st *stage, dest string) *stage {
	for _, c := range st.Copies {
		if c.Dest == dest || (strings.HasSuffix(c.Dest, "/") && c.Dest+path.Base(dest) == dest) {
			if c.From == "" {
				return st
			}
			return d.Stage(c.From)
		}
	}
	return nil
}

// checkGoBuild checks that the stage a binary comes from builds the
// service's main package inside its module, with cgo only where needed.
func checkGoBuild(svc service, build *stage, fail func(string, ...any)) {
	module, pkg, _ := strings.Cut(strings.TrimPrefix(svc.Package, "./"), "/")
	cgo := "CGO_ENABLED=0"
	if svc.Cgo {
		cgo = "CGO_ENABLED=1"
	}
	for _, r := range build.Runs {
		if strings.Contains(r, "go build") && strings.Contains(r, "./"+pkg) && strings.Contains(r, "cd "+module+" ") {
			if !strings.Contains(r, cgo) {
				fail("dockerfile: stage %q builds %s without %s", build.Name, svc.Package, cgo)
			}
			if v, _ := build.LookupEnv("GOFLAGS"); !strings.Contains(v, "ferretdb_no_postgresql") && !strings.Contains(r, "ferretdb_no_postgresql") {
				fail("dockerfile: stage %q builds %s without -tags=ferretdb_no_postgresql", build.Name, svc.Package)
			}
			return
		}
	}
	fail("dockerfile: stage %q has no `cd %s && go build ... ./%s`", build.Name, module, pkg)
}

func checkONNXRuntime(d *dockerfile, st *stage, fail func(string, ...any)) {
	if v, _ := st.LookupEnv("ONNXRUNTIME_LIB"); v != ortLib.Path {
		fail("dockerfile: target %q: ONNXRUNTIME_LIB is %q, want %q", st.Name, v, ortLib.Path)
	}
	src := copiedFrom(d, st, ortLib.Path)
	if src == nil {
		fail("dockerfile: target %q does not copy ONNX Runtime to %s", st.Name, ortLib.Path)
		return
	}
	var fetched bool
	for _, r := range src.Runs {
		r = expandArgs(r, src.Args)
		if strings.Contains(r, "npm pack") && strings.Contains(r, ortLib.Package) &&
			strings.Contains(r, ortLib.SHA256) && strings.Contains(r, "sha256sum -c") {
			fetched = true
		}
	}
	if !fetched {
		fail("dockerfile: stage %q does not fetch %s with npm pack and verify sha256 %s", src.Name, ortLib.Package, ortLib.SHA256)
	}
}
