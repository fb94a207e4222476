package mongouri

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestWriteReadPrivate(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read before Write = %v, want not exist", err)
	}
	for _, uri := range []string{"mongodb://127.0.0.1:1111/", "mongodb://127.0.0.1:2222/"} {
		if err := Write(dir, uri); err != nil {
			t.Fatal(err)
		}
		got, err := Read(dir)
		if err != nil || got != uri {
			t.Fatalf("Read = %q, %v; want %q", got, err, uri)
		}
	}
	fi, err := os.Stat(File(dir))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir + "/mongo")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".uri.") {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}
}
