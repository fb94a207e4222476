package bus_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// faultNATS runs an embedded server on dir whose log goes to logs.
func faultNATS(t *testing.T, dir string, logs *syncBuffer) (*server.Server, jetstream.JetStream) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ns, err := natsserver.Start(natsserver.Config{Dir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	nc, js, err := bus.Connect(context.Background(), ns.ClientURL(), "bus-test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := bus.EnsureTopology(context.Background(), js, bus.TopologyOptions{MaxBytesScale: 0.01, Logger: log}); err != nil {
		t.Fatal(err)
	}
	return ns, js
}

// consumeInto runs the annotator's consume loop, recording event ids, until
// the returned stop is called.
func consumeInto(t *testing.T, js jetstream.JetStream, c *collector, log *slog.Logger) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = bus.Consume(ctx, js, bus.ConsumerAnnotator, bus.ConsumeOptions{Logger: log, MaxQueueDelay: 5 * time.Millisecond},
			func(_ context.Context, b []*bus.Delivery) error {
				c.mu.Lock()
				defer c.mu.Unlock()
				for _, d := range b {
					c.ids[d.Event.EventMeta().ID]++
				}
				return nil
			})
	}()
	return func() { cancel(); wg.Wait() }
}

func publishN(t *testing.T, js jetstream.JetStream, n int) []string {
	t.Helper()
	ids := make([]string, 0, n)
	for i := range n {
		ev := newAnnotation(fmt.Sprint("u", i))
		if _, err := bus.Publish(context.Background(), js, ev); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ev.ID)
	}
	return ids
}

// TestDamagedBlockFileLosesNoNewEvents reproduces issue 11: 4 KB of garbage
// in the middle of a stream's first block file cuts the stream on restart,
// leaving the durable consumer's position beyond the stream's end. Every
// event published after the damage must still reach the consumer, and the
// cut must be logged.
func TestDamagedBlockFileLosesNoNewEvents(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})

	ns, js := faultNATS(t, dir, logs)
	before := &collector{ids: map[string]int{}}
	stop := consumeInto(t, js, before, log)
	first := publishN(t, js, 3000)
	waitFor(t, "events before the damage consumed", func() bool { return len(before.seen()) == len(first) })
	stop()
	ns.Shutdown()
	ns.WaitForShutdown()

	damageMiddle(t, filepath.Join(dir, "jetstream", "$G", "streams", bus.StreamAnnotations, "msgs", "1.blk"))

	_, js = faultNATS(t, dir, logs)
	st, err := js.Stream(context.Background(), bus.StreamAnnotations)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stream after the damage: %d messages, seq %d..%d (was %d)", st.CachedInfo().State.Msgs,
		st.CachedInfo().State.FirstSeq, st.CachedInfo().State.LastSeq, len(first))
	after := &collector{ids: map[string]int{}}
	stop = consumeInto(t, js, after, log)
	defer stop()
	later := publishN(t, js, 200)
	waitFor(t, "every event published after the damage consumed", func() bool { return after.sawAll(later) })
	// The server's own log reaches ours (it warns about the damaged block).
	if !strings.Contains(logs.String(), "component=nats-server") {
		t.Fatalf("no line of the embedded server's log:\n%s", logs.String())
	}
	if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "stream="+bus.StreamAnnotations) ||
		!strings.Contains(l, "consumer="+bus.ConsumerAnnotator.Durable) || !strings.Contains(l, "gap=") {
		t.Fatalf("the cut stream was not logged as an error:\n%s", logs.String())
	}
}

// TestRunningConsumerRepositionsAfterStreamCut: a service that keeps running
// while the server restarts with a cut stream is not restarted itself, so
// its consumer must notice on its own (idle check) and pick new events up.
func TestRunningConsumerRepositionsAfterStreamCut(t *testing.T) {
	t.Cleanup(bus.SetPositionCheckEvery(time.Second))
	dir := t.TempDir()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	})
	ns, js := faultNATS(t, dir, logs)
	port := ns.Addr().(*net.TCPAddr).Port
	seen := &collector{ids: map[string]int{}}
	stop := consumeInto(t, js, seen, log)
	defer stop()
	first := publishN(t, js, 3000)
	waitFor(t, "events before the damage consumed", func() bool { return len(seen.seen()) == len(first) })
	ns.Shutdown()
	ns.WaitForShutdown()
	damageMiddle(t, filepath.Join(dir, "jetstream", "$G", "streams", bus.StreamAnnotations, "msgs", "1.blk"))

	// Same address: the running consumer's connection reconnects. Nothing
	// ensures the topology, so only the consumer's own check can help.
	ns2, err := natsserver.Start(natsserver.Config{Dir: dir, Port: port, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns2.Shutdown)
	nc2, js2, err := bus.Connect(context.Background(), ns2.ClientURL(), "publisher", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc2.Close)
	later := publishN(t, js2, 200)
	waitFor(t, "every event published after the damage consumed by the running consumer", func() bool { return seen.sawAll(later) })
	if !strings.Contains(logs.String(), "beyond the end of its stream") {
		t.Fatal("the cut stream was not logged")
	}
}

// damageMiddle overwrites 4 KB in the middle of a block file with garbage.
func damageMiddle(t *testing.T, blk string) {
	t.Helper()
	fi, err := os.Stat(blk)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(blk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	garbage := make([]byte, 4096)
	_, _ = rand.Read(garbage)
	if _, err := f.WriteAt(garbage, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
}
