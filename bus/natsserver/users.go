package natsserver

import (
	"fmt"
	"strings"

	"github.com/gradeline/gradeline/bus"
	"github.com/nats-io/nats-server/v2/server"
)

// Users converts credentials into the server's users, each with the
// permissions of its role in the contract's access table
// (bus.PermissionsOf). Every user of bus.Users must be given, so a stack
// never runs with a role missing.
func Users(creds []bus.Credential) ([]*server.User, error) {
	have := map[string]bool{}
	var out []*server.User
	for _, c := range creds {
		p, ok := bus.PermissionsOf(c.User)
		if !ok {
			return nil, fmt.Errorf("natsserver: NATS user %q has no role (want one of %s)", c.User, strings.Join(bus.Users(), ", "))
		}
		if c.Password == "" {
			return nil, fmt.Errorf("natsserver: NATS user %q has no password", c.User)
		}
		have[c.User] = true
		perms := &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: p.Publish.Allow, Deny: p.Publish.Deny},
			Subscribe: &server.SubjectPermission{Allow: p.Subscribe.Allow, Deny: p.Subscribe.Deny},
		}
		if p.Responses {
			perms.Response = &server.ResponsePermission{MaxMsgs: 1, Expires: bus.ResponseExpiry}
		}
		out = append(out, &server.User{Username: c.User, Password: c.Password, Permissions: perms})
	}
	for _, u := range bus.Users() {
		if !have[u] {
			return nil, fmt.Errorf("natsserver: no credential for NATS user %q", u)
		}
	}
	return out, nil
}
