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

	"github.com/gradeline/gradeline/ingest/internal/auth"
)

// Config holds already-resolved settings of the HTTP edge. Parsing the
// environment is the job of cmd/ingest (production) and deploy/local.
type Config struct {
	// Addr is the listen address of Run (default ":8080").
	Addr string
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
