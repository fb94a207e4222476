// Package mongouri keeps the URI of local mode's embedded MongoDB-compatible
// store in the data directory, so the gradeline CLI (admin grant|revoke)
// reaches the store of a running `make run` without MONGO_URI, as it
// reaches NATS through DATA_DIR/nats/admin.url.
package mongouri

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// File is DATA_DIR/mongo/uri. It is 0600 like the NATS URLs: whoever reads
// it can change every user's record.
func File(dataDir string) string { return filepath.Join(dataDir, "mongo", "uri") }

// Write records uri for dataDir, replacing the file atomically (the port
// changes at every start) so a reader never sees half of it.
func Write(dataDir, uri string) error {
	path := File(dataDir)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("mongouri: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".uri.*")
	if err != nil {
		return fmt.Errorf("mongouri: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600.
	_, err = tmp.WriteString(uri + "\n")
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("mongouri: %w", err)
	}
	return nil
}

// Read returns the URI local mode wrote for dataDir.
func Read(dataDir string) (string, error) {
	data, err := os.ReadFile(File(dataDir))
	if err != nil {
		return "", fmt.Errorf("mongouri: %w", err)
	}
	uri := strings.TrimSpace(string(data))
	if uri == "" {
		return "", fmt.Errorf("mongouri: %s is empty", File(dataDir))
	}
	return uri, nil
}
