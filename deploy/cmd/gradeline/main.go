// Command gradeline operates a running pipeline through NATS:
//
//	gradeline streams                          list streams and consumer lag
//	gradeline replay STREAM [--consumer NAME] [--since 2h | --since 2026-11-25T10:00:00Z]
//
// replay makes the durable consumers of STREAM (all of them, or the one
// named) deliver the stream again from the start or from a time. The
// services pick the replay up while running; their writes are keyed by
// event id, so events already stored are not stored twice.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, time.Now()); err != nil {
		fmt.Fprintln(os.Stderr, "gradeline:", err)
		os.Exit(2)
	}
}

const usage = `usage:
  gradeline streams
  gradeline replay STREAM [--consumer NAME] [--since DURATION|RFC3339]
environment: NATS_URL (default nats://127.0.0.1:4222)`

func run(ctx context.Context, args []string, out io.Writer, now time.Time) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	url := os.Getenv("NATS_URL")
	if url == "" {
		url = "nats://127.0.0.1:4222"
	}
	switch args[0] {
	case "streams":
		js, closeConn, err := connect(ctx, url)
		if err != nil {
			return err
		}
		defer closeConn()
		return listStreams(ctx, js, out)
	case "replay":
		fs := flag.NewFlagSet("replay", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		consumer := fs.String("consumer", "", "durable consumer to replay into (default: every consumer of the stream)")
		since := fs.String("since", "", "replay from this long ago (2h) or this time (RFC 3339); default: from the start")
		if len(args) < 2 || strings.HasPrefix(args[1], "-") {
			return errors.New("replay: name a stream\n" + usage)
		}
		if err := fs.Parse(args[2:]); err != nil {
			return fmt.Errorf("replay: %w\n%s", err, usage)
		}
		specs, err := replayTargets(args[1], *consumer)
		if err != nil {
			return err
		}
		from, err := parseSince(*since, now)
		if err != nil {
			return err
		}
		js, closeConn, err := connect(ctx, url)
		if err != nil {
			return err
		}
		defer closeConn()
		for _, spec := range specs {
			if err := bus.Replay(ctx, js, spec, from); err != nil {
				return err
			}
			what := "from the start"
			if !from.IsZero() {
				what = "from " + from.Format(time.RFC3339)
			}
			fmt.Fprintf(out, "replaying %s into consumer %s %s\n", spec.Stream, spec.Durable, what)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

// replayTargets resolves a stream name (case-insensitive) and an optional
// consumer to the table's durable consumers.
func replayTargets(stream, consumer string) ([]bus.ConsumerSpec, error) {
	stream = strings.ToUpper(stream)
	specs := bus.ConsumersOf(stream)
	if len(specs) == 0 {
		var names []string
		for _, s := range bus.Streams {
			if len(bus.ConsumersOf(s.Name)) > 0 {
				names = append(names, strings.ToLower(s.Name))
			}
		}
		return nil, fmt.Errorf("no consumers on stream %q; streams: %s", stream, strings.Join(names, ", "))
	}
	if consumer == "" {
		return specs, nil
	}
	var names []string
	for _, s := range specs {
		if s.Durable == consumer {
			return []bus.ConsumerSpec{s}, nil
		}
		names = append(names, s.Durable)
	}
	return nil, fmt.Errorf("stream %s has no consumer %q; it has: %s", stream, consumer, strings.Join(names, ", "))
}

// parseSince reads "" (from the start), a duration before now, or a time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--since %s: must be positive", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want a duration like 2h or a time like 2026-11-25T10:00:00Z", s)
	}
	return t, nil
}

func connect(ctx context.Context, url string) (jetstream.JetStream, func(), error) {
	nc, js, err := bus.Connect(ctx, url, "gradeline-cli", nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (is the stack running? set NATS_URL)", err)
	}
	return js, nc.Close, nil
}

func listStreams(ctx context.Context, js jetstream.JetStream, out io.Writer) error {
	for _, s := range bus.Streams {
		st, err := js.Stream(ctx, s.Name)
		if err != nil {
			fmt.Fprintf(out, "%-12s missing (%v)\n", s.Name, err)
			continue
		}
		info, err := st.Info(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%-12s %8d messages %10d bytes  first %s\n", s.Name, info.State.Msgs, info.State.Bytes, info.State.FirstTime.Format(time.RFC3339))
		for _, c := range bus.ConsumersOf(s.Name) {
			ci, err := js.Consumer(ctx, s.Name, c.Durable)
			if err != nil {
				fmt.Fprintf(out, "  %-24s missing\n", c.Durable)
				continue
			}
			i, err := ci.Info(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "  %-24s pending %d, unacked %d, redelivered %d\n", c.Durable, i.NumPending, i.NumAckPending, i.NumRedelivered)
		}
	}
	return nil
}
