package bus

import (
	"bytes"
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// authStack is an embedded server that admits only the users of the
// permission table, with the topology applied by the operator.
type authStack struct {
	ns    *server.Server
	creds map[string]Credential
}

func startAuthNATS(t *testing.T) *authStack {
	t.Helper()
	st := &authStack{creds: map[string]Credential{}}
	var creds []Credential
	for _, u := range Users() {
		pw, err := NewPassword()
		if err != nil {
			t.Fatal(err)
		}
		st.creds[u] = Credential{User: u, Password: pw}
		creds = append(creds, st.creds[u])
	}
	ns, err := StartEmbedded(EmbeddedConfig{Dir: t.TempDir(), Users: creds})
	if err != nil {
		t.Fatal(err)
	}
	st.ns = ns
	t.Cleanup(ns.Shutdown)
	_, js := st.connect(t, UserAdmin)
	if err := EnsureTopology(context.Background(), js, TopologyOptions{MaxBytesScale: 0.01}); err != nil {
		t.Fatal(err)
	}
	return st
}

func (st *authStack) url(t *testing.T, user string) string {
	t.Helper()
	u, err := URLWithUser(st.ns.ClientURL(), st.creds[user])
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// connect dials as user the way every service does (bus.Connect).
func (st *authStack) connect(t *testing.T, user string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, js, err := Connect(context.Background(), st.url(t, user), "auth-test-"+user, nil)
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
		{"wrong password", strings.Replace(st.url(t, UserIngest), st.creds[UserIngest].Password, "guess", 1)},
		{"unknown user", strings.Replace(st.url(t, UserIngest), "ingest:", "mallory:", 1)},
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
	_, ingestJS := st.connect(t, UserIngest)
	ev := newAnnotation("ada")
	if _, err := Publish(ctx, ingestJS, ev); err != nil {
		t.Fatal(err)
	}

	_, js := st.connect(t, UserSubscriber)
	cons, err := js.CreateOrUpdateConsumer(ctx, StreamAnnotations, jetstream.ConsumerConfig{
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
		e, err := Decode(m.Data())
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
	if err := js.DeleteConsumer(ctx, StreamAnnotations, "downstream"); err != nil {
		t.Fatalf("subscriber deletes its own consumer: %v", err)
	}

	denied := []string{
		SubjectAnnotationCreated,
		SubjectGradeCompleted,
		SubjectDeadLetterPrefix + "annotator",
		SvcImagesGet, SvcGradesGet, SvcAnnotationsList,
		"$JS.API.STREAM.DELETE." + StreamAnnotations,
		"$JS.API.STREAM.PURGE." + StreamAnnotations,
		"$JS.API.STREAM.UPDATE." + StreamAnnotations,
		"$JS.API.STREAM.CREATE.EVIL",
		"$JS.API.STREAM.MSG.DELETE." + StreamAnnotations,
		"$JS.API.CONSUMER.CREATE." + StreamAnnotations, // legacy: name in the body
		"$JS.API.CONSUMER.CREATE." + StreamAnnotations + ".annotator",
		"$JS.API.CONSUMER.CREATE." + StreamAnnotations + ".annotator." + SubjectAnnotationCreated,
		"$JS.API.CONSUMER.DURABLE.CREATE." + StreamAnnotations + ".annotator",
		"$JS.API.CONSUMER.MSG.NEXT." + StreamAnnotations + ".annotator",
		"$JS.API.CONSUMER.DELETE." + StreamAnnotations + ".annotator",
		"$JS.API.STREAM.INFO." + ObjectStream(),
		"$JS.API.DIRECT.GET." + ObjectStream(),
		"$O." + ImageBucket + ".M.x",
		"$JS.API.STREAM.INFO." + StreamDeadLetter,
	}
	for _, subj := range denied {
		if st.publishAllowed(t, UserSubscriber, subj) {
			t.Errorf("subscriber may publish to %s", subj)
		}
	}
	for _, subj := range []string{"gradeline.svc.>", SvcImagesGet, "$SRV.>", ">", SubjectAnnotationCreated, "_INBOX.ingest.>"} {
		if st.subscribeAllowed(t, UserSubscriber, subj) {
			t.Errorf("subscriber may subscribe to %s", subj)
		}
	}
	// And the real calls fail while the stream and the service's consumer stay.
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := js.DeleteStream(cctx, StreamAnnotations); err == nil {
		t.Error("subscriber deleted a stream")
	}
	if _, err := Request[Page[Annotation]](cctx, mustConn(t, st, UserSubscriber), SvcAnnotationsList, AnnotationsQuery{}); err == nil {
		t.Error("subscriber called a query service")
	}
	_, admin := st.connect(t, UserAdmin)
	if _, err := admin.Stream(ctx, StreamAnnotations); err != nil {
		t.Fatalf("stream gone: %v", err)
	}
	if _, err := admin.Consumer(ctx, StreamAnnotations, ConsumerAnnotator.Durable); err != nil {
		t.Fatalf("annotator consumer gone: %v", err)
	}
}

func mustConn(t *testing.T, st *authStack, user string) *nats.Conn {
	nc, _ := st.connect(t, user)
	return nc
}

// TestServicesWithTheirOwnUsers runs each role's part of the pipeline with
// its own user: ensure the topology, publish, consume its consumers,
// answer and call queries, the object store and the KV buckets.
func TestServicesWithTheirOwnUsers(t *testing.T) {
	st := startAuthNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conns := map[string]*nats.Conn{}
	jss := map[string]jetstream.JetStream{}
	for _, a := range Access {
		conns[a.User], jss[a.User] = st.connect(t, a.User)
		if err := EnsureTopology(ctx, jss[a.User], TopologyOptions{MaxBytesScale: 0.01}); err != nil {
			t.Fatalf("%s ensures the topology: %v", a.User, err)
		}
	}

	// ingest: the image bucket and the KV buckets, events, queries.
	images, err := ImageStore(ctx, jss[UserIngest], 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := images.PutBytes(ctx, "img-1", []byte("pixels")); err != nil {
		t.Fatalf("ingest puts an image: %v", err)
	}
	if b, err := images.GetBytes(ctx, "img-1"); err != nil || string(b) != "pixels" {
		t.Fatalf("ingest reads the image: %q %v", b, err)
	}
	for _, b := range []string{BucketLoginThrottle, BucketRevokedTokens} {
		kv, err := jss[UserIngest].CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b, TTL: time.Hour})
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
	if _, err := Publish(ctx, jss[UserIngest], ann); err != nil {
		t.Fatalf("ingest publishes: %v", err)
	}

	// inference reads the image and publishes a grade.
	infImages, err := ImageStore(ctx, jss[UserInference], 1)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := infImages.GetBytes(ctx, "img-1"); err != nil || string(b) != "pixels" {
		t.Fatalf("inference reads the image: %q %v", b, err)
	}
	grade := &GradeCompleted{Meta: NewMeta(TypeGradeCompleted), GradeID: "g1", Model: "m", Label: "cat", Scores: map[string]float64{"cat": 1}}
	if _, err := Publish(ctx, jss[UserInference], grade); err != nil {
		t.Fatalf("inference publishes a grade: %v", err)
	}

	// annotator and analytics consume their own consumers and dead-letter.
	for _, c := range []ConsumerSpec{ConsumerAnnotator, ConsumerAnalyticsAnnotations, ConsumerAnnotatorGrades, ConsumerAnalyticsGrades} {
		user := ownerOf(c)
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
		dl := &DeadLetter{Meta: NewMeta(TypeDeadLetter), Stream: c.Stream, Consumer: c.Durable, Subject: c.FilterSubjects[0], Reason: "test", Data: []byte("{}")}
		if _, err := Publish(ctx, jss[user], dl); err != nil {
			t.Fatalf("%s dead-letters for %s: %v", user, c.Durable, err)
		}
	}

	// Each query service answers; ingest calls them. Replies reach only the caller.
	tap, err := nats.Connect(st.url(t, UserSubscriber), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
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
		{UserAnnotator, SvcAnnotationsList}, {UserInference, SvcModelsList}, {UserAnalytics, SvcIrisStats},
	} {
		svc, err := AddService(conns[q.user], q.user, "0.0.1", "test", Endpoint{Name: "q", Subject: q.subject,
			Handler: Handle(nil, time.Second, func(context.Context, struct{}) (string, error) { return q.user, nil })})
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
		got, err := Request[string](ctx, conns[UserIngest], q.subject, struct{}{})
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
	if !st.publishAllowed(t, UserIngest, SubjectIrisMeasured) || !st.subscribeAllowed(t, UserAnnotator, SvcImagesGet) {
		t.Fatal("an allowed publish or subscription reads as denied")
	}
	// What the services may not do.
	tests := []struct{ user, subject string }{
		{UserIngest, "$JS.API.STREAM.DELETE." + StreamAnnotations},
		{UserIngest, "$JS.API.STREAM.PURGE." + StreamAnnotations},
		{UserIngest, "$JS.API.CONSUMER.DELETE." + StreamAnnotations + "." + ConsumerAnnotator.Durable},
		{UserIngest, "$JS.API.CONSUMER.MSG.NEXT." + StreamAnnotations + "." + ConsumerAnnotator.Durable},
		{UserIngest, "$JS.ACK." + StreamAnnotations + "." + ConsumerAnnotator.Durable + ".1.1.1.1.1"},
		{UserIngest, SubjectGradeCompleted},
		{UserInference, SubjectAnnotationCreated},
		{UserInference, "$O." + ImageBucket + ".C.x"},
		{UserInference, "$JS.API.STREAM.PURGE." + ObjectStream()},
		{UserInference, SvcImagesGet},
		{UserAnnotator, "$JS.API.CONSUMER.MSG.NEXT." + StreamIris + "." + ConsumerAnalyticsIris.Durable},
		{UserAnnotator, SubjectAnnotationCreated},
		{UserAnnotator, "$JS.API.STREAM.INFO." + ObjectStream() + ".x"},
		{UserAnnotator, "$JS.API.DIRECT.GET." + ObjectStream()},
		{UserAnalytics, SvcGradesGet},
		{UserAnalytics, "$JS.API.CONSUMER.MSG.NEXT." + StreamAnnotations + "." + ConsumerAnnotator.Durable},
		{UserAnalytics, "$KV." + BucketRevokedTokens + ".k"},
	}
	for _, tt := range tests {
		if st.publishAllowed(t, tt.user, tt.subject) {
			t.Errorf("%s may publish to %s", tt.user, tt.subject)
		}
	}
	for _, tt := range []struct{ user, subject string }{
		{UserIngest, SvcImagesGet}, {UserIngest, "_INBOX.annotator.>"}, {UserAnnotator, SvcIrisStats},
		{UserInference, SubjectImageSubmitted}, {UserAnalytics, "_INBOX.>"},
	} {
		if st.subscribeAllowed(t, tt.user, tt.subject) {
			t.Errorf("%s may subscribe to %s", tt.user, tt.subject)
		}
	}
}

// TestAccessTableCoversTheContract keeps the permission table in step with
// the rest of bus: every durable consumer belongs to a service, every
// query subject is answered by exactly one service, every stream named exists.
func TestAccessTableCoversTheContract(t *testing.T) {
	for _, c := range Consumers {
		if _, ok := accessOf(ownerOf(c)); !ok {
			t.Errorf("consumer %s belongs to no service (name it <service> or <service>-...)", c.Durable)
		}
	}
	for _, subj := range svcConstants(t) {
		var by []string
		for _, a := range Access {
			for _, pat := range a.Answers {
				if server.SubjectMatchesFilter(subj, pat) {
					by = append(by, a.User)
				}
			}
		}
		if len(by) != 1 {
			t.Errorf("query subject %s is answered by %v, want exactly one service", subj, by)
		}
	}
	for _, p := range Permissions() {
		if len(p.Publish.Allow) == 0 || len(p.Subscribe.Allow) == 0 {
			// An empty allow list means "everything" to the server.
			t.Errorf("%s: empty allow list", p.User)
		}
	}
}

// svcConstants returns the value of every Svc* constant of the package, so
// a new query subject cannot be added without an answering service.
func svcConstants(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		file, err := parser.ParseFile(fset, f, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			for i, name := range vs.Names {
				if strings.HasPrefix(name.Name, "Svc") && i < len(vs.Values) {
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						v, _ := strconv.Unquote(lit.Value)
						out = append(out, v)
					}
				}
			}
			return true
		})
	}
	if len(out) == 0 {
		t.Fatal("no Svc* constants found")
	}
	return out
}

// TestNATSServerAuthConfig loads the generated configuration with the
// server's own parser, starts a server from it and checks that the users
// and their permissions arrive: passwords from the environment.
func TestNATSServerAuthConfig(t *testing.T) {
	dir := t.TempDir()
	for _, u := range Users() {
		t.Setenv(PasswordEnv(u), "pw-"+u)
	}
	conf := "listen: 127.0.0.1:-1\njetstream { store_dir: " + strconv.Quote(filepath.Join(dir, "js")) + " }\n" +
		NATSServerAuthConfig(nil)
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("server rejects the generated config: %v\n%s", err, conf)
	}
	if len(opts.Users) != len(Users()) {
		t.Fatalf("%d users, want %d", len(opts.Users), len(Users()))
	}
	for _, u := range opts.Users {
		want, _ := PermissionsOf(u.Username)
		if u.Password != "pw-"+u.Username {
			t.Errorf("%s: password not taken from %s", u.Username, PasswordEnv(u.Username))
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
	u, _ := URLWithUser(ns.ClientURL(), Credential{User: UserSubscriber, Password: "pw-" + UserSubscriber})
	nc, err := nats.Connect(u, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.Publish(SubjectAnnotationCreated, []byte("{}"))
	_ = nc.Flush()
	if !errors.Is(nc.LastError(), nats.ErrPermissionViolation) {
		t.Fatal("the subscriber published an event under the generated config")
	}
	// A literal (here a bcrypt-looking) password is quoted, not read as a variable.
	if c := NATSServerAuthConfig(func(string) string { return "$2a$11$abc" }); !bytes.Contains([]byte(c), []byte(`password: "$2a$11$abc"`)) {
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
