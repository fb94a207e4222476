package bus

import (
	"context"
	"testing"
)

// BenchmarkPublishSync measures raw JetStream publishes (PubAck awaited,
// 64 concurrent publishers) on file storage with the server's default
// sync_interval and with GRADELINE_NATS_SYNC=always, the cost quoted in
// the README.
func BenchmarkPublishSync(b *testing.B) {
	for _, tc := range []struct {
		name string
		sync Sync
	}{
		{"default", Sync{}},
		{"always", Sync{Always: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ns, err := StartEmbedded(EmbeddedConfig{Dir: b.TempDir(), Sync: tc.sync})
			if err != nil {
				b.Fatal(err)
			}
			defer ns.Shutdown()
			nc, js, err := Connect(context.Background(), ns.ClientURL(), "bench", nil)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			if err := EnsureTopology(context.Background(), js, TopologyOptions{MaxBytesScale: 0.1}); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(32) // 32 × GOMAXPROCS publishers: 64 on two cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := Publish(context.Background(), js, newAnnotation("bench")); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
