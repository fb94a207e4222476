// Command gradeline operates a running pipeline through NATS:
//
//	gradeline setup [--replicas N] [--max-bytes-scale F]
//	gradeline streams                          list streams and consumer lag
//	gradeline replay STREAM [--consumer NAME] [--since 2h | --since 2026-11-25T10:00:00Z]
//	gradeline regrade --model NAME@VERSION [--since 24h] [--tag TAG] [--run ID]
//	gradeline nats-config [--bcrypt]           the nats-server users and permissions
//	gradeline admin grant|revoke USER          give or take the admin role
//
// replay makes the durable consumers of STREAM (all of them, or the one
// named) deliver the stream again from the start or from a time. The
// services pick the replay up while running; their writes are keyed by
// event id, so events already stored are not stored twice.
//
// setup creates or updates every stream of the bus table, the image
// bucket and the model state bucket (bus.EnsureStreams): the deploy step
// before the services start,
// and again after an upgrade that changes the table. It is the only writer
// of the streams' settings: the services' NATS users may not create or
// update a stream, and a service started before it waits for its streams
// (not ready, logging "streams missing: run `gradeline setup`") and ensures
// only the durable consumers it owns. It is idempotent. The replicas
// default to GRADELINE_REPLICAS (1; 3 on a cluster). docker-compose.yml
// runs it as the one-shot service setup, deploy/k8s as the Job
// gradeline-setup, and the local stack does the same at its start.
//
// regrade runs the images submitted in a period (from the IMAGES stream
// and the image bucket) through another model version in this process,
// beside the serving replicas, which it never touches. Each result is a
// grade.shadow event on the REGRADES stream, stored by analytics, so
// GET /api/v1/stats/agreement?model=NAME&a=SERVED&b=VERSION compares the
// two versions per label; the command prints the same comparison. The
// model comes from GRADELINE_MODELS_DIR (and the built-in models), with
// ONNXRUNTIME_LIB, as the inference service loads them. With --tag it
// runs instead the catalogue images carrying the tag, of every owner
// (with --since: only those catalogued since then), listed a page at a
// time by the annotator and read from the image bucket, each compared with
// the latest completed grade its owner got from the version the inference
// service serves now; progress is printed page by page, and a tag that no
// image carries is an error.
//
// nats-config prints the authorization block of a nats-server configuration
// with every NATS user and its permissions, derived from the bus table.
// By default the passwords are references to the environment variables
// NATS_<USER>_PASSWORD, resolved by the server at start (the file holds no
// secret: deploy/k8s and docker-compose.yml use it so); with --bcrypt they
// are read from those variables now and written as bcrypt hashes.
//
// admin grant USER gives a registered user the admin role (stored on the
// user record in MongoDB), which lets them see every user's statistics
// (GET /api/v1/stats/...?all=1); admin revoke USER takes it back. Both take
// effect on the user's next request, without a new login.
//
// The CLI connects as the operator: NATS_URL, or else the URL local mode
// wrote to $GRADELINE_DATA_DIR/nats/admin.url (default ./data); for admin,
// MONGO_URI (database GRADELINE_MONGO_DB, default gradeline), or else the
// URI local mode wrote to $GRADELINE_DATA_DIR/mongo/uri.
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
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"golang.org/x/crypto/bcrypt"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/internal/mongouri"
	"github.com/gradeline/gradeline/deploy/internal/natscreds"
	"github.com/gradeline/gradeline/ingest"
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
  gradeline setup [--replicas N] [--max-bytes-scale F]
  gradeline streams
  gradeline replay STREAM [--consumer NAME] [--since DURATION|RFC3339]
  gradeline regrade --model NAME@VERSION [--since DURATION|RFC3339] [--tag TAG] [--run ID]
  gradeline nats-config [--bcrypt]
  gradeline admin grant|revoke USER
environment: NATS_URL (default: the operator URL in $GRADELINE_DATA_DIR/nats/admin.url,
written by local mode; GRADELINE_DATA_DIR defaults to ./data); for admin: MONGO_URI
(default: the URI in $GRADELINE_DATA_DIR/mongo/uri, written by local mode) and
GRADELINE_MONGO_DB (default gradeline)`

func run(ctx context.Context, args []string, out io.Writer, now time.Time) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	if args[0] == "nats-config" {
		return natsConfig(args[1:], out)
	}
	if args[0] == "admin" {
		return adminRole(ctx, args[1:], out)
	}
	switch args[0] {
	case "setup":
		return setup(ctx, args[1:], out)
	case "regrade":
		return regrade(ctx, args[1:], out, now)
	case "streams":
		js, closeConn, err := connect(ctx)
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
		js, closeConn, err := connect(ctx)
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

// setup runs `setup`: the streams and the image bucket of the bus table,
// created or brought to the table's settings by the operator.
func setup(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	replicas := fs.Int("replicas", 0, "replicas of every stream and the image bucket (default: GRADELINE_REPLICAS, else 1)")
	scale := fs.Float64("max-bytes-scale", 1, "multiplies the size bound of every stream")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return fmt.Errorf("setup: %v\n%s", err, usage)
	}
	if *replicas == 0 {
		n, err := bus.ReplicasFromEnv()
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		*replicas = n
	}
	js, closeConn, err := connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn()
	opt := bus.TopologyOptions{Replicas: *replicas, MaxBytesScale: *scale}
	if err := bus.EnsureStreams(ctx, js, opt); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	for _, st := range bus.Streams {
		fmt.Fprintf(out, "stream %s (%d replicas)\n", st.Name, *replicas)
	}
	fmt.Fprintf(out, "object store %s\n", bus.ImageBucket)
	fmt.Fprintf(out, "key-value bucket %s\n", bus.ModelStateBucket)
	fmt.Fprintln(out, "the services create their own durable consumers at start")
	return nil
}

// dataDir is GRADELINE_DATA_DIR, default ./data as in local mode.
func dataDir() string {
	if dir := os.Getenv("GRADELINE_DATA_DIR"); dir != "" {
		return dir
	}
	return "data"
}

// storeURI is MONGO_URI, else the URI local mode wrote for its embedded store.
func storeURI() (string, error) {
	if u := os.Getenv("MONGO_URI"); u != "" {
		return u, nil
	}
	u, err := mongouri.Read(dataDir())
	if err != nil {
		return "", fmt.Errorf("no MONGO_URI and no local stack's store URI: %w (start `make run`, or set MONGO_URI)", err)
	}
	return u, nil
}

// adminRole runs `admin grant|revoke USER`: the admin role on the user
// record, which the edge reads at every ?all=1 statistics request.
func adminRole(ctx context.Context, args []string, out io.Writer) error {
	if len(args) != 2 || (args[0] != "grant" && args[0] != "revoke") || strings.HasPrefix(args[1], "-") {
		return errors.New("admin: want `admin grant USER` or `admin revoke USER`\n" + usage)
	}
	grant, user := args[0] == "grant", args[1]
	uri, err := storeURI()
	if err != nil {
		return err
	}
	db := os.Getenv("GRADELINE_MONGO_DB")
	if db == "" {
		db = ingest.DefaultDatabase
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(10 * time.Second))
	if err != nil {
		return fmt.Errorf("admin: connect to MongoDB: %w", err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	changed, err := ingest.SetRole(ctx, client.Database(db), user, ingest.RoleAdmin, grant)
	if errors.Is(err, ingest.ErrNoUser) {
		return fmt.Errorf("admin %s: %w (usernames are those of /api/v1/auth/register; database %s)", args[0], err, db)
	}
	if err != nil {
		return fmt.Errorf("admin %s: %w (is the stack running? set MONGO_URI)", args[0], err)
	}
	switch {
	case grant && changed:
		fmt.Fprintf(out, "granted admin to %s\n", user)
	case grant:
		fmt.Fprintf(out, "%s is already an admin\n", user)
	case changed:
		fmt.Fprintf(out, "revoked admin from %s\n", user)
	default:
		fmt.Fprintf(out, "%s was not an admin\n", user)
	}
	return nil
}

// operatorURL is NATS_URL, else the operator URL of local mode.
func operatorURL() (string, error) {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u, nil
	}
	u, err := natscreds.AdminURL(dataDir())
	if err != nil {
		return "", fmt.Errorf("no NATS_URL and no local stack's operator URL: %w (start `make run`, or set NATS_URL)", err)
	}
	return u, nil
}

func natsConfig(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("nats-config", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	hash := fs.Bool("bcrypt", false, "read the passwords from NATS_<USER>_PASSWORD now and write bcrypt hashes")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("nats-config: %w\n%s", err, usage)
	}
	var password func(string) string
	if *hash {
		hashes := map[string]string{}
		for _, u := range bus.Users() {
			pw := os.Getenv(bus.PasswordEnv(u))
			if pw == "" {
				return fmt.Errorf("nats-config --bcrypt: %s is not set", bus.PasswordEnv(u))
			}
			h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
			if err != nil {
				return fmt.Errorf("nats-config: %w", err)
			}
			hashes[u] = string(h)
		}
		password = func(u string) string { return hashes[u] }
	}
	_, err := io.WriteString(out, bus.NATSServerAuthConfig(password))
	return err
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

func connect(ctx context.Context) (jetstream.JetStream, func(), error) {
	url, err := operatorURL()
	if err != nil {
		return nil, nil, err
	}
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
