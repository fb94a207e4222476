//go:build !linux && !darwin

package natsserver

import "errors"

// FreeBytes is not implemented on this platform.
func FreeBytes(string) (uint64, error) {
	return 0, errors.New("natsserver: free space unknown on this platform")
}
