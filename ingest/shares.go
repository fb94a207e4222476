package ingest

import (
	"net/http"
	"slices"

	"github.com/gofiber/fiber/v2"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest/internal/auth"
)

type sharesResponse struct {
	ID     string   `json:"img_id"`
	Shares []string `json:"shares"`
}

// listShares: GET /api/v1/images/{id}/shares, the owner's list.
func (s *Server) listShares(c *fiber.Ctx) error {
	img, err := s.ownImage(c.UserContext(), userOf(c), c.Params("id"))
	if err != nil {
		return err
	}
	return c.JSON(sharesResponse{ID: img.ID, Shares: nonNilStrings(img.Shares)})
}

// putShare: PUT /api/v1/images/{id}/shares/{username} shares the image
// with an existing user (idempotent).
func (s *Server) putShare(c *fiber.Ctx) error {
	return s.changeShares(c, func(shares []string, who string) ([]string, error) {
		if slices.Contains(shares, who) {
			return shares, nil
		}
		if len(shares) >= bus.MaxShares {
			return nil, invalid("too many shares", "an image is shared with at most 100 users")
		}
		return append(shares, who), nil
	}, true)
}

// deleteShare: DELETE /api/v1/images/{id}/shares/{username} (idempotent).
func (s *Server) deleteShare(c *fiber.Ctx) error {
	return s.changeShares(c, func(shares []string, who string) ([]string, error) {
		return slices.DeleteFunc(slices.Clone(shares), func(u string) bool { return u == who }), nil
	}, false)
}

// changeShares publishes the owner's new share list. The list is replaced
// as a whole (like tags): the store applies the newest list.
func (s *Server) changeShares(c *fiber.Ctx, change func([]string, string) ([]string, error), mustExist bool) error {
	ctx := c.UserContext()
	user := userOf(c)
	who := auth.Normalize(c.Params("username"))
	if !auth.ValidUsername(who) {
		return errorf(http.StatusNotFound, "user %q not found", c.Params("username"))
	}
	img, err := s.ownImage(ctx, user, c.Params("id"))
	if err != nil {
		return err
	}
	if who == user {
		return invalid("invalid share", "username: the owner always sees the image")
	}
	if mustExist {
		u, err := s.users.Find(ctx, who)
		if err != nil {
			return storeUnavailable(err)
		}
		if u == nil {
			return errorf(http.StatusNotFound, "user %q not found", who)
		}
	}
	shares, err := change(nonNilStrings(img.Shares), who)
	if err != nil {
		return err
	}
	if !slices.Equal(shares, nonNilStrings(img.Shares)) {
		ev := &bus.ImageSharesSet{Meta: bus.NewMeta(bus.TypeImageSharesSet), ImageID: img.ID, Owner: user, Shares: shares}
		if err := s.publish(ctx, ev); err != nil {
			return err
		}
	}
	return c.JSON(sharesResponse{ID: img.ID, Shares: shares})
}

func nonNilStrings(v []string) []string {
	if v == nil {
		return []string{}
	}
	return v
}
