// Package auth holds the edge's users and tokens: the users collection in
// MongoDB, argon2id password hashes, HS256 JWTs, the login throttle and the
// revocation list (both NATS key-value buckets shared by every edge
// replica). It knows nothing of HTTP; ingest's handlers call it.
package auth

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

const (
	usersCollection = "users"
	// MinPassword is the fewest characters of a new password.
	MinPassword = 8
	// MaxPassword bounds the bytes of any password: the hashing work per request.
	MaxPassword = 256
	// MaxUsername bounds a username; longer login names are cut to it.
	MaxUsername = 128
)

// commonPasswords are refused at registration: the first guesses of every
// attacker. Compared in lower case.
//
//go:embed common-passwords.txt
var commonPasswordsText string

var commonPasswords = func() map[string]struct{} {
	m := map[string]struct{}{}
	for _, l := range strings.Split(commonPasswordsText, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			m[l] = struct{}{}
		}
	}
	return m
}()

func isCommonPassword(pw string) bool {
	_, ok := commonPasswords[strings.ToLower(pw)]
	return ok
}

// A username is 3..128 characters of letters, digits and . _ - @ +,
// starting with a letter or digit; e-mail addresses qualify.
var validUsername = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+\-]{2,127}$`)

// UsernameRule is what ValidUsername checks, for messages.
const UsernameRule = "3 to 128 characters of letters, digits and . _ - @ +, starting with a letter or digit"

// ValidUsername reports whether name is a username a user may register.
func ValidUsername(name string) bool { return validUsername.MatchString(name) }

// Normalize is the form usernames are unique and looked up by.
func Normalize(username string) string { return strings.ToLower(strings.TrimSpace(username)) }

// CheckRegistration names what is wrong with a new user's name and
// password, field by field; nil when both are acceptable.
func CheckRegistration(username, password string) []string {
	var bad []string
	if !ValidUsername(username) {
		bad = append(bad, "username: "+UsernameRule)
	}
	if p := CheckPassword(password); p != "" {
		bad = append(bad, "password: "+p)
	}
	return bad
}

// CheckPassword returns what is wrong with a new password, or "".
func CheckPassword(pw string) string {
	switch {
	case utf8.RuneCountInString(pw) < MinPassword:
		return fmt.Sprintf("at least %d characters", MinPassword)
	case len(pw) > MaxPassword:
		return fmt.Sprintf("at most %d bytes", MaxPassword)
	case isCommonPassword(pw):
		return "one of the most common passwords; choose another"
	}
	return ""
}

// User is a document of the users collection. _id is the normalised
// username (fast equality lookups on FerretDB); username_norm repeats it
// under a unique index, the contract other tools may rely on.
type User struct {
	ID           string    `bson:"_id"`
	Username     string    `bson:"username"`
	UsernameNorm string    `bson:"username_norm"`
	PasswordHash string    `bson:"password_hash"`
	CreatedAt    time.Time `bson:"created_at"`
	Roles        []string  `bson:"roles,omitempty"` // RoleAdmin; set by SetRole
}

// Users is the users collection.
type Users struct{ coll *mongo.Collection }

// OpenUsers opens db's users collection and ensures its unique index.
func OpenUsers(ctx context.Context, db *mongo.Database) (*Users, error) {
	coll := db.Collection(usersCollection)
	_, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "username_norm", Value: 1}},
		Options: options.Index().SetUnique(true).SetName("username_norm_unique"),
	})
	if err != nil {
		return nil, fmt.Errorf("users index: %w", err)
	}
	return &Users{coll: coll}, nil
}

// ErrUserExists is Create's error for a username already taken.
var ErrUserExists = errors.New("username taken")

// Create inserts a new user.
func (u *Users) Create(ctx context.Context, doc User) error {
	_, err := u.coll.InsertOne(ctx, doc)
	if mongo.IsDuplicateKeyError(err) {
		return ErrUserExists
	}
	return err
}

// Find returns the user with the normalised name, or (nil, nil) when there is none.
func (u *Users) Find(ctx context.Context, norm string) (*User, error) {
	var doc User
	err := u.coll.FindOne(ctx, bson.D{{Key: "_id", Value: norm}}).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &doc, nil
}
