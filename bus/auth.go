package bus

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
)

// NATS users. Every service connects as its own user, so the server can
// hold each one to the subjects its role needs; nobody connects anonymously.
const (
	UserIngest    = "ingest"
	UserInference = "inference"
	UserAnnotator = "annotator"
	UserAnalytics = "analytics"
	// UserAdmin is the operator: the gradeline CLI, replays, benchmarks and
	// the creation and update of the streams (`gradeline setup`). It may
	// do anything.
	UserAdmin = "admin"
	// UserSubscriber is for downstream systems: it reads the event streams
	// through durable consumers of its own, and nothing else.
	UserSubscriber = "subscriber"
)

// Key-value buckets the services keep shared state in (login throttling
// and token revocation of the edge). They are named here, like the
// streams, so the permissions below can grant them.
const (
	BucketLoginThrottle = "gradeline-login-throttle"
	BucketRevokedTokens = "gradeline-revoked-tokens"
)

// ObjectAccess is what a service may do in the image bucket.
type ObjectAccess int

// What a service may do in the image bucket.
const (
	// ObjectsNone: no access.
	ObjectsNone ObjectAccess = iota
	// ObjectsRead: read image bytes (inference).
	ObjectsRead
	// ObjectsReadWrite: store, read and remove image bytes (the edge).
	ObjectsReadWrite
)

// ServiceAccess says what one service does on the bus. The permissions of
// its NATS user are derived from it and the stream and consumer table, so
// a new event type, stream or consumer needs no second edit here.
type ServiceAccess struct {
	User string
	// PublishesTo lists the streams whose subjects the service publishes events on.
	PublishesTo []string
	// Emits lists single subjects the service publishes events on in a
	// stream whose other subjects it must not: the edge records the grades
	// it answers before their result (grade.pending) in GRADES, where only
	// inference publishes results.
	Emits []string
	// Answers lists the query subjects the service answers (wildcards allowed).
	Answers []string
	// Calls lists the query subjects the service sends requests to.
	Calls []string
	// Tails lists streams the service reads from a sequence of its
	// choosing with short-lived ordered consumers (the edge's Server-Sent
	// Events): it may create, pull from and delete unnamed consumers
	// there, never the durables of another service.
	Tails []string
	// Objects is its access to the image bucket.
	Objects ObjectAccess
	// Buckets are the key-value buckets it reads and writes.
	Buckets []string
	// Its durable consumers are those of the consumer table named after
	// it (ConsumerSpec.Owner): the durable is the user name, or starts
	// with the user name and "-".
}

// svcPrefix is the root of every query subject.
const svcPrefix = "gradeline.svc."

// Access is the table of what each service does on the bus.
var Access = []ServiceAccess{
	{
		User:        UserIngest,
		PublishesTo: []string{StreamAnnotations, StreamImages, StreamCatalog, StreamIris, StreamCallbacks},
		Emits:       []string{SubjectGradePending},
		Tails:       []string{StreamGrades},
		Calls:       []string{svcPrefix + ">"},
		Objects:     ObjectsReadWrite,
		Buckets:     []string{BucketLoginThrottle, BucketRevokedTokens, IdempotencyBucket, BucketWebhookSecrets, BucketOIPStats},
	},
	{
		User:        UserInference,
		PublishesTo: []string{StreamGrades},
		// Results due at a callback_url, in CALLBACKS beside the edge's
		// delivery attempts.
		Emits:   []string{SubjectGradeCallbackDue},
		Answers: []string{svcPrefix + "models.>"},
		Objects: ObjectsRead,
		// What the repository API unloaded, shared by every replica
		// (created by `gradeline setup`).
		Buckets: []string{ModelStateBucket},
	},
	{
		User:    UserAnnotator,
		Answers: []string{svcPrefix + "annotations.>", svcPrefix + "images.>", svcPrefix + "grades.>"},
	},
	{
		User:    UserAnalytics,
		Answers: []string{svcPrefix + "iris.>", svcPrefix + "stats.>"},
	},
}

// Users lists every NATS user: the services, the operator and the subscriber.
func Users() []string {
	out := make([]string, 0, len(Access)+2)
	for _, a := range Access {
		out = append(out, a.User)
	}
	return append(out, UserAdmin, UserSubscriber)
}

// SubjectRules allow and deny subjects; a deny wins over an allow. An
// empty Allow with an empty Deny allows nothing.
type SubjectRules struct {
	Allow, Deny []string
}

// UserPermissions is what the NATS server enforces for one user. It is
// plain data: the embedded server and the generated server configuration
// (NATSServerConfig) both convert it.
type UserPermissions struct {
	User      string
	Publish   SubjectRules
	Subscribe SubjectRules
	// Responses lets the user answer requests it received (the server's
	// allow_responses), whatever the reply subject: the query services.
	Responses bool
	// InboxPrefix is the reply subject prefix the user's clients use
	// (Connect sets it from the user name in the URL). A service's replies
	// go to a prefix only it may subscribe to, so no other user can read
	// them.
	InboxPrefix string
}

// InboxPrefixOf returns the inbox prefix clients of user must use: a
// private one for the services, the NATS default for everyone else.
func InboxPrefixOf(user string) string {
	if _, ok := accessOf(user); ok {
		return "_INBOX." + user
	}
	return "_INBOX"
}

func accessOf(user string) (ServiceAccess, bool) {
	for _, a := range Access {
		if a.User == user {
			return a, true
		}
	}
	return ServiceAccess{}, false
}

// ConsumersOfUser returns the durable consumers that belong to user.
func ConsumersOfUser(user string) []ConsumerSpec {
	var out []ConsumerSpec
	for _, c := range Consumers {
		if c.Owner() == user {
			out = append(out, c)
		}
	}
	return out
}

// consumersReadBy is what user reads: its consumers and its draining ones
// (DrainingConsumers), which it reads but no longer creates.
func consumersReadBy(user string) []ConsumerSpec {
	return durables(func(c ConsumerSpec) bool { return c.Owner() == user })
}

// durablesOf is every service durable on stream s, draining ones included:
// those another user must not pull from, change or delete.
func durablesOf(s string) []ConsumerSpec {
	return durables(func(c ConsumerSpec) bool { return c.Stream == s })
}

// durables is every durable of Consumers and DrainingConsumers that keep
// accepts.
func durables(keep func(ConsumerSpec) bool) []ConsumerSpec {
	var out []ConsumerSpec
	for _, c := range slices.Concat(Consumers, DrainingConsumers) {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

// Owner is the service (NATS user) the durable consumer belongs to: the
// durable's name up to the first "-". Only its owner pulls from it and
// ensures its settings (EnsureConsumers).
func (c ConsumerSpec) Owner() string {
	name, _, _ := strings.Cut(c.Durable, "-")
	return name
}

// ObjectStream is the stream behind the image bucket.
func ObjectStream() string { return "OBJ_" + ImageBucket }

const jsAPI = "$JS.API."

// Permissions returns the permissions of every user (see Users).
func Permissions() []UserPermissions {
	var out []UserPermissions
	for _, u := range Users() {
		p, _ := PermissionsOf(u)
		out = append(out, p)
	}
	return out
}

// PermissionsOf returns the permissions of one user; false for an unknown user.
func PermissionsOf(user string) (UserPermissions, bool) {
	switch user {
	case UserAdmin:
		return UserPermissions{User: user, InboxPrefix: "_INBOX",
			Publish: SubjectRules{Allow: []string{">"}}, Subscribe: SubjectRules{Allow: []string{">"}}}, true
	case UserSubscriber:
		return subscriberPermissions(), true
	}
	a, ok := accessOf(user)
	if !ok {
		return UserPermissions{}, false
	}
	return servicePermissions(a), true
}

// servicePermissions derives a service's permissions from its row of Access
// and the stream and consumer table.
func servicePermissions(a ServiceAccess) UserPermissions {
	inbox := InboxPrefixOf(a.User)
	p := UserPermissions{User: a.User, InboxPrefix: inbox, Responses: len(a.Answers) > 0}
	pub := []string{jsAPI + "INFO"}
	// The streams and the image bucket are the operator's (EnsureStreams,
	// `gradeline setup`): a service only reads the configuration and state
	// of those it needs (WaitForStreams, CheckPosition), and never creates,
	// updates, deletes or purges one, so services of two versions cannot
	// fight over a stream's settings.
	for _, s := range StreamsNeededBy(a.User) {
		pub = append(pub, jsAPI+"STREAM.INFO."+s)
	}
	// It creates, updates, reads, resets (CheckPosition), pulls from, acks
	// on and dead-letters for its own consumers only: another service's
	// consumer settings are that service's to set.
	for _, c := range consumersReadBy(a.User) {
		pub = append(pub, consumerCreate(c.Stream, c.Durable)...)
		pub = append(pub,
			jsAPI+"CONSUMER.INFO."+c.Stream+"."+c.Durable,
			jsAPI+"CONSUMER.RESET."+c.Stream+"."+c.Durable,
			jsAPI+"CONSUMER.MSG.NEXT."+c.Stream+"."+c.Durable,
			"$JS.ACK."+c.Stream+"."+c.Durable+".>",
			SubjectDeadLetterPrefix+c.Durable)
	}
	for _, s := range a.PublishesTo {
		pub = append(pub, streamSubjects(s)...)
	}
	pub = append(pub, a.Emits...)
	pub = append(pub, a.Calls...)
	switch a.Objects {
	case ObjectsReadWrite:
		pub = append(pub, "$O."+ImageBucket+".>", jsAPI+"STREAM.PURGE."+ObjectStream())
		fallthrough
	case ObjectsRead:
		pub = append(pub, readStream(ObjectStream())...)
	}
	// Its key-value buckets are its own state: the edge creates and
	// updates its buckets itself (inference finds the model state bucket
	// made by `gradeline setup`, and never creates it).
	for _, b := range a.Buckets {
		kv := "KV_" + b
		pub = append(pub, "$KV."+b+".>",
			jsAPI+"STREAM.INFO."+kv, jsAPI+"STREAM.CREATE."+kv, jsAPI+"STREAM.UPDATE."+kv, jsAPI+"STREAM.PURGE."+kv)
		pub = append(pub, readStream(kv)...)
	}
	var deny []string
	for _, s := range a.Tails {
		pub = append(pub, jsAPI+"CONSUMER.CREATE."+s+".*", jsAPI+"CONSUMER.CREATE."+s+".*.>",
			jsAPI+"CONSUMER.MSG.NEXT."+s+".*", jsAPI+"CONSUMER.DELETE."+s+".*", jsAPI+"CONSUMER.INFO."+s+".*")
		for _, c := range durablesOf(s) {
			if c.Owner() != a.User {
				deny = append(deny, consumerCreate(c.Stream, c.Durable)...)
				deny = append(deny, jsAPI+"CONSUMER.MSG.NEXT."+c.Stream+"."+c.Durable,
					jsAPI+"CONSUMER.DELETE."+c.Stream+"."+c.Durable)
			}
		}
	}
	p.Publish.Allow, p.Publish.Deny = pub, deny

	sub := []string{inbox + ".>"}
	sub = append(sub, a.Answers...)
	if len(a.Answers) > 0 {
		// Service discovery of nats.go/micro ($SRV.PING, $SRV.INFO.annotator, ...).
		sub = append(sub, "$SRV.*", "$SRV.*."+a.User, "$SRV.*."+a.User+".*")
	}
	p.Subscribe.Allow = sub
	return p
}

// subscriberPermissions: read the event streams through consumers of its
// own. The service durables are denied by name, so the subscriber can
// neither steal their messages nor change or delete them.
func subscriberPermissions() UserPermissions {
	p := UserPermissions{User: UserSubscriber, InboxPrefix: InboxPrefixOf(UserSubscriber)}
	pub := []string{jsAPI + "INFO", jsAPI + "STREAM.NAMES", jsAPI + "STREAM.LIST"}
	var deny []string
	for _, s := range EventStreams() {
		pub = append(pub,
			jsAPI+"STREAM.INFO."+s,
			jsAPI+"STREAM.MSG.GET."+s, jsAPI+"DIRECT.GET."+s, jsAPI+"DIRECT.GET."+s+".>",
			// Named consumers only: the legacy CONSUMER.CREATE.<stream>
			// carries the name in the body, out of reach of the denies.
			jsAPI+"CONSUMER.CREATE."+s+".>", jsAPI+"CONSUMER.DURABLE.CREATE."+s+".*",
			jsAPI+"CONSUMER.INFO."+s+".*", jsAPI+"CONSUMER.NAMES."+s, jsAPI+"CONSUMER.LIST."+s,
			jsAPI+"CONSUMER.MSG.NEXT."+s+".*", jsAPI+"CONSUMER.DELETE."+s+".*",
			"$JS.ACK."+s+".>", "$JS.FC."+s+".>")
		for _, c := range durablesOf(s) {
			deny = append(deny, consumerCreate(c.Stream, c.Durable)...)
			deny = append(deny,
				jsAPI+"CONSUMER.MSG.NEXT."+c.Stream+"."+c.Durable,
				jsAPI+"CONSUMER.DELETE."+c.Stream+"."+c.Durable,
				"$JS.ACK."+c.Stream+"."+c.Durable+".>")
		}
	}
	p.Publish = SubjectRules{Allow: pub, Deny: deny}
	// Its own replies, never a service's.
	var subDeny []string
	for _, a := range Access {
		subDeny = append(subDeny, InboxPrefixOf(a.User)+".>")
	}
	p.Subscribe = SubjectRules{Allow: []string{"_INBOX.>"}, Deny: subDeny}
	return p
}

// StreamsNeededBy returns the streams a service user cannot work without,
// which WaitForStreams waits for: those it publishes to, those its durable
// consumers read, the dead letters when it has consumers, and the stream
// of the image bucket when it uses the bucket. Nil for any other user.
func StreamsNeededBy(user string) []string {
	a, ok := accessOf(user)
	if !ok {
		return nil
	}
	var out []string
	add := func(s string) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, s := range a.PublishesTo {
		add(s)
	}
	for _, c := range consumersReadBy(user) {
		add(c.Stream)
		add(StreamDeadLetter)
	}
	if a.Objects != ObjectsNone {
		add(ObjectStream())
	}
	return out
}

// EventStreams are the streams a downstream subscriber may read: every
// stream of the table but the dead letters.
func EventStreams() []string {
	var out []string
	for _, s := range Streams {
		if s.Name != StreamDeadLetter {
			out = append(out, s.Name)
		}
	}
	return out
}

func streamSubjects(name string) []string {
	for _, s := range Streams {
		if s.Name == name {
			return slices.Clone(s.Subjects)
		}
	}
	panic(fmt.Sprintf("bus: access table names unknown stream %q", name))
}

// consumerCreate are the API subjects that create or update a named consumer.
func consumerCreate(stream, durable string) []string {
	return []string{
		jsAPI + "CONSUMER.CREATE." + stream + "." + durable,
		jsAPI + "CONSUMER.CREATE." + stream + "." + durable + ".>",
		jsAPI + "CONSUMER.DURABLE.CREATE." + stream + "." + durable,
	}
}

// readStream are the API subjects that read a stream of the object store
// or a KV bucket: direct and stored message gets, and the short-lived
// ordered consumers (with their flow control) that Get and Watch create.
func readStream(s string) []string {
	return []string{
		jsAPI + "STREAM.INFO." + s,
		jsAPI + "STREAM.MSG.GET." + s, jsAPI + "DIRECT.GET." + s, jsAPI + "DIRECT.GET." + s + ".>",
		jsAPI + "CONSUMER.CREATE." + s + ".>", jsAPI + "CONSUMER.DELETE." + s + ".*",
		jsAPI + "CONSUMER.INFO." + s + ".*",
		"$JS.FC." + s + ".>",
	}
}

// Credential is a NATS user and its password. In a server configuration
// the password may also be a bcrypt hash ($2a$...).
type Credential struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// NewPassword returns a random password that needs no escaping in a URL.
func NewPassword() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("bus: password: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// URLWithUser returns the NATS URL (or comma-separated URLs) with the
// credential in each, e.g. nats://ingest:secret@127.0.0.1:4222.
func URLWithUser(natsURL string, c Credential) (string, error) {
	parts := strings.Split(natsURL, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil {
			return "", fmt.Errorf("bus: NATS URL %q: %w", p, err)
		}
		u.User = url.UserPassword(c.User, c.Password)
		parts[i] = u.String()
	}
	return strings.Join(parts, ","), nil
}

// userOfURL returns the user named in the first NATS URL, if any.
func userOfURL(natsURL string) string {
	first, _, _ := strings.Cut(natsURL, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil || u.User == nil {
		return ""
	}
	return u.User.Username()
}

// EnvNATSCA names a PEM file holding the CA that signed the NATS server's
// certificate, for tls:// URLs (Kubernetes mounts it from the nats-tls Secret).
const EnvNATSCA = "NATS_CA"

// CAOption makes a client verify the server against the CA in NATS_CA when
// it is set, and changes nothing otherwise. Connect and the readiness
// check use it.
func CAOption() nats.Option {
	if ca := os.Getenv(EnvNATSCA); ca != "" {
		return nats.RootCAs(ca)
	}
	return func(*nats.Options) error { return nil }
}
