package local

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/internal/natscreds"
)

// checkNATSAuth checks, on a restarted stack, that the bus admits only its
// users: the passwords of the first start are reused, the files holding
// them are private, an anonymous client is refused and the subscriber of
// subscriber.url reads the streams but cannot publish.
func checkNATSAuth(t *testing.T, dir string, first, second Endpoints) {
	t.Helper()
	natsDir := natscreds.Dir(dir)
	for _, f := range []string{natscreds.CredentialsFile, natscreds.AdminURLFile, natscreds.SubscriberFile} {
		fi, err := os.Stat(filepath.Join(natsDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	if second.NATSAdminFile != filepath.Join(natsDir, natscreds.AdminURLFile) || second.NATSSubscriberFile != filepath.Join(natsDir, natscreds.SubscriberFile) {
		t.Errorf("endpoints name %q and %q", second.NATSAdminFile, second.NATSSubscriberFile)
	}
	adminURL, err := natscreds.AdminURL(dir)
	if err != nil {
		t.Fatal(err)
	}
	if adminURL != second.NATSAdmin {
		t.Errorf("admin.url %q, the stack connects with %q", adminURL, second.NATSAdmin)
	}
	if userinfo(t, first.NATSAdmin) != userinfo(t, second.NATSAdmin) || !strings.HasPrefix(userinfo(t, adminURL), bus.UserAdmin+":") {
		t.Error("the operator's credentials changed on restart")
	}
	if strings.Contains(second.NATS, "@") {
		t.Errorf("the displayed NATS URL %q carries credentials", second.NATS)
	}

	if nc, err := nats.Connect(second.NATS); err == nil {
		nc.Close()
		t.Fatal("anonymous NATS connection admitted")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous connection: %v, want an authorization violation", err)
	}

	data, err := os.ReadFile(second.NATSSubscriberFile)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(strings.TrimSpace(string(data)), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatalf("subscriber.url: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.Stream(context.Background(), bus.StreamAnnotations); err != nil {
		t.Fatalf("the subscriber cannot read the ANNOTATIONS stream: %v", err)
	}
	_ = nc.Publish(bus.SubjectAnnotationCreated, []byte("{}"))
	_ = nc.Flush()
	if !errors.Is(nc.LastError(), nats.ErrPermissionViolation) {
		t.Fatal("the subscriber published an event")
	}
}

func userinfo(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		t.Fatalf("NATS URL without credentials: %v", err)
	}
	return u.User.String()
}
