//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package ingest

import "net"

// acceptQueued is not available here: connections still in the accept
// queue at shutdown are reset when the listener closes.
func acceptQueued(net.Listener) []net.Conn { return nil }

// hasPending cannot tell here: every connection is kept.
func hasPending(net.Conn) bool { return true }
