// Command healthprobe is the container health check of the gradeline
// images: distroless images have no shell, curl or wget, so Docker's
// HEALTHCHECK and compose's healthcheck run this instead.
//
//	healthprobe URL
//
// It exits 0 when a GET of URL answers 2xx within the timeout, 1 otherwise
// (and 2 on bad usage), printing the reason to stderr.
//
// The Dockerfile builds this single file outside any module, so it must only
// import the standard library.
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"
)

// timeout stays below the health checks' own timeout (3s), so the probe
// reports why it failed instead of being killed.
const timeout = 2 * time.Second

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stderr))
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: healthprobe http://HOST:PORT/PATH")
		return 2
	}
	u, err := url.Parse(args[0])
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "healthprobe: %q is not an http(s) URL\n", args[0])
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		fmt.Fprintf(stderr, "healthprobe: %v\n", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "healthprobe: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	// Read a little of the body so the reason of a 503 reaches the log.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(stderr, "healthprobe: %s answered %s: %s\n", u, resp.Status, body)
		return 1
	}
	return 0
}
