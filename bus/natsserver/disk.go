package natsserver

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/nats-io/nats-server/v2/server"
)

// CheckStoreReservation tells, before anything is created, whether the
// embedded server can hold the topology: JetStream refuses a stream whose
// size bound does not fit its store (by default 75% of the space free in
// its directory), which would otherwise surface as a bare "insufficient
// storage resources" from whichever service starts first.
func CheckStoreReservation(ns *server.Server, opt bus.TopologyOptions) error {
	cfg := ns.JetStreamConfig()
	if cfg == nil {
		return fmt.Errorf("natsserver: JetStream is not enabled on the embedded server")
	}
	need := bus.StoreReservation(opt)
	if cfg.MaxStore >= need {
		return nil
	}
	free := "unknown"
	if f, err := FreeBytes(cfg.StoreDir); err == nil {
		free = humanBytes(int64(f))
	}
	var parts []string
	for _, s := range bus.Streams {
		parts = append(parts, fmt.Sprintf("%s %s", s.Name, humanBytes(bus.StreamMaxBytes(s, opt))))
	}
	parts = append(parts, fmt.Sprintf("image bucket %s", humanBytes(bus.ImageBucketMaxBytes)),
		fmt.Sprintf("idempotency bucket %s", humanBytes(bus.IdempotencyBucketMaxBytes)))
	return fmt.Errorf("natsserver: too little space for the event store in %s: JetStream may use %s there (75%% of the %s free), "+
		"but the streams and buckets reserve %s (%s); free space there or set GRADELINE_DATA_DIR to a directory on a larger disk",
		cfg.StoreDir, humanBytes(cfg.MaxStore), free, humanBytes(need), strings.Join(parts, ", "))
}

// humanBytes renders n in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// StorageGuard watches an embedded server's file storage. When its disk
// fills, a stream's file store keeps failing every write even after space
// returns ("critical write error"), and every publish to it times out. The
// guard names the full directory for the edge's 503 answers and, once
// space has returned, restarts JetStream, which reloads every stream from
// disk with its write error cleared.
type StorageGuard struct {
	ns  *server.Server // nil until Start
	cfg server.JetStreamConfig
	log *slog.Logger
	// full: below this much free space the disk counts as full; JetStream
	// restarts once twice as much is free again.
	full uint64

	mu     sync.Mutex
	filled bool
	// lastFree and lastAt (unix nanoseconds) are the latest measure of
	// the free space, so that Problem, asked on every publish, measures
	// again only when the disk is near full or the measure is stale.
	lastFree, lastAt atomic.Int64
}

// freshFor is how long a measure of plenty of free space answers Problem
// without a statfs call; plenty is roomyFactor times the full threshold.
const (
	freshFor    = 250 * time.Millisecond
	roomyFactor = 64
)

// DefaultFullBelow is the free space under which the event store's disk
// counts as full.
const DefaultFullBelow = 1 << 20

// NewStorageGuard returns a guard to Start once the server runs; give its
// WriteFailed to the server first (Config.OnOutOfSpace). fullBelow
// 0 means DefaultFullBelow.
func NewStorageGuard(log *slog.Logger, fullBelow uint64) *StorageGuard {
	if log == nil {
		log = slog.Default()
	}
	if fullBelow == 0 {
		fullBelow = DefaultFullBelow
	}
	return &StorageGuard{log: log, full: fullBelow}
}

// Start watches ns until ctx ends.
func (g *StorageGuard) Start(ctx context.Context, ns *server.Server) {
	g.mu.Lock()
	g.ns = ns
	if cfg := ns.JetStreamConfig(); cfg != nil {
		g.cfg = *cfg
	}
	g.mu.Unlock()
	go g.run(ctx)
}

// WriteFailed records that a write failed for want of space: even with
// more than fullBelow free (a large write failed), the stream that failed
// keeps failing until JetStream is restarted.
func (g *StorageGuard) WriteFailed() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.filled {
		g.filled = true
		g.log.Error("event store: a write failed, its disk is full; events are refused (503) until space is freed", "dir", g.cfg.StoreDir)
	}
}

// Problem describes why events cannot be stored now, or is "". It looks
// at the disk itself, so the first refused event is already explained;
// only a measure younger than 250 ms that found plenty of room (64 times
// the full threshold) spares the statfs call on every publish.
func (g *StorageGuard) Problem() string {
	g.mu.Lock()
	filled, dir := g.filled, g.cfg.StoreDir
	g.mu.Unlock()
	if dir == "" {
		return ""
	}
	// A write that failed for want of space sets filled at once; until
	// then a recent measure with plenty of room left is enough.
	if !filled && time.Since(time.Unix(0, g.lastAt.Load())) < freshFor && uint64(g.lastFree.Load()) >= roomyFactor*g.full {
		return ""
	}
	free, err := g.measure(dir)
	if err != nil {
		return ""
	}
	if free >= g.full && !filled {
		return ""
	}
	return fmt.Sprintf("the disk of the NATS data directory %s is full (%s free): events cannot be stored; "+
		"the event store resumes by itself once space is freed there", g.cfg.StoreDir, humanBytes(int64(free)))
}

// measure returns the free space of dir and keeps it as the latest measure.
func (g *StorageGuard) measure(dir string) (uint64, error) {
	free, err := FreeBytes(dir)
	if err == nil {
		g.lastFree.Store(int64(min(free, math.MaxInt64)))
		g.lastAt.Store(time.Now().UnixNano())
	}
	return free, err
}

func (g *StorageGuard) run(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !g.ns.Running() {
			return
		}
		free, err := g.measure(g.cfg.StoreDir)
		if err != nil {
			continue
		}
		g.mu.Lock()
		filled := g.filled
		g.mu.Unlock()
		switch {
		case !filled && free < g.full:
			g.mu.Lock()
			g.filled = true
			g.mu.Unlock()
			g.log.Error("event store: its disk is full; events are refused (503) until space is freed",
				"dir", g.cfg.StoreDir, "free", humanBytes(int64(free)))
		case filled && free >= 2*g.full:
			// Streams that failed a write keep failing: reload them.
			if g.ns.JetStreamEnabled() {
				if err := g.ns.ShutdownJetStream(); err != nil {
					g.log.Warn("event store: stopping JetStream to reload its streams failed", "err", err)
					continue
				}
			}
			cfg := g.cfg
			// The server reports its store with "jetstream" appended, and
			// appends it again to what it is given.
			if filepath.Base(cfg.StoreDir) == server.JetStreamStoreDir {
				cfg.StoreDir = filepath.Dir(cfg.StoreDir)
			}
			if err := g.ns.EnableJetStream(&cfg); err != nil {
				g.log.Warn("event store: starting JetStream again failed; retrying", "dir", g.cfg.StoreDir, "err", err)
				continue
			}
			g.mu.Lock()
			g.filled = false
			g.mu.Unlock()
			g.log.Info("event store resumed: space was freed", "dir", g.cfg.StoreDir, "free", humanBytes(int64(free)))
		}
	}
}
