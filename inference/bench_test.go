package inference

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradeline/gradeline/inference/internal/datasets"
	"github.com/gradeline/gradeline/inference/internal/testenv"
)

// fashionPNGs returns n Fashion-MNIST test images as PNG files.
func fashionPNGs(b *testing.B, n int) [][]byte {
	_, test, err := datasets.Fashion(testenv.DatasetsDir(b))
	if err != nil {
		b.Fatal(err)
	}
	out := make([][]byte, n)
	for i := range out {
		out[i] = encodePNG(b, test.Image(i))
	}
	return out
}

// ONNX Runtime alone on preprocessed inputs, and decode + preprocess +
// ONNX Runtime through the service's batcher (Registry.Grade), at batch 1
// and 32: the baselines of the pipeline.
func BenchmarkFashion(b *testing.B) {
	r := testRegistry(b)
	m := mustModel(b, r, "fashion")
	pngs := fashionPNGs(b, 32)
	inputs := make([][]float32, len(pngs))
	for i, p := range pngs {
		var err error
		if inputs[i], err = m.Preprocess(p); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("preprocess", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if _, err := m.Preprocess(pngs[i%len(pngs)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, n := range []int{1, 32} {
		b.Run(fmt.Sprintf("ort/batch=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := m.Run(inputs[:n]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/image")
		})
		b.Run(fmt.Sprintf("grade/batch=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := r.Grade(b.Context(), "fashion", pngs[:n]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/image")
		})
	}
}

// A grade through JetStream: store the bytes, publish the submission,
// wait for the outcome event; at 1 and 32 concurrent clients, with the
// default queue delay.
func BenchmarkBusGrade(b *testing.B) {
	s, err := startStack(testenv.ORTLib(b), DefaultMaxQueueDelay)
	if err != nil {
		b.Fatal(err)
	}
	defer s.close()
	benchBusGrade(b, s, []int{1, 32})
}

// BenchmarkBusGradeBesideSlowModel is BenchmarkBusGrade while the
// service also serves an idle model with a max_queue_delay of 20ms: it
// should cost the fashion grades nothing, since each model version waits
// for its own batch only.
func BenchmarkBusGradeBesideSlowModel(b *testing.B) {
	dir := b.TempDir()
	yaml := strings.Replace(string(readFile(b, filepath.Join("models", "digits", "model.yaml"))), "name: digits", "name: slow", 1)
	writeModelDir(b, filepath.Join(dir, "slow"), readFile(b, filepath.Join("models", "digits", "model.onnx")), yaml+"max_queue_delay: 20ms\n")
	s, err := startStack(testenv.ORTLib(b), DefaultMaxQueueDelay, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer s.close()
	benchBusGrade(b, s, []int{1, 32})
}

// benchBusGrade grades fashion images through the stack from each number
// of concurrent clients.
func benchBusGrade(b *testing.B, s *stack, clientCounts []int) {
	pngs := fashionPNGs(b, 64)
	for _, clients := range clientCounts {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			var mu sync.Mutex
			var lat []time.Duration
			next := make(chan int)
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() {
					for i := range next {
						start := time.Now()
						id := s.submit(b, "fashion", s.put(b, pngs[i%len(pngs)]))
						s.completed(b, id)
						mu.Lock()
						lat = append(lat, time.Since(start))
						mu.Unlock()
					}
				})
			}
			for i := 0; b.Loop(); i++ {
				next <- i
			}
			close(next)
			wg.Wait()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(len(lat))/b.Elapsed().Seconds(), "grades/s")
		})
	}
}
