package natscreds

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gradeline/gradeline/bus"
)

func TestLoadOrCreateKeepsPasswordsPrivateAndStable(t *testing.T) {
	dataDir := t.TempDir()
	dir := Dir(dataDir)
	first, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != len(bus.Users()) {
		t.Fatalf("%d credentials, want one per user (%d)", len(first), len(bus.Users()))
	}
	second, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	for u, c := range first {
		if second[u] != c {
			t.Errorf("%s: password changed on the second load", u)
		}
	}
	if err := WriteURLs(dir, "nats://127.0.0.1:4222", second); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CredentialsFile, AdminURLFile, SubscriberFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	admin, err := AdminURL(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if want := "nats://admin:" + first[bus.UserAdmin].Password + "@127.0.0.1:4222"; admin != want {
		t.Fatalf("admin.url = %q, want %q", admin, want)
	}
	sub, _ := os.ReadFile(filepath.Join(dir, SubscriberFile))
	if !strings.HasPrefix(string(sub), "nats://subscriber:"+first[bus.UserSubscriber].Password+"@") {
		t.Fatalf("subscriber.url = %q", sub)
	}
}
