package ingest_test

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// Annotations follow their image: visible to, and made by, the image's
// owner and the users it is shared with; changed only by their author.
// Every step below was a reproduction of issue 10 (user B read, listed
// and annotated user A's images and annotations).
func TestAnnotationVisibilityFollowsTheImage(t *testing.T) {
	s := startIngest(t)
	ada, adaName := s.newUser(t)
	bob, bobName := s.newUser(t)
	img := newImage(t, ada)

	r := ada.json("POST", "/api/v1/annotations", map[string]any{"image_id": img, "annotation": map[string]any{"label": "cat"}})
	if r.Status != http.StatusAccepted {
		t.Fatalf("owner annotates: %d %s", r.Status, r.Body)
	}
	adaAnn := r.JSON(t)["id"].(string)
	mine := ada.json("POST", "/api/v1/annotations", map[string]any{"annotation": map[string]any{"note": "no image"}}).JSON(t)["id"].(string)

	// Not shared: bob sees nothing of it and cannot annotate it.
	expectError(t, bob.json("POST", "/api/v1/annotations", map[string]any{"image_id": img, "annotation": map[string]any{"label": "dog"}}), http.StatusNotFound)
	expectError(t, bob.json("POST", "/api/v1/annotations", map[string]any{"image_id": "no-such-image", "annotation": map[string]any{"label": "dog"}}), http.StatusNotFound)
	expectError(t, bob.do("GET", "/api/v1/annotations?image_id="+img, nil, nil), http.StatusNotFound)
	expectError(t, bob.do("GET", "/api/v1/annotations/"+adaAnn, nil, nil), http.StatusNotFound)
	expectError(t, bob.do("GET", "/api/v1/annotations/"+mine, nil, nil), http.StatusNotFound)
	expectError(t, bob.do("GET", "/api/v1/annotations?author="+adaName, nil, nil), http.StatusUnprocessableEntity)
	if r := bob.do("GET", "/api/v1/annotations", nil, nil); r.Status != 200 || len(r.JSON(t)["data"].([]any)) != 0 {
		t.Fatalf("bob's own listing: %d %s", r.Status, r.Body)
	}
	expectError(t, bob.do("GET", "/api/v1/images/"+img, nil, nil), http.StatusNotFound)

	// Sharing: only the owner, only with an existing user, never oneself.
	expectError(t, bob.do("PUT", "/api/v1/images/"+img+"/shares/"+bobName, nil, nil), http.StatusNotFound)
	expectError(t, ada.do("PUT", "/api/v1/images/"+img+"/shares/nobody-like-this", nil, nil), http.StatusNotFound)
	expectError(t, ada.do("PUT", "/api/v1/images/"+img+"/shares/"+adaName, nil, nil), http.StatusUnprocessableEntity)
	share(t, ada, img, bobName)
	share(t, ada, img, bobName) // idempotent
	if r := ada.do("GET", "/api/v1/images/"+img+"/shares", nil, nil); r.Status != 200 || !strings.Contains(string(r.Body), bobName) {
		t.Fatalf("share list: %d %s", r.Status, r.Body)
	}

	// Shared: bob reads the image and its annotations, and annotates it...
	eventually(t, "the share to be stored", 10*time.Second, func() bool {
		return bob.do("GET", "/api/v1/images/"+img, nil, nil).Status == http.StatusOK
	})
	if r := bob.do("GET", "/api/v1/images/"+img, nil, nil); r.Status != 200 || r.JSON(t)["shares"] != nil {
		t.Fatalf("shared image: %d %s (the share list is the owner's)", r.Status, r.Body)
	}
	r = bob.json("POST", "/api/v1/annotations", map[string]any{"image_id": img, "annotation": map[string]any{"label": "dog"}})
	if r.Status != http.StatusAccepted {
		t.Fatalf("shared user annotates: %d %s", r.Status, r.Body)
	}
	bobAnn := r.JSON(t)["id"].(string)
	if r := bob.do("GET", "/api/v1/annotations?image_id="+img, nil, nil); r.Status != 200 || len(r.JSON(t)["data"].([]any)) != 2 {
		t.Fatalf("shared image's annotations: %d %s", r.Status, r.Body)
	}
	if r := bob.do("GET", "/api/v1/annotations/"+adaAnn, nil, nil); r.Status != 200 {
		t.Fatalf("owner's annotation on a shared image: %d %s", r.Status, r.Body)
	}
	// ...but changes neither the image nor ada's annotations.
	expectError(t, bob.json("PATCH", "/api/v1/annotations/"+adaAnn, map[string]any{"annotation": map[string]any{"label": "x"}}), http.StatusForbidden)
	expectError(t, bob.do("DELETE", "/api/v1/annotations/"+adaAnn, nil, nil), http.StatusForbidden)
	expectError(t, bob.json("PUT", "/api/v1/images/"+img+"/tags", map[string]any{"tags": []string{"x"}}), http.StatusForbidden)
	expectError(t, bob.do("DELETE", "/api/v1/images/"+img, nil, nil), http.StatusForbidden)
	expectError(t, bob.do("GET", "/api/v1/images/"+img+"/shares", nil, nil), http.StatusForbidden)

	// The author edits and deletes; the next read shows it.
	r = ada.json("PATCH", "/api/v1/annotations/"+adaAnn, map[string]any{"annotation": map[string]any{"label": "lynx"}})
	if r.Status != 200 || r.JSON(t)["annotation"].(map[string]any)["label"] != "lynx" {
		t.Fatalf("patch: %d %s", r.Status, r.Body)
	}
	if r := ada.do("GET", "/api/v1/annotations/"+adaAnn, nil, nil); r.Status != 200 ||
		r.JSON(t)["annotation"].(map[string]any)["label"] != "lynx" || r.JSON(t)["updated_at"] == nil {
		t.Fatalf("read after patch: %d %s", r.Status, r.Body)
	}
	for _, bad := range []struct {
		body   string
		status int
	}{
		{`{"annotation": "cat"}`, 422},
		{`{"annotation": null}`, 422},
		{`{"annotation": {"a": 1}, "image_id": "x"}`, 422}, // the image of an annotation does not change
		{`{"annotation": ` + strings.Repeat(`{"a":`, 10000) + `1` + strings.Repeat(`}`, 10000) + `}`, 422},
		{`{"annotation": {"a": 1, "a": 2}}`, 422},
	} {
		r := ada.do("PATCH", "/api/v1/annotations/"+adaAnn, strings.NewReader(bad.body), map[string]string{"Content-Type": "application/json"})
		expectError(t, r, bad.status)
	}
	expectError(t, ada.json("PATCH", "/api/v1/annotations/no-such-id", map[string]any{"annotation": map[string]any{}}), http.StatusNotFound)
	if r := ada.do("DELETE", "/api/v1/annotations/"+adaAnn, nil, nil); r.Status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	expectError(t, ada.do("GET", "/api/v1/annotations/"+adaAnn, nil, nil), http.StatusNotFound)
	expectError(t, ada.do("DELETE", "/api/v1/annotations/"+adaAnn, nil, nil), http.StatusNotFound)

	// Unshared: bob is out again, his own annotation on it included.
	if r := ada.do("DELETE", "/api/v1/images/"+img+"/shares/"+bobName, nil, nil); r.Status != 200 {
		t.Fatalf("unshare: %d %s", r.Status, r.Body)
	}
	// (ada's write: bob's reads see it once stored, not at once)
	eventually(t, "the unshare to be stored", 10*time.Second, func() bool {
		return bob.do("GET", "/api/v1/annotations?image_id="+img, nil, nil).Status == http.StatusNotFound
	})
	expectError(t, bob.do("GET", "/api/v1/annotations?image_id="+img, nil, nil), http.StatusNotFound)
	if r := bob.do("GET", "/api/v1/annotations/"+bobAnn, nil, nil); r.Status != 200 {
		t.Fatalf("bob still reads his own annotation: %d %s", r.Status, r.Body)
	}
}
