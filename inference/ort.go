package inference

import (
	"errors"
	"fmt"
	"os"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// ErrNoRuntime is returned when the ONNX Runtime shared library cannot be
// loaded.
var ErrNoRuntime = errors.New("inference: ONNX Runtime is not available")

// ONNX Runtime has one environment per process; deploy/local runs every
// service (and tests run many registries) in one process, so it is
// initialised once, with the first library path given.
var (
	ortOnce sync.Once
	ortErr  error
)

// InitRuntime loads the ONNX Runtime shared library at path (once per
// process; later calls return the first outcome).
func InitRuntime(path string) error {
	ortOnce.Do(func() {
		if path == "" {
			ortErr = fmt.Errorf("%w: ONNXRUNTIME_LIB is not set; run `make install` and set it to .cache/onnxruntime/libonnxruntime.so.1", ErrNoRuntime)
			return
		}
		if st, err := os.Stat(path); err != nil || st.IsDir() {
			ortErr = fmt.Errorf("%w: ONNXRUNTIME_LIB=%s does not name a file; run `make install` to fetch libonnxruntime.so.1", ErrNoRuntime, path)
			return
		}
		// ORT logs run errors itself; they are returned and logged with
		// context here, so its own log keeps only fatal messages.
		ort.SetSharedLibraryPath(path)
		if err := ort.InitializeEnvironment(ort.WithLogLevelFatal()); err != nil {
			ortErr = fmt.Errorf("%w: loading ONNXRUNTIME_LIB=%s (ONNX Runtime >= 1.24 is needed; `make install` fetches 1.24.1): %v", ErrNoRuntime, path, err)
		}
	})
	return ortErr
}
