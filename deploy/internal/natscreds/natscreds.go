// Package natscreds keeps the NATS credentials of local mode in the data
// directory: the passwords of every user, generated once and reused on
// every start, and the URLs people and tools connect with.
package natscreds

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/gradeline/gradeline/bus"
)

// Files under DATA_DIR/nats. All are 0600: whoever reads them is on the bus.
const (
	CredentialsFile = "credentials.json"
	AdminURLFile    = "admin.url"
	SubscriberFile  = "subscriber.url"
)

// Dir is where local mode keeps NATS (JetStream data and these files).
func Dir(dataDir string) string { return filepath.Join(dataDir, "nats") }

// LoadOrCreate returns a credential for every user of bus.Users, reading
// DIR/credentials.json and adding (and saving) a fresh password for any
// user it lacks, so a restart keeps every password.
func LoadOrCreate(dir string) (map[string]bus.Credential, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("natscreds: %w", err)
	}
	path := filepath.Join(dir, CredentialsFile)
	var list []bus.Credential
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &list); err != nil {
			return nil, fmt.Errorf("natscreds: %s: %w (delete it to generate new passwords)", path, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("natscreds: %w", err)
	}
	creds := map[string]bus.Credential{}
	for _, c := range list {
		if c.Password != "" {
			creds[c.User] = c
		}
	}
	changed := false
	for _, u := range bus.Users() {
		if _, ok := creds[u]; ok {
			continue
		}
		pw, err := bus.NewPassword()
		if err != nil {
			return nil, err
		}
		creds[u] = bus.Credential{User: u, Password: pw}
		changed = true
	}
	if changed {
		out := make([]bus.Credential, 0, len(creds))
		for _, u := range bus.Users() {
			out = append(out, creds[u])
		}
		data, _ := json.MarshalIndent(out, "", "  ")
		if err := writePrivate(path, append(data, '\n')); err != nil {
			return nil, err
		}
	}
	return creds, nil
}

// List returns the credentials in the order of bus.Users.
func List(creds map[string]bus.Credential) []bus.Credential {
	out := make([]bus.Credential, 0, len(creds))
	for _, u := range bus.Users() {
		if c, ok := creds[u]; ok {
			out = append(out, c)
		}
	}
	return out
}

// WriteURLs writes admin.url and subscriber.url for the server at
// serverURL (rewritten at every start: the port may change).
func WriteURLs(dir, serverURL string, creds map[string]bus.Credential) error {
	for file, user := range map[string]string{AdminURLFile: bus.UserAdmin, SubscriberFile: bus.UserSubscriber} {
		u, err := bus.URLWithUser(serverURL, creds[user])
		if err != nil {
			return err
		}
		if err := writePrivate(filepath.Join(dir, file), []byte(u+"\n")); err != nil {
			return err
		}
	}
	return nil
}

// AdminURL reads the operator URL local mode wrote under dataDir.
func AdminURL(dataDir string) (string, error) {
	path := filepath.Join(Dir(dataDir), AdminURLFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("natscreds: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// writePrivate writes data readable by the owner only, replacing the file
// atomically so a reader never sees half of it.
func writePrivate(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("natscreds: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("natscreds: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("natscreds: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("natscreds: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("natscreds: %w", err)
	}
	return nil
}
