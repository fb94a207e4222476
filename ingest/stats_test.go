package ingest_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/gradeline/gradeline/ingest"
)

// statsTotals sums the counts of a statistics answer, in total and per
// author (annotation rows carry the author).
func statsTotals(t *testing.T, c *client, path string) (total float64, byAuthor map[string]float64, body map[string]any) {
	t.Helper()
	r := c.do("GET", path, nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, r.Status, r.Body)
	}
	body = r.JSON(t)
	byAuthor = map[string]float64{}
	for _, x := range body["data"].([]any) {
		m := x.(map[string]any)
		total += m["count"].(float64)
		if a, ok := m["author"].(string); ok {
			byAuthor[a] += m["count"].(float64)
		}
	}
	return total, byAuthor, body
}

// Statistics show the caller's own activity; all=1 is for admins only, and
// the role changes (SetRole, what `gradeline admin grant|revoke` calls) take
// effect on the next request.
func TestStatsShowOwnActivity(t *testing.T) {
	needAnalytics(t)
	needInference(t)
	s := startIngest(t)
	a, nameA := s.newUser(t)
	b, nameB := s.newUser(t)
	for _, u := range []struct {
		c                   *client
		annotations, grades int
	}{{a, 2, 1}, {b, 3, 2}} {
		for range u.annotations {
			if r := u.c.json("POST", "/api/v1/annotations", `{"annotation":{"label":"cat"}}`); r.Status != http.StatusAccepted {
				t.Fatalf("annotate: %d %s", r.Status, r.Body)
			}
		}
		for i := range u.grades {
			r := u.c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "x.png", pngImage(t, 28+i, 28)})
			if r.Status != http.StatusOK {
				t.Fatalf("grade: %d %s", r.Status, r.Body)
			}
		}
	}
	window := "from=" + time.Now().Add(-time.Hour).UTC().Format(time.RFC3339) + "&to=" + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + "&bucket=1h"
	annPath, gradePath := "/api/v1/stats/annotations?"+window, "/api/v1/stats/grades?model=fashion&"+window

	// Each sees exactly their own activity, never the other's.
	for _, u := range []struct {
		name                string
		c                   *client
		annotations, grades float64
	}{{nameA, a, 2, 1}, {nameB, b, 3, 2}} {
		eventually(t, u.name+"'s own counts", 60*time.Second, func() bool {
			ann, byAuthor, body := statsTotals(t, u.c, annPath)
			for author := range byAuthor {
				if author != u.name {
					t.Fatalf("%s's annotation stats hold %s's: %v", u.name, author, body)
				}
			}
			if body["all"] != false {
				t.Fatalf("own stats say all=%v", body["all"])
			}
			grades, _, _ := statsTotals(t, u.c, gradePath)
			if ann > u.annotations || grades > u.grades {
				t.Fatalf("%s counts %v annotations and %v grades, made %v and %v", u.name, ann, grades, u.annotations, u.grades)
			}
			return ann == u.annotations && grades == u.grades
		})
	}

	// all=1 from a non-admin is 403 on both routes; a malformed all is 422.
	for _, tc := range []struct {
		query  string
		status int
		detail string
	}{
		{"all=1", http.StatusForbidden, "admin"},
		{"all=true", http.StatusForbidden, "admin"},
		{"all=yes", http.StatusUnprocessableEntity, "all:"},
		{"all=2", http.StatusUnprocessableEntity, "all:"},
	} {
		for _, p := range []string{annPath, gradePath} {
			if got := expectError(t, a.do("GET", p+"&"+tc.query, nil, nil), tc.status); !strings.Contains(got, tc.detail) {
				t.Errorf("%s&%s: %q lacks %q", p, tc.query, got, tc.detail)
			}
		}
	}
	if own, _, _ := statsTotals(t, a, annPath+"&all=0"); own != 2 {
		t.Fatalf("all=0 counts %v, want the own 2", own)
	}

	mc, err := mongo.Connect(options.Client().ApplyURI(mongoURI))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mc.Disconnect(context.Background()) }()
	db := mc.Database(s.Cfg.Database)
	ctx := context.Background()
	// Usernames match as at login: case does not matter.
	if changed, err := ingest.SetRole(ctx, db, strings.ToUpper(nameA), ingest.RoleAdmin, true); err != nil || !changed {
		t.Fatalf("grant: %v, %v", changed, err)
	}
	if changed, err := ingest.SetRole(ctx, db, nameA, ingest.RoleAdmin, true); err != nil || changed {
		t.Fatalf("second grant: changed %v, %v; want no change", changed, err)
	}
	if _, err := ingest.SetRole(ctx, db, "nobody-here", ingest.RoleAdmin, true); !errors.Is(err, ingest.ErrNoUser) {
		t.Fatalf("grant to an unknown user: %v, want ErrNoUser", err)
	}

	// The admin sees everyone's with all=1, and still their own without it.
	_, byAuthor, body := statsTotals(t, a, annPath+"&all=1")
	if byAuthor[nameA] != 2 || byAuthor[nameB] != 3 || body["all"] != true {
		t.Fatalf("admin's all=1 annotation stats %v, want %s 2 and %s 3", body, nameA, nameB)
	}
	if all, _, _ := statsTotals(t, a, gradePath+"&all=1"); all < 3 {
		t.Fatalf("admin's all=1 grade stats count %v, want at least the 3 of both users", all)
	}
	if own, _, _ := statsTotals(t, a, annPath); own != 2 {
		t.Fatalf("admin without all counts %v, want the own 2", own)
	}
	// B is no admin for A's grant.
	expectError(t, b.do("GET", annPath+"&all=1", nil, nil), http.StatusForbidden)

	// A revoke takes effect at once, with the same token.
	if changed, err := ingest.SetRole(ctx, db, nameA, ingest.RoleAdmin, false); err != nil || !changed {
		t.Fatalf("revoke: %v, %v", changed, err)
	}
	expectError(t, a.do("GET", annPath+"&all=1", nil, nil), http.StatusForbidden)
	expectError(t, a.do("GET", gradePath+"&all=1", nil, nil), http.StatusForbidden)
}
