package natsserver

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
)

func TestNATSSyncSetting(t *testing.T) {
	tests := []struct {
		env          string
		wantInterval time.Duration
		wantAlways   bool
		wantErr      bool
	}{
		{"", 2 * time.Minute, false, false}, // the server's default
		{"always", 2 * time.Minute, true, false},
		{"ALWAYS", 2 * time.Minute, true, false},
		{"1s", time.Second, false, false},
		{"250ms", 250 * time.Millisecond, false, false},
		{"0s", 0, false, true},
		{"-1s", 0, false, true},
		{"sometimes", 0, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			sync, err := ParseSync(tt.env)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), EnvNATSSync) {
					t.Fatalf("ParseSync(%q) = %v, want an error naming %s", tt.env, err, EnvNATSSync)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ns, err := Start(Config{Dir: t.TempDir(), Sync: sync})
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Shutdown()
			cfg := ns.JetStreamConfig()
			if cfg.SyncInterval != tt.wantInterval || cfg.SyncAlways != tt.wantAlways {
				t.Fatalf("%s=%q: server sync_interval %v always %v, want %v %v", EnvNATSSync, tt.env,
					cfg.SyncInterval, cfg.SyncAlways, tt.wantInterval, tt.wantAlways)
			}
		})
	}
}

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
			ns, err := Start(Config{Dir: b.TempDir(), Sync: tc.sync})
			if err != nil {
				b.Fatal(err)
			}
			defer ns.Shutdown()
			nc, js, err := bus.Connect(context.Background(), ns.ClientURL(), "bench", nil)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			if err := bus.EnsureTopology(context.Background(), js, bus.TopologyOptions{MaxBytesScale: 0.1}); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(32) // 32 × GOMAXPROCS publishers: 64 on two cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := bus.Publish(context.Background(), js, annotation("bench")); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

func annotation(author string) *bus.AnnotationCreated {
	return &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), Author: author, Annotation: json.RawMessage(`{"label":"cat"}`)}
}
