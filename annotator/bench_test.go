package annotator_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// BenchmarkCatchUp measures how fast the annotator stores a backlog: n
// annotations are in the stream before it starts, and the clock runs
// until all are in MongoDB (the embedded FerretDB here) and acked.
func BenchmarkCatchUp(b *testing.B) {
	const n = 5000
	for range b.N {
		b.StopTimer()
		e := newEnv(b)
		for i := range n {
			ev := annotation("bench", "img", i)
			msg := nats.NewMsg(bus.SubjectAnnotationCreated)
			msg.Data, _ = json.Marshal(ev)
			msg.Header.Set(jetstream.MsgIDHeader, ev.ID)
			if _, err := e.js.PublishMsgAsync(msg); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-e.js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("async publishes not acknowledged")
		}
		b.StartTimer()
		start := time.Now()
		stop := e.run()
		e.waitCount("annotations", n)
		e.waitIdle(bus.ConsumerAnnotator)
		el := time.Since(start)
		b.StopTimer()
		stop()
		b.ReportMetric(float64(n)/el.Seconds(), "annotations/s")
	}
}
