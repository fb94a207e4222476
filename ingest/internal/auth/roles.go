package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// RoleAdmin may see every user's statistics (?all=1 on /api/v1/stats/*).
// It is stored in the user record's roles and changed only by the operator
// (`gradeline admin grant|revoke USER`), never through the HTTP edge.
const RoleAdmin = "admin"

// ErrNoUser is returned by SetRole for a username nobody registered.
var ErrNoUser = errors.New("no such user")

// SetRole grants (grant true) or revokes a role on the user username
// (matched as at login: case and surrounding space do not matter) in db's
// users collection. It reports whether the record changed: granting a role
// the user has, or revoking one they lack, changes nothing and is no error.
func SetRole(ctx context.Context, db *mongo.Database, username, role string, grant bool) (bool, error) {
	norm := Normalize(username)
	if norm == "" {
		return false, fmt.Errorf("%w: empty username", ErrNoUser)
	}
	// One conditional update, so concurrent grants and revokes of different
	// roles never overwrite each other.
	op := "$addToSet"
	if !grant {
		op = "$pull"
	}
	res, err := db.Collection(usersCollection).UpdateOne(ctx, bson.D{{Key: "_id", Value: norm}},
		bson.D{{Key: op, Value: bson.D{{Key: "roles", Value: role}}}})
	if err != nil {
		return false, fmt.Errorf("set role %s of %s: %w", role, norm, err)
	}
	if res.MatchedCount == 0 {
		return false, fmt.Errorf("%w: %q", ErrNoUser, norm)
	}
	return res.ModifiedCount > 0, nil
}

// HasRole reports whether the user norm (already normalised) has role; an
// unknown user has none.
func (u *Users) HasRole(ctx context.Context, norm, role string) (bool, error) {
	doc, err := u.Find(ctx, norm)
	if err != nil || doc == nil {
		return false, err
	}
	return slices.Contains(doc.Roles, role), nil
}
