package inference

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gradeline/gradeline/bus"
)

// builtinFS holds the demo models the repository ships (trained by
// cmd/gradeline-train), so the binary carries them.
//
//go:embed models
var builtinFS embed.FS

// BuiltinModels returns the built-in models folder: one directory per model.
func BuiltinModels() fs.FS {
	sub, err := fs.Sub(builtinFS, "models")
	if err != nil {
		panic(err) // the embed pattern guarantees the folder
	}
	return sub
}

// RegistryOptions say where models come from.
type RegistryOptions struct {
	// Dirs are folders of model directories, loaded after the built-in
	// ones; a model with the name of an earlier one replaces it. A folder
	// that itself holds model.yaml is one model.
	Dirs []string
	// ORTLib is the path of libonnxruntime.so.1.
	ORTLib string
	// NoBuiltin leaves out the built-in models.
	NoBuiltin bool
	// Threads is the number of threads of one ONNX Runtime call (0 = 1:
	// the service decodes and grades batches in parallel already; a
	// larger value lowers the latency of big models on idle machines).
	Threads int
	Logger  *slog.Logger
	// OnLoad, if set, is told of every version load that failed (err set)
	// or was swapped in (err nil), for the service's metrics.
	OnLoad func(model, version string, err error)
}

// Registry holds the served models by name, each with its served
// versions. Scan (run by Watch) reloads what changed in the folders:
// a new or changed version is loaded and checked beside the serving ones
// and swapped in under the lock; a version swapped out is closed after
// the batches holding it (Acquire) release it.
type Registry struct {
	opt RegistryOptions
	log *slog.Logger

	// scanMu serialises scans, loads and unloads: one writer of the
	// model set at a time, loading outside mu.
	scanMu sync.Mutex
	// stats remembers each ONNX file's size, modification time and hash
	// (scanMu), so an unchanged file is not hashed again.
	stats map[string]fileStat
	// unloaded holds the names unloaded through the repository API: the
	// watcher leaves them out until they are loaded again (scanMu).
	unloaded map[string]bool
	// failed are the models that serve no version, with the errors of
	// their versions (scanMu), so the watcher retries only changed files.
	failed map[string]*entry

	mu     sync.RWMutex
	models map[string]*entry
	// broken: models (by name, or by directory when the name is unknown)
	// with no served version, and why.
	broken map[string]error
}

// entry is one model name: its served versions and the errors of the
// versions that failed to load. An entry is never changed once published:
// a scan replaces it whole.
type entry struct {
	name   string
	root   string // the models folder it came from
	policy VersionPolicy
	// served versions, newest first.
	served []*Model
	// errs are load errors by version (versions on disk that are not
	// served because they failed), with the fingerprint that failed.
	errs map[string]versionError
	// onDisk are the versions found in the folder, newest first.
	onDisk []string
}

type versionError struct {
	err         error
	fingerprint string
	at          time.Time
}

// newest is the served version a request without a version gets.
func (e *entry) newest() *Model { return e.served[0] }

func (e *entry) version(v string) *Model {
	for _, m := range e.served {
		if m.Version == v {
			return m
		}
	}
	return nil
}

func (e *entry) versionNames() []string {
	out := make([]string, len(e.served))
	for i, m := range e.served {
		out[i] = m.Version
	}
	return out
}

type fileStat struct {
	size    int64
	modTime time.Time
	hash    string
	// changed: the size or time differ from the previous scan's.
	changed bool
}

// LoadRegistry loads every model. A broken model is logged by name, kept
// in Broken and skipped; only a missing ONNX Runtime is an error.
func LoadRegistry(opt RegistryOptions) (*Registry, error) {
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := InitRuntime(opt.ORTLib); err != nil {
		return nil, err
	}
	r := &Registry{opt: opt, log: log, stats: map[string]fileStat{}, unloaded: map[string]bool{}, failed: map[string]*entry{},
		models: map[string]*entry{}, broken: map[string]error{}}
	r.scan(scanStart, "")
	log.Info("models loaded", "models", r.Names(), "broken", len(r.Broken()))
	return r, nil
}

// scanMode says how a scan treats files.
type scanMode int

const (
	// scanStart: load everything at once.
	scanStart scanMode = iota
	// scanWatch: load a file only when its size and time were the same
	// at the previous scan (it is not being written), and do not retry
	// a version that failed with the same files.
	scanWatch
	// scanForce: load now, retrying failed versions (a repository load).
	scanForce
)

// modelDir is one model directory found in a folder.
type modelDir struct {
	fsys  fs.FS
	dir   string // in fsys
	name  string // from the manifest, or the directory's name
	where string // for messages: "builtin/fashion" or a path
	disk  bool   // on disk (watched), not built in
	man   *Manifest
	yaml  []byte
	err   error  // the manifest's error
	root  string // the models folder it is in ("builtin" or a Dirs element)
}

// sources lists the model directories of every folder; a later model of
// a name replaces an earlier one. Folders that cannot be read are
// returned in bad.
func (r *Registry) sources() (dirs map[string]*modelDir, bad map[string]error) {
	dirs, bad = map[string]*modelDir{}, map[string]error{}
	add := func(fsys fs.FS, dir, dirName, where, root string, disk bool) {
		md := &modelDir{fsys: fsys, dir: dir, name: dirName, where: where, disk: disk, root: root}
		y, err := fs.ReadFile(fsys, path.Join(dir, "model.yaml"))
		if err != nil {
			if !hasONNX(fsys, dir) {
				return // neither file: not a model directory
			}
			md.err = fmt.Errorf("model.yaml: %w", err)
		} else if md.man, md.err = ParseManifest(y, dirName); md.err == nil {
			md.name, md.yaml = md.man.Name, y
		}
		key := md.name
		if md.err != nil {
			key = "dir:" + where // a broken manifest names no model: its directory's name stands in
		}
		if old, ok := dirs[key]; ok && md.err == nil {
			r.log.Debug("model replaced by a later folder", "model", key, "old", old.where, "new", where)
		}
		dirs[key] = md
	}
	folder := func(fsys fs.FS, source string, disk bool) {
		entries, err := fs.ReadDir(fsys, ".")
		if err != nil {
			bad[source] = fmt.Errorf("models folder: %w", err)
			return
		}
		for _, e := range entries {
			if !e.IsDir() || e.Name()[0] == '.' {
				continue
			}
			add(fsys, e.Name(), e.Name(), path.Join(source, e.Name()), source, disk)
		}
	}
	if !r.opt.NoBuiltin {
		folder(BuiltinModels(), "builtin", false)
	}
	for _, dir := range r.opt.Dirs {
		if dir == "" {
			continue
		}
		st, err := os.Stat(dir)
		if err != nil || !st.IsDir() {
			if err == nil {
				err = errors.New("not a directory")
			}
			bad[dir] = fmt.Errorf("models folder: %w", err)
			continue
		}
		fsys := os.DirFS(dir)
		if _, err := fs.Stat(fsys, "model.yaml"); err == nil {
			add(fsys, ".", path.Base(dir), dir, dir, true)
			continue
		}
		folder(fsys, dir, true)
	}
	return dirs, bad
}

// hasONNX reports a model.onnx in dir or in a version folder of it.
func hasONNX(fsys fs.FS, dir string) bool {
	if _, err := fs.Stat(fsys, path.Join(dir, "model.onnx")); err == nil {
		return true
	}
	entries, _ := fs.ReadDir(fsys, dir)
	for _, e := range entries {
		if e.IsDir() && isNumber(e.Name()) {
			if _, err := fs.Stat(fsys, path.Join(dir, e.Name(), "model.onnx")); err == nil {
				return true
			}
		}
	}
	return false
}

// versionFile is one version of a model directory: <dir>/<n>/model.onnx,
// or the flat <dir>/model.onnx (the manifest's version, "1" by default).
type versionFile struct {
	version string
	file    string // in fsys
}

// versionFiles lists the versions of a model directory, newest first.
func versionFiles(md *modelDir) []versionFile {
	var out []versionFile
	entries, _ := fs.ReadDir(md.fsys, md.dir)
	numbered := map[string]bool{}
	for _, e := range entries {
		if !e.IsDir() || !isNumber(e.Name()) {
			continue
		}
		f := path.Join(md.dir, e.Name(), "model.onnx")
		if _, err := fs.Stat(md.fsys, f); err == nil {
			out = append(out, versionFile{version: e.Name(), file: f})
			numbered[e.Name()] = true
		}
	}
	flat := path.Join(md.dir, "model.onnx")
	if _, err := fs.Stat(md.fsys, flat); err == nil && !numbered[md.man.Version] {
		out = append(out, versionFile{version: md.man.Version, file: flat})
	}
	slices.SortFunc(out, func(a, b versionFile) int { return compareVersions(b.version, a.version) })
	return out
}

// scan reads the folders and brings the served models in line with them
// (only the model called only, when set).
func (r *Registry) scan(mode scanMode, only string) {
	r.scanMu.Lock()
	defer r.scanMu.Unlock()
	dirs, bad := r.sources()
	r.mu.RLock()
	current := make(map[string]*entry, len(r.models))
	for k, v := range r.models {
		current[k] = v
	}
	wasBroken := r.broken
	r.mu.RUnlock()

	next := map[string]*entry{}
	broken := map[string]error{}
	for k, err := range bad {
		broken[k] = err
	}
	for name := range r.unloaded {
		broken[name] = errUnloaded
	}
	var retire []*Model
	for _, md := range dirs {
		if md.err != nil {
			broken[md.name] = md.err
			continue
		}
		old := current[md.name]
		if r.unloaded[md.name] {
			continue
		}
		if old == nil {
			old = r.failed[md.name]
		}
		if only != "" && md.name != only {
			// Another model's state stays as it is.
			if old != nil {
				next[md.name] = old
			} else if err := wasBroken[md.name]; err != nil {
				broken[md.name] = err
			}
			continue
		}
		e, gone, err := r.reconcile(mode, md, old)
		retire = append(retire, gone...)
		delete(r.failed, md.name)
		if err != nil {
			broken[md.name] = err
			r.failed[md.name] = e
		} else {
			next[md.name] = e
		}
	}
	// Models whose folder is gone stop being served (unless only another
	// model was asked for).
	for name, e := range current {
		if _, ok := next[name]; ok {
			continue
		}
		if (only != "" && name != only && !r.unloaded[name]) || (bad[e.root] != nil && !r.unloaded[name]) {
			// Another model's state stays; a folder that cannot be read
			// (an unmounted volume) keeps its models serving, reported.
			next[name] = e
			continue
		}
		if !r.unloaded[name] {
			r.log.Warn("model removed from its folder: no longer served", "model", name)
		}
		retire = append(retire, e.served...)
	}
	r.mu.Lock()
	r.models, r.broken = next, broken
	r.mu.Unlock()
	// Outside the lock: a retired version closes when its last batch ends.
	for _, m := range retire {
		m.retire()
	}
}

// reconcile loads the versions of md that are new or changed and applies
// the version policy. It returns the model's new entry, the versions to
// retire, and the error to report when no version serves (the entry then
// keeps the versions' errors for the next scan).
func (r *Registry) reconcile(mode scanMode, md *modelDir, old *entry) (*entry, []*Model, error) {
	files := versionFiles(md)
	if len(files) == 0 {
		var gone []*Model
		if old != nil {
			gone = old.served
		}
		return nil, gone, errors.New("model.onnx: no model.onnx and no version folder <n>/model.onnx")
	}
	e := &entry{name: md.name, root: md.root, policy: md.man.VersionPolicy, errs: map[string]versionError{}}
	yamlSum := sha256.Sum256(md.yaml)
	var good []*Model // loadable versions: still served, or newly loaded
	var fresh []*Model
	for _, vf := range files {
		e.onDisk = append(e.onDisk, vf.version)
		var prev *Model
		if old != nil {
			prev = old.version(vf.version)
		}
		fp, ready, err := r.fingerprint(mode, md, vf.file, yamlSum[:])
		if err != nil {
			e.errs[vf.version] = versionError{err: err, at: time.Now()}
			if prev != nil {
				good = append(good, prev)
			}
			continue
		}
		switch {
		case prev != nil && prev.fingerprint == fp:
			good = append(good, prev)
			continue
		case !ready:
			// Being written: keep what serves, look again next scan.
			if prev != nil {
				good = append(good, prev)
			}
			if old != nil {
				if ve, ok := old.errs[vf.version]; ok {
					e.errs[vf.version] = ve
				}
			}
			continue
		}
		if old != nil && mode != scanForce {
			if ve, ok := old.errs[vf.version]; ok && ve.fingerprint == fp {
				e.errs[vf.version] = ve // the same files failed before
				if prev != nil {
					good = append(good, prev)
				}
				continue
			}
		}
		m, err := r.loadVersion(md, vf)
		if err != nil {
			e.errs[vf.version] = versionError{err: err, fingerprint: fp, at: time.Now()}
			r.log.Error("model version failed to load; not served", "model", md.name, "version", vf.version,
				"dir", md.where, "err", err, "still_serving", prev != nil)
			if r.opt.OnLoad != nil {
				r.opt.OnLoad(md.name, vf.version, err)
			}
			if prev != nil {
				good = append(good, prev)
			}
			continue
		}
		m.fingerprint = fp
		good = append(good, m)
		fresh = append(fresh, m)
	}
	var names []string
	byVersion := map[string]*Model{}
	for _, m := range good {
		names = append(names, m.Version)
		byVersion[m.Version] = m
	}
	chosen := e.policy.choose(names)
	keep := map[*Model]bool{}
	for _, v := range chosen {
		m := byVersion[v]
		keep[m] = true
		e.served = append(e.served, m)
	}
	var gone []*Model
	if old != nil {
		for _, m := range old.served {
			if !keep[m] {
				gone = append(gone, m)
			}
		}
	}
	for _, m := range fresh {
		if !keep[m] {
			_ = m.Close() // loaded and checked, but the policy does not serve it
			continue
		}
		verb := "model loaded"
		if old != nil && old.version(m.Version) != nil {
			verb = "model version reloaded"
		}
		r.log.Info(verb, "model", m.Name, "version", m.Version, "dir", m.Source,
			"input", fmt.Sprintf("%s %dx%dx%d", m.Input.Layout, m.Input.Width, m.Input.Height, m.Input.Channels),
			"labels", len(m.Labels), "max_batch", m.MaxBatch, "policy", e.policy.String())
		if r.opt.OnLoad != nil {
			r.opt.OnLoad(m.Name, m.Version, nil)
		}
	}
	if len(e.served) == 0 {
		var errs []error
		if len(names) > 0 {
			errs = append(errs, fmt.Errorf("version_policy %s selects none of the loadable versions %s", e.policy, strings.Join(names, ", ")))
		}
		for _, v := range e.onDisk {
			if ve, ok := e.errs[v]; ok {
				errs = append(errs, fmt.Errorf("version %s: %w", v, ve.err))
			}
		}
		if len(errs) == 1 && len(e.onDisk) == 1 {
			return e, gone, errors.Unwrap(errs[0])
		}
		return e, gone, errors.Join(errs...)
	}
	return e, gone, nil
}

// fingerprint identifies a version's files: the manifest and the ONNX
// file. ready is false while the file's size or time differ from the
// previous scan's (scanWatch), when it may still be being written.
func (r *Registry) fingerprint(mode scanMode, md *modelDir, file string, yamlSum []byte) (string, bool, error) {
	key := md.where + "|" + file
	st, err := fs.Stat(md.fsys, file)
	if err != nil {
		return "", false, fmt.Errorf("model.onnx: %w", err)
	}
	prev, seen := r.stats[key]
	cur := fileStat{size: st.Size(), modTime: st.ModTime()}
	if seen && prev.size == cur.size && prev.modTime.Equal(cur.modTime) && prev.hash != "" {
		cur.hash = prev.hash
	} else {
		data, err := fs.ReadFile(md.fsys, file)
		if err != nil {
			return "", false, fmt.Errorf("model.onnx: %w", err)
		}
		sum := sha256.Sum256(data)
		cur.hash = hex.EncodeToString(sum[:])
		// New or changed since the last scan: perhaps still being
		// written, so the watcher loads it at the next scan if it
		// stays the same (atomic renames cost one scan too).
		cur.changed = mode == scanWatch
	}
	r.stats[key] = cur
	h := sha256.New()
	h.Write(yamlSum)
	h.Write([]byte(cur.hash))
	return hex.EncodeToString(h.Sum(nil)), !cur.changed, nil
}

// loadVersion creates and checks the session of one version.
func (r *Registry) loadVersion(md *modelDir, vf versionFile) (*Model, error) {
	onnx, err := fs.ReadFile(md.fsys, vf.file)
	if err != nil {
		return nil, fmt.Errorf("model.onnx: %w", err)
	}
	man := *md.man
	man.Version = vf.version
	return newModel(&man, onnx, path.Join(md.where, strings.TrimPrefix(path.Dir(vf.file), md.dir)), r.opt.Threads)
}

// Watch scans the folders every interval until ctx ends, reloading what
// changed (interval <= 0: not at all).
func (r *Registry) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.scan(scanWatch, "")
		}
	}
}

// errUnloaded is the state of a model unloaded through the repository API.
var errUnloaded = errors.New("unloaded through the repository API; load it to serve it again")

// ErrUnknownModel is wrapped by Acquire, Load and Unload for a model that
// is not served (or not in the folders).
var ErrUnknownModel = errors.New("unknown model")

// Acquire returns version of the model called name (its newest served
// version when version is "") and holds it until Release, so a reload
// closes its session only after the caller is done. The error names what
// is served.
func (r *Registry) Acquire(name, version string) (*Model, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.models[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (available: %s)", ErrUnknownModel, name, strings.Join(r.namesLocked(), ", "))
	}
	m := e.newest()
	if version != "" {
		if m = e.version(version); m == nil {
			return nil, fmt.Errorf("%w: model %s has no version %q (served versions: %s)", ErrUnknownModel, name, version, strings.Join(e.versionNames(), ", "))
		}
	}
	m.acquire()
	return m, nil
}

// Model returns the newest served version of the model called name,
// without holding it (for tests and tools that do not reload).
func (r *Registry) Model(name string) (*Model, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.models[name]
	if !ok {
		return nil, false
	}
	return e.newest(), true
}

// Models returns the newest served version of each model, sorted by name.
func (r *Registry) Models() []*Model {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*Model, 0, len(r.models))
	for _, n := range r.namesLocked() {
		out = append(out, r.models[n].newest())
	}
	return out
}

// Names returns the names of the served models, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.namesLocked()
}

func (r *Registry) namesLocked() []string {
	out := make([]string, 0, len(r.models))
	for n := range r.models {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Broken returns the models (by name, or by directory when the name is
// unknown) that serve no version, with the reason.
func (r *Registry) Broken() map[string]error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make(map[string]error, len(r.broken))
	for k, v := range r.broken {
		out[k] = v
	}
	return out
}

// Version states in bus.ModelVersion, Triton's names.
const (
	StateReady       = "READY"
	StateUnavailable = "UNAVAILABLE"
)

// Infos describes the served models for clients: each with its newest
// version's details and every version in its folder, served (READY) or
// not (UNAVAILABLE with the load error, or not chosen by the policy).
// With all, models that serve no version are listed too.
func (r *Registry) Infos(all bool) []bus.ModelInfo {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]bus.ModelInfo, 0, len(r.models))
	for _, n := range r.namesLocked() {
		e := r.models[n]
		info := e.newest().Info()
		for _, v := range e.onDisk {
			mv := bus.ModelVersion{Version: v, State: StateUnavailable}
			if m := e.version(v); m != nil {
				mv.State, mv.LoadedAt = StateReady, m.LoadedAt.UTC()
			}
			if ve, ok := e.errs[v]; ok {
				mv.Error = ve.err.Error()
				if mv.State != StateReady {
					mv.Reason = "load failed"
				} else {
					mv.Reason = "a changed copy failed to load; the previous one serves"
				}
			} else if mv.State != StateReady {
				mv.Reason = "not selected by version_policy " + e.policy.String()
			}
			info.Versions = append(info.Versions, mv)
		}
		out = append(out, info)
	}
	if all {
		names := make([]string, 0, len(r.broken))
		for n := range r.broken {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if _, ok := r.models[n]; ok || !nameRE.MatchString(n) {
				continue
			}
			out = append(out, bus.ModelInfo{Name: n, State: StateUnavailable, Error: r.broken[n].Error()})
		}
	}
	return out
}

// Unload stops serving the model called name: requests already holding a
// version finish on it; new ones are refused until Load. The watcher
// leaves the model alone meanwhile.
func (r *Registry) Unload(name string) error {
	r.scanMu.Lock()
	defer r.scanMu.Unlock()
	r.mu.Lock()
	e, ok := r.models[name]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("%w %q: it is not served", ErrUnknownModel, name)
	}
	delete(r.models, name)
	r.broken[name] = errUnloaded
	r.mu.Unlock()
	r.unloaded[name] = true
	for _, m := range e.served {
		m.retire()
	}
	r.log.Info("model unloaded", "model", name)
	return nil
}

// Unloaded reports whether the model called name is unloaded through the
// repository API (Unload, until Load).
func (r *Registry) Unloaded(name string) bool {
	r.scanMu.Lock()
	defer r.scanMu.Unlock()
	return r.unloaded[name]
}

// Load reads the model called name from its folder again and serves it
// (after an Unload, or to retry versions that failed to load). The error
// says why no version serves.
func (r *Registry) Load(name string) error {
	r.scanMu.Lock()
	delete(r.unloaded, name)
	r.scanMu.Unlock()
	r.scan(scanForce, name)
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.models[name]; ok {
		return nil
	}
	if err := r.broken[name]; err != nil {
		return err
	}
	return fmt.Errorf("%w %q: no model of that name in the models folders", ErrUnknownModel, name)
}

// Close releases every session.
func (r *Registry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, e := range r.models {
		for _, m := range e.served {
			m.retired.Store(true)
			errs = append(errs, m.Close())
		}
	}
	r.models = map[string]*entry{}
	return errors.Join(errs...)
}
