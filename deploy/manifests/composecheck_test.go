package manifests

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"

	"github.com/gradeline/gradeline/bus"
)

// loadCompose loads dir/docker-compose.yml with the Compose specification's
// own loader (schema validation, interpolation, merge of anchors). env is the
// whole interpolation environment: the caller's process environment and any
// .env file are deliberately not read, so the result does not depend on the
// machine.
func loadCompose(ctx context.Context, dir string, env map[string]string) (*types.Project, error) {
	var kv []string
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(dir, "docker-compose.yml")},
		cli.WithWorkingDirectory(dir),
		cli.WithEnv(kv),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	p, err := cli.ProjectFromOptions(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	return p, nil
}

// Infrastructure services of the compose file and the URL variable that
// points at each.
var composeInfra = map[string]string{"nats": "NATS_URL", "mongo": "MONGO_URI", "clickhouse": "CLICKHOUSE_DSN"}

// checkCompose checks a loaded compose project against the service table:
// health checks everywhere (but on the one-shot setup), dependencies wait
// for health (or for setup's success), required environment set, URLs
// point at services of the file, images pinned or built from a Dockerfile
// target that exists, only the edge published, the streams created by
// setup before any service starts.
func checkCompose(p *types.Project) error {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	for name := range composeInfra {
		if _, ok := p.Services[name]; !ok {
			fail("compose: no service %q", name)
		}
	}
	for _, name := range append(serviceNames(), setupJob.Compose) {
		if _, ok := p.Services[name]; !ok {
			fail("compose: no service %q", name)
		}
	}
	dockerfiles := map[string]*dockerfile{}
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		s := p.Services[name]
		hc := s.HealthCheck
		if name != setupJob.Compose && (hc == nil || hc.Disable || len(hc.Test) < 2 || (hc.Test[0] != "CMD" && hc.Test[0] != "CMD-SHELL")) {
			fail("compose: service %q has no health check", name)
		}
		for dep, d := range s.DependsOn {
			want := types.ServiceConditionHealthy
			if dep == setupJob.Compose {
				want = types.ServiceConditionCompletedSuccessfully
			}
			if d.Condition != want {
				fail("compose: service %q depends on %q with condition %q, want %s", name, dep, d.Condition, want)
			}
		}
		for _, port := range s.Ports {
			if name != edgeName {
				fail("compose: service %q publishes port %d: only %s is reachable from outside", name, port.Target, edgeName)
			}
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				fail("compose: service %q bind-mounts %s: use a named volume", name, v.Source)
			}
		}
		if name == setupJob.Compose {
			checkComposeJob(p, s, setupJob, dockerfiles, fail)
			continue
		}
		svc, ours := serviceByName(name)
		if !ours {
			// Third-party images are pulled: pinned by tag and digest.
			if s.Build != nil {
				fail("compose: service %q is not in the service table but is built", name)
			}
			if !isPinnedImage(s.Image) {
				fail("compose: service %q: image %q is not pinned as name:tag@sha256:digest", name, s.Image)
			}
			continue
		}
		checkComposeService(p, s, svc, dockerfiles, fail)
	}
	checkComposeNATS(p, fail)
	if edge, ok := p.Services[edgeName]; ok && len(edge.Ports) == 0 {
		fail("compose: the edge %q publishes no port", edgeName)
	}
	return errors.Join(errs...)
}

func checkComposeService(p *types.Project, s types.ServiceConfig, svc service, dockerfiles map[string]*dockerfile, fail func(string, ...any)) {
	for _, k := range svc.Env {
		if v := s.Environment[k]; v == nil || *v == "" {
			fail("compose: service %q: required environment %s is not set", svc.Name, k)
		}
	}
	if _, ok := s.DependsOn["nats"]; !ok {
		fail("compose: service %q does not wait for nats", svc.Name)
	}
	if _, ok := s.DependsOn[setupJob.Compose]; !ok {
		fail("compose: service %q does not wait for %s: it would start before its streams exist", svc.Name, setupJob.Compose)
	}
	// Every URL names a service of this file, and the service waits for it.
	for infra, key := range composeInfra {
		v := s.Environment[key]
		if v == nil {
			continue
		}
		u, err := url.Parse(*v)
		if err != nil {
			fail("compose: service %q: %s: %v", svc.Name, key, err)
			continue
		}
		if u.Hostname() != infra {
			fail("compose: service %q: %s points at host %q, want the service %q", svc.Name, key, u.Hostname(), infra)
		}
		if _, ok := s.DependsOn[infra]; !ok {
			fail("compose: service %q uses %s but does not wait for it", svc.Name, infra)
		}
	}
	if v := s.Environment["NATS_URL"]; v != nil {
		if u, err := url.Parse(*v); err == nil {
			pw, _ := u.User.Password()
			if u.User == nil || u.User.Username() != svc.Name || pw == "" {
				fail("compose: service %q: NATS_URL connects as %q, want its own user %q with a password (no anonymous NATS)", svc.Name, u.User.Username(), svc.Name)
			}
		}
	}
	if v := s.Environment[bus.EnvReplicas]; v != nil && *v != "1" {
		fail("compose: service %q: %s=%s, but compose runs a single NATS server", svc.Name, bus.EnvReplicas, *v)
	}
	hc := s.HealthCheck
	if hc != nil && len(hc.Test) >= 2 && (hc.Test[0] != "CMD" || hc.Test[1] != healthProbe) {
		fail("compose: service %q: health check %q: the image has no shell, use [CMD, %s, URL]", svc.Name, hc.Test, healthProbe)
	}
	if hc != nil && len(hc.Test) >= 3 && !strings.Contains(hc.Test[2], fmt.Sprintf(":%d/", svc.Port)) {
		fail("compose: service %q: health check %q does not ask port %d", svc.Name, hc.Test, svc.Port)
	}
	st := checkComposeBuild(s, svc.Name, dockerfiles, fail)
	// A path given in the environment must be the one the image has.
	if v := s.Environment["ONNXRUNTIME_LIB"]; v != nil && st != nil {
		if img, _ := st.LookupEnv("ONNXRUNTIME_LIB"); img != *v {
			fail("compose: service %q: ONNXRUNTIME_LIB=%s, but the image has the library at %q", svc.Name, *v, img)
		}
	}
}

// checkComposeBuild checks that service s is built from the Dockerfile
// target named target, and returns that stage (nil when it is not).
func checkComposeBuild(s types.ServiceConfig, target string, dockerfiles map[string]*dockerfile, fail func(string, ...any)) *stage {
	if s.Image == "" {
		fail("compose: service %q has no image name", s.Name)
	}
	b := s.Build
	if b == nil {
		fail("compose: service %q has no build section", s.Name)
		return nil
	}
	if st, err := os.Stat(b.Context); err != nil || !st.IsDir() {
		fail("compose: service %q: build context %s is not a directory", s.Name, b.Context)
		return nil
	}
	df := b.Dockerfile
	if !filepath.IsAbs(df) {
		df = filepath.Join(b.Context, df)
	}
	d, ok := dockerfiles[df]
	if !ok {
		var err error
		if d, err = parseDockerfileFile(df); err != nil {
			fail("compose: service %q: %v", s.Name, err)
		} else if err := checkBuildContext(d, b.Context); err != nil {
			fail("compose: service %q: %v", s.Name, err)
		}
		dockerfiles[df] = d
	}
	if d == nil {
		return nil
	}
	if b.Target != target || d.Stage(b.Target) == nil {
		fail("compose: service %q: build target %q, want the Dockerfile target %q", s.Name, b.Target, target)
		return nil
	}
	return d.Stage(target)
}

// checkComposeJob checks the one-shot service of j: built from its
// target, run once (never restarted, or only on failure) with its
// arguments, as its NATS user, after NATS is healthy; and every gradeline
// service waits for it to succeed.
func checkComposeJob(p *types.Project, s types.ServiceConfig, j job, dockerfiles map[string]*dockerfile, fail func(string, ...any)) {
	checkComposeBuild(s, j.Target, dockerfiles, fail)
	if s.Restart != "no" && !strings.HasPrefix(s.Restart, "on-failure") {
		fail("compose: service %q: restart %q, want \"no\" or on-failure: it runs once and exits", s.Name, s.Restart)
	}
	if !slices.Equal(s.Command, j.Args) {
		fail("compose: service %q: command %q, want %q", s.Name, s.Command, j.Args)
	}
	if len(s.Ports) > 0 {
		fail("compose: service %q publishes a port", s.Name)
	}
	for _, k := range j.Env {
		if v := s.Environment[k]; v == nil || *v == "" {
			fail("compose: service %q: required environment %s is not set", s.Name, k)
		}
	}
	if v := s.Environment[bus.EnvReplicas]; v != nil && *v != "1" {
		fail("compose: service %q: %s=%s, but compose runs a single NATS server", s.Name, bus.EnvReplicas, *v)
	}
	if v := s.Environment["NATS_URL"]; v != nil {
		u, err := url.Parse(*v)
		switch {
		case err != nil:
			fail("compose: service %q: NATS_URL: %v", s.Name, err)
		case u.Hostname() != "nats":
			fail("compose: service %q: NATS_URL points at host %q, want the service %q", s.Name, u.Hostname(), "nats")
		case u.User.Username() != j.User:
			fail("compose: service %q: NATS_URL connects as %q, want the operator %q: only it may create streams", s.Name, u.User.Username(), j.User)
		}
	}
	if d, ok := s.DependsOn["nats"]; !ok || d.Condition != types.ServiceConditionHealthy {
		fail("compose: service %q does not wait for nats to be healthy", s.Name)
	}
}

// checkBuildContext checks that every COPY from the build context of the
// Dockerfile names files that exist and that .dockerignore lets through.
func checkBuildContext(d *dockerfile, context string) error {
	var patterns []string
	if f, err := os.Open(filepath.Join(context, ".dockerignore")); err == nil {
		patterns, err = ignorefile.ReadAll(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s/.dockerignore: %w", context, err)
		}
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return fmt.Errorf("%s/.dockerignore: %w", context, err)
	}
	var errs []error
	for _, st := range d.Stages {
		for _, c := range st.Copies {
			if c.From != "" {
				continue
			}
			for _, src := range c.Sources {
				matches, _ := filepath.Glob(filepath.Join(context, filepath.FromSlash(src)))
				if len(matches) == 0 {
					if strings.ContainsAny(src, "*?[") {
						continue // an optional file, e.g. go.sum*
					}
					errs = append(errs, fmt.Errorf("dockerfile: line %d: COPY %s: no such file in the build context", c.Line, src))
					continue
				}
				for _, m := range matches {
					rel, _ := filepath.Rel(context, m)
					if excluded, _ := pm.MatchesOrParentMatches(filepath.ToSlash(rel)); excluded {
						errs = append(errs, fmt.Errorf("dockerfile: line %d: COPY %s: excluded by .dockerignore", c.Line, src))
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

// checkComposeNATS: the NATS server is started with a configuration file
// that admits only its users, and every password it reads is set.
func checkComposeNATS(p *types.Project, fail func(string, ...any)) {
	s, ok := p.Services["nats"]
	if !ok {
		return
	}
	var conf string
	for _, c := range s.Configs {
		def, ok := p.Configs[c.Source]
		if !ok || def.File == "" {
			continue
		}
		b, err := os.ReadFile(def.File)
		if err != nil {
			fail("compose: nats config %s: %v", c.Source, err)
			continue
		}
		if slices.Contains(s.Command, c.Target) {
			conf += string(b)
		}
	}
	if !regexp.MustCompile(`(?m)^\s*authorization\s*[{:]`).MatchString(conf) {
		fail("compose: nats is not started with a configuration (--config, from configs:) that has an authorization block: anonymous clients would be admitted")
		return
	}
	for _, m := range regexp.MustCompile(`password:\s*\$([A-Z0-9_]+)`).FindAllStringSubmatch(conf, -1) {
		if v := s.Environment[m[1]]; v == nil || *v == "" {
			fail("compose: nats reads $%s, which its environment does not set", m[1])
		}
	}
	for _, user := range bus.Users() {
		if !strings.Contains(conf, fmt.Sprintf("user: %q", user)) {
			fail("compose: the NATS configuration has no user %q", user)
		}
	}
}
