package ingest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/bus/admin"
	"github.com/gradeline/gradeline/ingest/internal/auth"
)

// Config holds already-resolved settings of the HTTP edge. ConfigFromEnv
// reads them from the environment (production, cmd/ingest); deploy/local
// fills them for the local stack.
type Config struct {
	// Addr is the listen address of Run (default ":8080").
	Addr string
	// AdminAddr is where the binary serves /healthz, /readyz and /metrics
	// (none when empty); Run does not use it.
	AdminAddr string
	// NATSURL and MongoURI locate the bus and the user store; Database is
	// the MongoDB database holding the users collection (default "gradeline").
	NATSURL, MongoURI, Database string
	// JWTSecret signs tokens (HS256); at least 32 bytes.
	JWTSecret []byte
	// JWTIssuer and JWTAudience are the iss/aud claims issued and required
	// (defaults "gradeline" and "gradeline-api").
	JWTIssuer, JWTAudience string
	// SignupCode must accompany a registration. Required outside local
	// mode; local mode defaults it to the seed's "CS193S".
	SignupCode string
	// MaxBodyBytes bounds every request body (default 20 MiB).
	MaxBodyBytes int64
	// OIPInlineTensorBytes is the largest row of an Open Inference
	// Protocol request that travels inside its tensor.submitted event;
	// larger rows go through the object store, as uploaded images do
	// (default and maximum bus.MaxTensorBytes; lower it for a NATS whose
	// max_payload is below 1 MiB).
	OIPInlineTensorBytes int64
	// GradeWait is how long POST /api/v1/grades waits for the grade before
	// answering 202 (default 10s).
	GradeWait time.Duration
	// Replicas of streams and the object store (1 for a single server).
	Replicas int
	// Logger receives access and error logs (default slog.Default()).
	Logger *slog.Logger
	// Registerer receives the Prometheus metrics (default
	// prometheus.DefaultRegisterer). The edge does not serve them: the
	// admin address does (GRADELINE_ADMIN_ADDR), never the public port.
	Registerer prometheus.Registerer
	// TrustedProxies are the peers whose X-Forwarded-For / Forwarded
	// headers are believed (the ingress); from anyone else the direct peer
	// is the client address (see ParseTrustedProxies).
	TrustedProxies []netip.Prefix
	// CallbackAllow are the non-public addresses (CIDRs) a grade's
	// callback_url may reach nonetheless; by default only public
	// addresses are (no loopback, private, link-local ...).
	CallbackAllow []netip.Prefix
	// Local relaxes what only makes sense on one developer machine: the
	// token cookie is not marked Secure (plain http://localhost) and the
	// signup code defaults to CS193S.
	Local bool
}

// Defaults and limits.
const (
	DefaultAddr         = ":8080"
	DefaultDatabase     = "gradeline"
	DefaultIssuer       = "gradeline"
	DefaultAudience     = "gradeline-api"
	DefaultMaxBodyBytes = 20 << 20
	DefaultGradeWait    = 10 * time.Second
	// LocalSignupCode is the seed project's signup code, used in local mode
	// when none is configured.
	LocalSignupCode = "CS193S"
	// MinSecretBytes is the shortest acceptable HS256 secret.
	MinSecretBytes = 32
	// TokenTTL is the lifetime of an issued token (expiresIn 43200).
	TokenTTL = auth.TokenTTL

	maxAnnotationBody = 1 << 20
	maxGradeWait      = 60 * time.Second
)

func (c Config) withDefaults() (Config, error) {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.Database == "" {
		c.Database = DefaultDatabase
	}
	if c.JWTIssuer == "" {
		c.JWTIssuer = DefaultIssuer
	}
	if c.JWTAudience == "" {
		c.JWTAudience = DefaultAudience
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.OIPInlineTensorBytes <= 0 || c.OIPInlineTensorBytes > bus.MaxTensorBytes {
		c.OIPInlineTensorBytes = bus.MaxTensorBytes
	}
	if c.GradeWait <= 0 {
		c.GradeWait = DefaultGradeWait
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.DefaultRegisterer
	}
	if c.SignupCode == "" && c.Local {
		c.SignupCode = LocalSignupCode
	}
	var problems []string
	if c.NATSURL == "" {
		problems = append(problems, "NATSURL is required")
	}
	if c.MongoURI == "" {
		problems = append(problems, "MongoURI is required")
	}
	if len(c.JWTSecret) < MinSecretBytes {
		problems = append(problems, fmt.Sprintf("JWTSecret must be at least %d bytes (got %d)", MinSecretBytes, len(c.JWTSecret)))
	}
	if c.SignupCode == "" {
		problems = append(problems, "SignupCode is required outside local mode")
	}
	if len(problems) > 0 {
		return c, fmt.Errorf("ingest: invalid config: %s", strings.Join(problems, "; "))
	}
	return c, nil
}

// secretFile is the name of the generated secret inside the data directory.
const secretFile = "jwt-secret"

// LoadOrCreateSecret returns the JWT secret kept in dataDir, generating a
// random 32-byte one (stored hex-encoded, mode 0600) on first start. Local
// mode only: production passes GRADELINE_JWT_SECRET.
func LoadOrCreateSecret(dataDir string) ([]byte, error) {
	if dataDir == "" {
		return nil, errors.New("ingest: secret: data directory is required")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("ingest: secret: %w", err)
	}
	path := filepath.Join(dataDir, secretFile)
	raw := make([]byte, MinSecretBytes)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("ingest: secret: %w", err)
	}
	// O_EXCL: two processes starting at once agree on one secret.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		_, werr := f.WriteString(hex.EncodeToString(raw) + "\n")
		if serr := f.Sync(); werr == nil {
			werr = serr
		}
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			_ = os.Remove(path)
			return nil, fmt.Errorf("ingest: secret: write %s: %w", path, werr)
		}
		return raw, nil
	case errors.Is(err, fs.ErrExist):
		return readSecret(path)
	default:
		return nil, fmt.Errorf("ingest: secret: create %s: %w", path, err)
	}
}

func readSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ingest: secret: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		// Readable by others: tighten it rather than keep using it open.
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("ingest: secret: %s is readable by others and chmod failed: %w", path, err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ingest: secret: %w", err)
	}
	secret, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("ingest: secret: %s is not hex: %w", path, err)
	}
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("ingest: secret: %s holds %d bytes, want at least %d", path, len(secret), MinSecretBytes)
	}
	return secret, nil
}

// EnvVars are the environment variables ConfigFromEnv reads.
var EnvVars = []admin.Var{
	{Name: "GRADELINE_HTTP_ADDR", Default: "`" + DefaultAddr + "`", Meaning: "listen address of the HTTP edge"},
	admin.VarNATSURL,
	{Name: "MONGO_URI", Default: "embedded FerretDB on PostgreSQL 15 (local mode); **required** by the service binaries", Meaning: "a real MongoDB (replica set in production)"},
	{Name: "GRADELINE_MONGO_DB", Default: "`" + DefaultDatabase + "`", Meaning: "MongoDB database of the users, annotations, image catalogue and grade history (ingest, annotator, `gradeline admin`)"},
	{Name: "GRADELINE_JWT_SECRET", Default: "generated once, kept in the data dir", Meaning: fmt.Sprintf("HS256 signing secret, at least %d bytes; **required** outside local mode", MinSecretBytes)},
	{Name: "GRADELINE_JWT_ISSUER", Default: "`" + DefaultIssuer + "`", Meaning: "`iss` claim of the tokens the edge issues and requires"},
	{Name: "GRADELINE_JWT_AUDIENCE", Default: "`" + DefaultAudience + "`", Meaning: "`aud` claim of the tokens the edge issues and requires"},
	{Name: "GRADELINE_SIGNUP_CODE", Default: "`" + LocalSignupCode + "` (local mode)", Meaning: "code needed to register; **required** outside local mode"},
	{Name: "GRADELINE_MAX_BODY_BYTES", Default: fmt.Sprintf("`%d` (20 MiB)", DefaultMaxBodyBytes), Meaning: "largest request body the edge reads (an uploaded image included)"},
	{Name: "GRADELINE_OIP_INLINE_TENSOR_BYTES", Default: fmt.Sprintf("`%d` (640 KiB, the most)", bus.MaxTensorBytes), Meaning: "largest row of an Open Inference Protocol request carried inside its `tensor.submitted` event; larger rows go through the object store (lower it when NATS `max_payload` is below 1 MiB)"},
	{Name: "GRADELINE_GRADE_WAIT", Default: "`" + DefaultGradeWait.String() + "`", Meaning: "how long `POST /api/v1/grades` waits for the grade before answering 202 with its `Location` (a request's `?wait=` overrides it)"},
	{Name: "GRADELINE_TRUSTED_PROXIES", Default: "none", Meaning: "comma-separated CIDRs of the proxies (the ingress) whose `X-Forwarded-For` / `Forwarded` name the client address for login throttling; from any other peer the headers are ignored"},
	{Name: "GRADELINE_CALLBACK_ALLOW", Default: "none", Meaning: "comma-separated CIDRs a grade's `callback_url` may reach although they are not public (loopback, private, link-local ...); refused otherwise, at submission and again when delivering"},
	admin.VarReplicas, admin.VarNATSCA, admin.VarAdminAddr, admin.VarLogLevel,
}

// ConfigFromEnv reads the production configuration of the edge: every
// dependency and secret must be given, nothing insecure is defaulted. The
// error lists every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	e := admin.NewEnv(getenv)
	cfg := Config{
		Addr:                 e.Or("GRADELINE_HTTP_ADDR", DefaultAddr),
		AdminAddr:            e.Get("GRADELINE_ADMIN_ADDR"),
		NATSURL:              e.Required("NATS_URL", "e.g. nats://ingest:PASSWORD@nats:4222"),
		MongoURI:             e.Required("MONGO_URI", "e.g. mongodb://mongo:27017/"),
		Database:             e.Or("GRADELINE_MONGO_DB", DefaultDatabase),
		JWTSecret:            e.Secret("GRADELINE_JWT_SECRET", MinSecretBytes, "random bytes, e.g. `openssl rand -hex 32`"),
		JWTIssuer:            e.Or("GRADELINE_JWT_ISSUER", DefaultIssuer),
		JWTAudience:          e.Or("GRADELINE_JWT_AUDIENCE", DefaultAudience),
		SignupCode:           e.Required("GRADELINE_SIGNUP_CODE", "the code new users must present"),
		MaxBodyBytes:         e.Positive("GRADELINE_MAX_BODY_BYTES", DefaultMaxBodyBytes),
		OIPInlineTensorBytes: e.Positive("GRADELINE_OIP_INLINE_TENSOR_BYTES", bus.MaxTensorBytes),
		GradeWait:            e.Duration("GRADELINE_GRADE_WAIT", DefaultGradeWait, 0),
		Logger:               e.Logger(false),
	}
	e.Parse("GRADELINE_TRUSTED_PROXIES", "comma-separated CIDRs or addresses, e.g. 10.0.0.0/8", func(v string) (err error) {
		cfg.TrustedProxies, err = ParseTrustedProxies(v)
		return err
	})
	e.Parse("GRADELINE_CALLBACK_ALLOW", "comma-separated CIDRs or addresses, e.g. 10.1.2.0/24", func(v string) (err error) {
		cfg.CallbackAllow, err = ParseTrustedProxies(v)
		return err
	})
	if cfg.OIPInlineTensorBytes > bus.MaxTensorBytes {
		e.Problem("GRADELINE_OIP_INLINE_TENSOR_BYTES", fmt.Sprintf("more than an event carries (%d bytes)", bus.MaxTensorBytes), fmt.Sprintf("use at most %d", bus.MaxTensorBytes))
	}
	var err error
	cfg.Replicas, err = bus.ParseReplicas(e.Get(bus.EnvReplicas))
	e.Add(err)
	return cfg, e.Err()
}
