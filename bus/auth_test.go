package bus_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/natsserver"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// authStack is an embedded server that admits only the users of the
// permission table, with the streams and the image bucket created by the
// operator (EnsureStreams, what `gradeline setup` does).
type authStack struct {
	ns    *server.Server
	creds map[string]bus.Credential
}

func startAuthNATS(t *testing.T) *authStack {
	t.Helper()
	st := &authStack{creds: map[string]bus.Credential{}}
	var creds []bus.Credential
	for _, u := range bus.Users() {
		pw, err := bus.NewPassword()
		if err != nil {
			t.Fatal(err)
		}
		st.creds[u] = bus.Credential{User: u, Password: pw}
		creds = append(creds, st.creds[u])
	}
	ns, err := natsserver.Start(natsserver.Config{Dir: t.TempDir(), Users: creds})
	if err != nil {
		t.Fatal(err)
	}
	st.ns = ns
	t.Cleanup(ns.Shutdown)
	_, js := st.connect(t, bus.UserAdmin)
	if err := bus.EnsureStreams(context.Background(), js, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	return st
}

func (st *authStack) url(t *testing.T, user string) string {
	t.Helper()
	u, err := bus.URLWithUser(st.ns.ClientURL(), st.creds[user])
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// connect dials as user the way every service does (bus.Connect).
func (st *authStack) connect(t *testing.T, user string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, js, err := bus.Connect(context.Background(), st.url(t, user), "auth-test-"+user, nil)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc, js
}

// publishAllowed publishes one message on subject as user on a fresh
// connection and reports whether the server accepted it: a denied publish
// comes back as a permissions violation before the flush's PONG.
func (st *authStack) publishAllowed(t *testing.T, user, subject string) bool {
	t.Helper()
	nc, err := nats.Connect(st.url(t, user), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish(subject, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return !errors.Is(nc.LastError(), nats.ErrPermissionViolation)
}

// subscribeAllowed likewise for a subscription.
func (st *authStack) subscribeAllowed(t *testing.T, user, subject string) bool {
	t.Helper()
	nc, err := nats.Connect(st.url(t, user), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.SubscribeSync(subject); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return !errors.Is(nc.LastError(), nats.ErrPermissionViolation)
}

func TestAnonymousAndWrongPasswordRefused(t *testing.T) {
	st := startAuthNATS(t)
	tests := []struct{ name, url string }{
		{"anonymous", st.ns.ClientURL()},
		{"wrong password", strings.Replace(st.url(t, bus.UserIngest), st.creds[bus.UserIngest].Password, "guess", 1)},
		{"unknown user", strings.Replace(st.url(t, bus.UserIngest), "ingest:", "mallory:", 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := nats.Connect(tt.url)
			if err == nil {
				nc.Close()
				t.Fatal("connected")
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Fatalf("err = %v, want an authorization violation", err)
			}
		})
	}
}

func TestSubscriberReadsStreamsAndNothingElse(t *testing.T) {
	st := startAuthNATS(t)
	ctx := context.Background()
	_, annotatorJS := st.connect(t, bus.UserAnnotator)
	if err := bus.EnsureService(ctx, annotatorJS, bus.UserAnnotator, bus.TopologyOptions{}); err != nil {
		t.Fatal(err)
	}
	_, ingestJS := st.connect(t, bus.UserIngest)
	ev := newAnnotation("ada")
	if _, err := bus.Publish(ctx, ingestJS, ev); err != nil {
		t.Fatal(err)
	}

	_, js := st.connect(t, bus.UserSubscriber)
	cons, err := js.CreateOrUpdateConsumer(ctx, bus.StreamAnnotations, jetstream.ConsumerConfig{
		Durable: "downstream", AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		t.Fatalf("subscriber creates its durable consumer: %v", err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for m := range batch.Messages() {
		e, err := bus.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e.EventMeta().ID)
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatalf("subscriber acks: %v", err)
		}
	}
	if len(got) != 1 || got[0] != ev.ID {
		t.Fatalf("subscriber read %v, want [%s]", got, ev.ID)
	}
	if err := js.DeleteConsumer(ctx, bus.StreamAnnotations, "downstream"); err != nil {
		t.Fatalf("subscriber deletes its own consumer: %v", err)
	}

	denied := []string{
		bus.SubjectAnnotationCreated,
		bus.SubjectGradeCompleted,
		bus.SubjectDeadLetterPrefix + "annotator",
		bus.SvcImagesGet, bus.SvcGradesGet, bus.SvcAnnotationsList,
		"$JS.API.STREAM.DELETE." + bus.StreamAnnotations,
		"$JS.API.STREAM.PURGE." + bus.StreamAnnotations,
		"$JS.API.STREAM.UPDATE." + bus.StreamAnnotations,
		"$JS.API.STREAM.CREATE.EVIL",
		"$JS.API.STREAM.MSG.DELETE." + bus.StreamAnnotations,
		"$JS.API.CONSUMER.CREATE." + bus.StreamAnnotations, // legacy: name in the body
		"$JS.API.CONSUMER.CREATE." + bus.StreamAnnotations + ".annotator",
		"$JS.API.CONSUMER.CREATE." + bus.StreamAnnotations + ".annotator." + bus.SubjectAnnotationCreated,
		"$JS.API.CONSUMER.DURABLE.CREATE." + bus.StreamAnnotations + ".annotator",
		"$JS.API.CONSUMER.MSG.NEXT." + bus.StreamAnnotations + ".annotator",
		"$JS.API.CONSUMER.DELETE." + bus.StreamAnnotations + ".annotator",
		"$JS.API.STREAM.INFO." + bus.ObjectStream(),
		"$JS.API.DIRECT.GET." + bus.ObjectStream(),
		"$O." + bus.ImageBucket + ".M.x",
		"$JS.API.STREAM.INFO." + bus.StreamDeadLetter,
	}
	for _, subj := range denied {
		if st.publishAllowed(t, bus.UserSubscriber, subj) {
			t.Errorf("subscriber may publish to %s", subj)
		}
	}
	for _, subj := range []string{"gradeline.svc.>", bus.SvcImagesGet, "$SRV.>", ">", bus.SubjectAnnotationCreated, "_INBOX.ingest.>"} {
		if st.subscribeAllowed(t, bus.UserSubscriber, subj) {
			t.Errorf("subscriber may subscribe to %s", subj)
		}
	}
	// And the real calls fail while the stream and the service's consumer stay.
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := js.DeleteStream(cctx, bus.StreamAnnotations); err == nil {
		t.Error("subscriber deleted a stream")
	}
	if _, err := bus.Request[bus.Page[bus.Annotation]](cctx, mustConn(t, st, bus.UserSubscriber), bus.SvcAnnotationsList, bus.AnnotationsQuery{}); err == nil {
		t.Error("subscriber called a query service")
	}
	_, admin := st.connect(t, bus.UserAdmin)
	if _, err := admin.Stream(ctx, bus.StreamAnnotations); err != nil {
		t.Fatalf("stream gone: %v", err)
	}
	if _, err := admin.Consumer(ctx, bus.StreamAnnotations, bus.ConsumerAnnotator.Durable); err != nil {
		t.Fatalf("annotator consumer gone: %v", err)
	}
}

func mustConn(t *testing.T, st *authStack, user string) *nats.Conn {
	nc, _ := st.connect(t, user)
	return nc
}

// TestServicesWithTheirOwnUsers runs each role's part of the pipeline with
// its own user: find the streams and ensure its own consumers, publish,
// consume its consumers, answer and call queries, the object store and
// the KV buckets.
func TestServicesWithTheirOwnUsers(t *testing.T) {
	st := startAuthNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conns := map[string]*nats.Conn{}
	jss := map[string]jetstream.JetStream{}
	for _, a := range bus.Access {
		conns[a.User], jss[a.User] = st.connect(t, a.User)
		if err := bus.EnsureService(ctx, jss[a.User], a.User, bus.TopologyOptions{MaxBytesScale: 0.01}); err != nil {
			t.Fatalf("%s finds its streams and ensures its consumers: %v", a.User, err)
		}
	}
	// The streams and the image bucket are the operator's: no service may
	// create or change one, by the API subjects or by the real calls.
	for _, a := range bus.Access {
		for _, s := range append(bus.EventStreams(), bus.StreamDeadLetter, bus.ObjectStream()) {
			for _, op := range []string{"CREATE", "UPDATE", "DELETE", "PURGE"} {
				if op == "PURGE" && s == bus.ObjectStream() && a.Objects == bus.ObjectsReadWrite {
					continue // the edge removes images
				}
				if st.publishAllowed(t, a.User, "$JS.API.STREAM."+op+"."+s) {
					t.Errorf("%s may %s stream %s", a.User, op, s)
				}
			}
		}
	}
	// And the real call fails (a denied request goes unanswered: bounded).
	cctx, ccancel := context.WithTimeout(ctx, time.Second)
	if _, infJS := st.connect(t, bus.UserInference); bus.EnsureStreams(cctx, infJS, bus.TopologyOptions{MaxBytesScale: 0.01}) == nil {
		t.Error("inference ran the operator's EnsureStreams")
	}
	ccancel()
	// A consumer's settings are its owner's alone: another service can
	// neither read nor rewrite them.
	for _, c := range bus.Consumers {
		for _, a := range bus.Access {
			if a.User == c.Owner() {
				continue
			}
			if st.publishAllowed(t, a.User, "$JS.API.CONSUMER.CREATE."+c.Stream+"."+c.Durable) {
				t.Errorf("%s may create or update %s's consumer %s", a.User, c.Owner(), c.Durable)
			}
		}
	}

	// ingest: the image bucket and the KV buckets, events, queries.
	images, err := bus.ImageStore(ctx, jss[bus.UserIngest])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := images.PutBytes(ctx, "img-1", []byte("pixels")); err != nil {
		t.Fatalf("ingest puts an image: %v", err)
	}
	if b, err := images.GetBytes(ctx, "img-1"); err != nil || string(b) != "pixels" {
		t.Fatalf("ingest reads the image: %q %v", b, err)
	}
	for _, b := range []string{bus.BucketLoginThrottle, bus.BucketRevokedTokens} {
		kv, err := jss[bus.UserIngest].CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b, TTL: time.Hour})
		if err != nil {
			t.Fatalf("ingest creates KV %s: %v", b, err)
		}
		if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
			t.Fatalf("ingest writes KV %s: %v", b, err)
		}
		if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value()) != "v" {
			t.Fatalf("ingest reads KV %s: %v", b, err)
		}
	}
	ann := newAnnotation("ada")
	if _, err := bus.Publish(ctx, jss[bus.UserIngest], ann); err != nil {
		t.Fatalf("ingest publishes: %v", err)
	}

	// inference reads the image and publishes a grade.
	infImages, err := bus.ImageStore(ctx, jss[bus.UserInference])
	if err != nil {
		t.Fatal(err)
	}
	if b, err := infImages.GetBytes(ctx, "img-1"); err != nil || string(b) != "pixels" {
		t.Fatalf("inference reads the image: %q %v", b, err)
	}
	grade := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: "g1", Model: "m", Label: "cat", Scores: map[string]float64{"cat": 1}}
	if _, err := bus.Publish(ctx, jss[bus.UserInference], grade); err != nil {
		t.Fatalf("inference publishes a grade: %v", err)
	}
	// A result due at a callback_url: inference publishes it in GRADES and
	// on gradeline.callbacks.due, and the edge reads it from its consumer
	// there, and from the draining one an older edge left in GRADES.
	withURL := &bus.GradeCompleted{Meta: bus.NewMeta(bus.TypeGradeCompleted), GradeID: "g2", Model: "m", Label: "cat",
		Scores: map[string]float64{"cat": 1}, CallbackURL: "https://receiver.example/hook"}
	inGrades, due := bus.SplitCallback(withURL)
	if errs := bus.PublishAll([]context.Context{ctx, ctx}, jss[bus.UserInference], []bus.Event{inGrades, due}); errs[0] != nil || errs[1] != nil {
		t.Fatalf("inference publishes a result due at a callback: %v", errs)
	}
	_, adminJS := st.connect(t, bus.UserAdmin)
	legacy := bus.ConsumerIngestCallbacksLegacy
	if _, err := adminJS.CreateOrUpdateConsumer(ctx, legacy.Stream, legacy.Config()); err != nil {
		t.Fatal(err)
	}
	for _, spec := range []bus.ConsumerSpec{bus.ConsumerIngestCallbacks, legacy} {
		cons, err := jss[bus.UserIngest].Consumer(ctx, spec.Stream, spec.Durable)
		if err != nil {
			t.Fatalf("ingest finds %s/%s: %v", spec.Stream, spec.Durable, err)
		}
		m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("ingest reads %s/%s: %v", spec.Stream, spec.Durable, err)
		}
		if err := m.Ack(); err != nil {
			t.Fatalf("ingest acks on %s/%s: %v", spec.Stream, spec.Durable, err)
		}
	}

	// ingest tails the grades with an ordered consumer (Server-Sent
	// Events) from a sequence, and deletes it; it cannot pull from, or
	// delete, another service's durable on that stream.
	tail, err := jss[bus.UserIngest].OrderedConsumer(ctx, bus.StreamGrades, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.SubjectGradeCompleted, bus.SubjectGradeFailed},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy, OptStartSeq: 1, NamePrefix: "sse-test"})
	if err != nil {
		t.Fatalf("ingest creates an ordered consumer on %s: %v", bus.StreamGrades, err)
	}
	if m, err := tail.Next(jetstream.FetchMaxWait(10 * time.Second)); err != nil || !bytes.Contains(m.Data(), []byte(grade.ID)) {
		t.Fatalf("ingest tails the grade: %v", err)
	}
	if err := jss[bus.UserIngest].DeleteConsumer(ctx, bus.StreamGrades, tail.CachedInfo().Name); err != nil {
		t.Fatalf("ingest deletes its ordered consumer: %v", err)
	}
	for _, subj := range []string{"$JS.API.CONSUMER.MSG.NEXT.GRADES." + bus.ConsumerAnnotatorGrades.Durable,
		"$JS.API.CONSUMER.DELETE.GRADES." + bus.ConsumerAnalyticsGrades.Durable,
		// Results are inference's to publish.
		bus.SubjectGradeCompleted, bus.SubjectGradeFailed} {
		if st.publishAllowed(t, bus.UserIngest, subj) {
			t.Errorf("ingest may publish %s", subj)
		}
	}
	// It records the grades it answers before their result.
	pend := &bus.GradePending{Meta: bus.NewMeta(bus.TypeGradePending), GradeID: "g2", ImageID: "img-1", Owner: "ann",
		Model: "m", SubmittedAt: time.Now()}
	if _, err := bus.Publish(ctx, jss[bus.UserIngest], pend); err != nil {
		t.Fatalf("ingest publishes grade.pending: %v", err)
	}

	// annotator and analytics consume their own consumers and dead-letter.
	for _, c := range []bus.ConsumerSpec{bus.ConsumerAnnotator, bus.ConsumerAnalyticsAnnotations, bus.ConsumerAnnotatorGrades, bus.ConsumerAnalyticsGrades} {
		user := c.Owner()
		cons, err := jss[user].Consumer(ctx, c.Stream, c.Durable)
		if err != nil {
			t.Fatal(err)
		}
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatalf("%s acks on %s: %v", user, c.Durable, err)
			}
		}
		if n != 1 || batch.Error() != nil {
			t.Fatalf("%s read %d messages from %s (%v)", user, n, c.Durable, batch.Error())
		}
		dl := &bus.DeadLetter{Meta: bus.NewMeta(bus.TypeDeadLetter), Stream: c.Stream, Consumer: c.Durable, Subject: c.FilterSubjects[0], Reason: "test", Data: []byte("{}")}
		if _, err := bus.Publish(ctx, jss[user], dl); err != nil {
			t.Fatalf("%s dead-letters for %s: %v", user, c.Durable, err)
		}
	}

	// Each query service answers; ingest calls them. Replies reach only the caller.
	tap, err := nats.Connect(st.url(t, bus.UserSubscriber), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	snoop, err := tap.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := tap.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct{ user, subject string }{
		{bus.UserAnnotator, bus.SvcAnnotationsList}, {bus.UserInference, bus.SvcModelsList}, {bus.UserAnalytics, bus.SvcIrisStats},
	} {
		svc, err := bus.AddService(conns[q.user], q.user, "0.0.1", "test", bus.Endpoint{Name: "q", Subject: q.subject,
			Handler: bus.Handle(nil, time.Second, func(context.Context, struct{}) (string, error) { return q.user, nil })})
		if err != nil {
			t.Fatalf("%s answers %s: %v", q.user, q.subject, err)
		}
		defer func() { _ = svc.Stop() }()
		if err := conns[q.user].Flush(); err != nil {
			t.Fatal(err)
		}
		if errors.Is(conns[q.user].LastError(), nats.ErrPermissionViolation) {
			t.Fatalf("%s: %v", q.user, conns[q.user].LastError())
		}
		got, err := bus.Request[string](ctx, conns[bus.UserIngest], q.subject, struct{}{})
		if err != nil || got != q.user {
			t.Fatalf("ingest calls %s: %q %v", q.subject, got, err)
		}
	}
	if err := tap.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := snoop.Pending(); n != 0 {
		t.Fatalf("the subscriber read %d replies meant for ingest", n)
	}

	// The probe tells allowed from denied (else the denials below prove nothing).
	if !st.publishAllowed(t, bus.UserIngest, bus.SubjectIrisMeasured) || !st.subscribeAllowed(t, bus.UserAnnotator, bus.SvcImagesGet) {
		t.Fatal("an allowed publish or subscription reads as denied")
	}
	// What the services may not do.
	tests := []struct{ user, subject string }{
		{bus.UserIngest, "$JS.API.STREAM.DELETE." + bus.StreamAnnotations},
		{bus.UserIngest, "$JS.API.STREAM.PURGE." + bus.StreamAnnotations},
		{bus.UserIngest, "$JS.API.CONSUMER.DELETE." + bus.StreamAnnotations + "." + bus.ConsumerAnnotator.Durable},
		{bus.UserIngest, "$JS.API.CONSUMER.MSG.NEXT." + bus.StreamAnnotations + "." + bus.ConsumerAnnotator.Durable},
		{bus.UserIngest, "$JS.ACK." + bus.StreamAnnotations + "." + bus.ConsumerAnnotator.Durable + ".1.1.1.1.1"},
		{bus.UserIngest, bus.SubjectGradeCompleted},
		{bus.UserInference, bus.SubjectAnnotationCreated},
		{bus.UserInference, "$O." + bus.ImageBucket + ".C.x"},
		{bus.UserInference, "$JS.API.STREAM.PURGE." + bus.ObjectStream()},
		{bus.UserInference, bus.SvcImagesGet},
		{bus.UserAnnotator, "$JS.API.CONSUMER.MSG.NEXT." + bus.StreamIris + "." + bus.ConsumerAnalyticsIris.Durable},
		{bus.UserAnnotator, bus.SubjectAnnotationCreated},
		{bus.UserAnnotator, "$JS.API.STREAM.INFO." + bus.ObjectStream() + ".x"},
		{bus.UserAnnotator, "$JS.API.DIRECT.GET." + bus.ObjectStream()},
		{bus.UserAnalytics, bus.SvcGradesGet},
		{bus.UserAnalytics, "$JS.API.CONSUMER.MSG.NEXT." + bus.StreamAnnotations + "." + bus.ConsumerAnnotator.Durable},
		{bus.UserAnalytics, "$KV." + bus.BucketRevokedTokens + ".k"},
	}
	for _, tt := range tests {
		if st.publishAllowed(t, tt.user, tt.subject) {
			t.Errorf("%s may publish to %s", tt.user, tt.subject)
		}
	}
	for _, tt := range []struct{ user, subject string }{
		{bus.UserIngest, bus.SvcImagesGet}, {bus.UserIngest, "_INBOX.annotator.>"}, {bus.UserAnnotator, bus.SvcIrisStats},
		{bus.UserInference, bus.SubjectImageSubmitted}, {bus.UserAnalytics, "_INBOX.>"},
	} {
		if st.subscribeAllowed(t, tt.user, tt.subject) {
			t.Errorf("%s may subscribe to %s", tt.user, tt.subject)
		}
	}
}

// TestNATSServerAuthConfig loads the generated configuration with the
// server's own parser, starts a server from it and checks that the users
// and their permissions arrive: passwords from the environment.
func TestNATSServerAuthConfig(t *testing.T) {
	dir := t.TempDir()
	for _, u := range bus.Users() {
		t.Setenv(bus.PasswordEnv(u), "pw-"+u)
	}
	conf := "listen: 127.0.0.1:-1\njetstream { store_dir: " + strconv.Quote(filepath.Join(dir, "js")) + " }\n" +
		bus.NATSServerAuthConfig(nil)
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("server rejects the generated config: %v\n%s", err, conf)
	}
	if len(opts.Users) != len(bus.Users()) {
		t.Fatalf("%d users, want %d", len(opts.Users), len(bus.Users()))
	}
	for _, u := range opts.Users {
		want, _ := bus.PermissionsOf(u.Username)
		if u.Password != "pw-"+u.Username {
			t.Errorf("%s: password not taken from %s", u.Username, bus.PasswordEnv(u.Username))
		}
		if got := u.Permissions.Publish.Allow; len(got) != len(compact(want.Publish.Allow)) {
			t.Errorf("%s: %d publish allows, want %d", u.Username, len(got), len(compact(want.Publish.Allow)))
		}
		if (u.Permissions.Response != nil) != want.Responses {
			t.Errorf("%s: allow_responses %v, want %v", u.Username, u.Permissions.Response != nil, want.Responses)
		}
	}
	opts.NoSigs = true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("server not ready")
	}
	if nc, err := nats.Connect(ns.ClientURL()); err == nil {
		nc.Close()
		t.Fatal("anonymous connection admitted")
	}
	u, _ := bus.URLWithUser(ns.ClientURL(), bus.Credential{User: bus.UserSubscriber, Password: "pw-" + bus.UserSubscriber})
	nc, err := nats.Connect(u, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.Publish(bus.SubjectAnnotationCreated, []byte("{}"))
	_ = nc.Flush()
	if !errors.Is(nc.LastError(), nats.ErrPermissionViolation) {
		t.Fatal("the subscriber published an event under the generated config")
	}
	// A literal (here a bcrypt-looking) password is quoted, not read as a variable.
	if c := bus.NATSServerAuthConfig(func(string) string { return "$2a$11$abc" }); !bytes.Contains([]byte(c), []byte(`password: "$2a$11$abc"`)) {
		t.Fatal("literal password not quoted")
	}
}

func compact(s []string) []string {
	var out []string
	for i, v := range s {
		if i == 0 || s[i-1] != v {
			out = append(out, v)
		}
	}
	return out
}
