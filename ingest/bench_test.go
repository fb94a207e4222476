package ingest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
)

// BenchmarkAnnotations measures annotations accepted per second through
// HTTP (64 concurrent keep-alive clients, 202 after the PubAck) and, in
// the same run, the raw JetStream publish rate of the same payloads.
//
//	go test -run '^$' -bench Annotations -benchtime 1x ./ingest/
func BenchmarkAnnotations(b *testing.B) {
	const clients, total = 64, 20000
	s := startIngest(b)
	c, _ := s.newUser(b)
	payload := []byte(`{"annotation":{"label":"cat","box":[10,20,30,40],"note":"benchmark"}}`)
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	hc := &http.Client{Transport: tr}
	var next atomic.Int64
	var failed atomic.Int64
	run := func(one func() error) time.Duration {
		next.Store(0)
		start := time.Now()
		var wg sync.WaitGroup
		for i := 0; i < clients; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= total {
					if err := one(); err != nil {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	httpOne := func() error {
		req, _ := http.NewRequest("POST", s.URL+"/api/v1/annotations", bytes.NewReader(payload))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+c.token)
		res, err := hc.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 202 {
			return io.ErrUnexpectedEOF
		}
		return nil
	}
	nc, js, err := bus.Connect(context.Background(), natsURL, "bench", quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	var ann struct {
		ImageID    string          `json:"image_id"`
		Annotation json.RawMessage `json:"annotation"`
	}
	_ = json.Unmarshal(payload, &ann)
	rawOne := func() error {
		ev := &bus.AnnotationCreated{Meta: bus.NewMeta(bus.TypeAnnotationCreated), ImageID: ann.ImageID, Author: "bench", Annotation: ann.Annotation}
		_, err := bus.Publish(context.Background(), js, ev)
		return err
	}
	// Alternate the two so background work (the annotator catching up)
	// weighs on both alike.
	var httpTime, rawTime time.Duration
	for round := 0; round < 2; round++ {
		rawTime += run(rawOne)
		httpTime += run(httpOne)
	}
	if failed.Load() > 0 {
		b.Fatalf("%d requests failed", failed.Load())
	}
	httpRate := 2 * total / httpTime.Seconds()
	rawRate := 2 * total / rawTime.Seconds()
	b.ReportMetric(httpRate, "http_annotations/s")
	b.ReportMetric(rawRate, "raw_publishes/s")
	b.ReportMetric(httpRate/rawRate, "ratio")
}
