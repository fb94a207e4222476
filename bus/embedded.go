package bus

import (
	"fmt"
	"net/url"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures an in-process NATS server with JetStream.
type EmbeddedConfig struct {
	// Dir holds JetStream's file storage; data survives a restart.
	Dir string
	// Host defaults to 127.0.0.1: the embedded server is for one machine.
	Host string
	// Port 0 picks a free port; -1 (server.RANDOM_PORT) likewise.
	Port int
	// Name of the server; required and unique in a cluster.
	Name string
	// Cluster, when ClusterName is set, joins a route cluster: ClusterPort
	// listens for routes and Routes lists every peer's route URL.
	ClusterName string
	ClusterPort int
	Routes      []string
	// MaxMemory and MaxStore bound JetStream (0 = server defaults).
	MaxMemory, MaxStore int64
}

// StartEmbedded starts a NATS server with JetStream on file storage and
// waits until it accepts connections.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName:         cfg.Name,
		Host:               cfg.Host,
		Port:               cfg.Port,
		JetStream:          true,
		StoreDir:           cfg.Dir,
		JetStreamMaxMemory: cfg.MaxMemory,
		JetStreamMaxStore:  cfg.MaxStore,
		NoSigs:             true,
		MaxPayload:         8 << 20,
	}
	if cfg.ClusterName != "" {
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: cfg.Host, Port: cfg.ClusterPort}
		for _, r := range cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("bus: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded nats: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("bus: embedded nats did not become ready within 30s")
	}
	return ns, nil
}
