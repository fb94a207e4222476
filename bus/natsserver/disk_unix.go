//go:build linux || darwin

package natsserver

import "syscall"

// FreeBytes is the space available to unprivileged users on the
// filesystem holding dir.
func FreeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), nil
}
