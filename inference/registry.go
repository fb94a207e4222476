package inference

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"slices"
	"sort"
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
}

// Registry holds the loaded models by name.
type Registry struct {
	models  map[string]*Model
	broken  map[string]error
	threads int
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
	r := &Registry{models: map[string]*Model{}, broken: map[string]error{}, threads: opt.Threads}
	if !opt.NoBuiltin {
		r.loadFolder(BuiltinModels(), "builtin", log)
	}
	for _, dir := range opt.Dirs {
		if dir == "" {
			continue
		}
		st, err := os.Stat(dir)
		if err != nil || !st.IsDir() {
			if err == nil {
				err = errors.New("not a directory")
			}
			r.broken[dir] = fmt.Errorf("models folder: %w", err)
			log.Error("models folder skipped", "dir", dir, "err", err)
			continue
		}
		fsys := os.DirFS(dir)
		if _, err := fs.Stat(fsys, "model.yaml"); err == nil {
			r.loadModel(fsys, ".", path.Base(dir), dir, log)
			continue
		}
		r.loadFolder(fsys, dir, log)
	}
	names := make([]string, 0, len(r.models))
	for n := range r.models {
		names = append(names, n)
	}
	sort.Strings(names)
	log.Info("models loaded", "models", names, "broken", len(r.broken))
	return r, nil
}

func (r *Registry) loadFolder(fsys fs.FS, source string, log *slog.Logger) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		r.broken[source] = fmt.Errorf("models folder: %w", err)
		log.Error("models folder skipped", "dir", source, "err", err)
		return
	}
	for _, e := range entries {
		if !e.IsDir() || e.Name()[0] == '.' {
			continue
		}
		r.loadModel(fsys, e.Name(), e.Name(), path.Join(source, e.Name()), log)
	}
}

// loadModel loads dir of fsys and returns the model's name ("" if broken).
func (r *Registry) loadModel(fsys fs.FS, dir, dirName, where string, log *slog.Logger) string {
	fail := func(name string, err error) string {
		key := name
		if key == "" || r.broken[key] != nil {
			key = where
		}
		r.broken[key] = err
		log.Error("model skipped", "model", name, "dir", where, "err", err)
		return ""
	}
	y, err := fs.ReadFile(fsys, path.Join(dir, "model.yaml"))
	if err != nil {
		if _, e2 := fs.Stat(fsys, path.Join(dir, "model.onnx")); e2 != nil {
			return "" // neither file: not a model directory
		}
		return fail(dirName, fmt.Errorf("model.yaml: %w", err))
	}
	man, err := ParseManifest(y, dirName)
	if err != nil {
		return fail(dirName, err)
	}
	onnx, err := fs.ReadFile(fsys, path.Join(dir, "model.onnx"))
	if err != nil {
		return fail(man.Name, fmt.Errorf("model.onnx: %w", err))
	}
	m, err := newModel(man, onnx, where, r.threads)
	if err != nil {
		return fail(man.Name, err)
	}
	if old, ok := r.models[man.Name]; ok {
		log.Warn("model replaced", "model", man.Name, "old", old.Source, "new", where)
		_ = old.Close()
	}
	delete(r.broken, man.Name)
	r.models[man.Name] = m
	log.Info("model loaded", "model", man.Name, "version", man.Version, "dir", where,
		"input", fmt.Sprintf("%s %dx%dx%d", man.Input.Layout, man.Input.Width, man.Input.Height, man.Input.Channels),
		"labels", len(man.Labels), "max_batch", m.MaxBatch)
	return man.Name
}

// Model returns the model called name.
func (r *Registry) Model(name string) (*Model, bool) {
	m, ok := r.models[name]
	return m, ok
}

// Models returns the loaded models sorted by name.
func (r *Registry) Models() []*Model {
	out := make([]*Model, 0, len(r.models))
	for _, m := range r.models {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b *Model) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// Names returns the names of the loaded models, sorted.
func (r *Registry) Names() []string {
	out := make([]string, 0, len(r.models))
	for n := range r.models {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Broken returns the models (by name, or by directory when the name is
// unknown) that failed to load, with the reason.
func (r *Registry) Broken() map[string]error {
	out := make(map[string]error, len(r.broken))
	for k, v := range r.broken {
		out[k] = v
	}
	return out
}

// Close releases every session.
func (r *Registry) Close() error {
	var errs []error
	for _, m := range r.models {
		errs = append(errs, m.Close())
	}
	return errors.Join(errs...)
}
