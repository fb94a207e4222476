//go:build linux || darwin || freebsd || netbsd || openbsd

package ingest

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// acceptQueued accepts, without waiting, every connection in ln's accept
// queue. The listening socket is non-blocking (Go's runtime sets it so):
// accept answers EAGAIN once the queue is empty.
func acceptQueued(ln net.Listener) []net.Conn {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var fds []int
	_ = rc.Control(func(fd uintptr) {
		for {
			nfd, _, err := syscall.Accept(int(fd))
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.ECONNABORTED) {
				continue
			}
			if err != nil {
				return // EAGAIN: the queue is empty
			}
			fds = append(fds, nfd)
		}
	})
	conns := make([]net.Conn, 0, len(fds))
	for _, fd := range fds {
		f := os.NewFile(uintptr(fd), "")
		c, err := net.FileConn(f) // duplicates the descriptor
		_ = f.Close()
		if err == nil {
			conns = append(conns, c)
		}
	}
	return conns
}

// hasPending reports whether c has bytes waiting to be read (and true
// when that cannot be told, so that the connection is kept).
func hasPending(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	pending := true
	var buf [1]byte
	_ = rc.Control(func(fd uintptr) {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		pending = err != nil && !errors.Is(err, syscall.EAGAIN) || n > 0
	})
	return pending
}
