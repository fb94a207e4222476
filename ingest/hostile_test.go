package ingest_test

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/ingest"
)

// deepJSON nests n objects: {"a":{"a":...{}...}}.
func deepJSON(n int) string {
	return strings.Repeat(`{"a":`, n-1) + "{}" + strings.Repeat("}", n-1)
}

// Annotations are bounded by one rule (bus.ValidateAnnotation): depth,
// size, duplicate keys, UTF-8; the edge answers with the limit named.
func TestAnnotationBounds(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	for _, tc := range []struct {
		name   string
		body   string
		ct     string
		status int
		detail string
	}{
		{"depth 64 accepted", `{"annotation":` + deepJSON(bus.MaxAnnotationDepth) + `}`, "", 202, ""},
		{"depth 65", `{"annotation":` + deepJSON(bus.MaxAnnotationDepth+1) + `}`, "", 422, "deeper than 64 levels"},
		{"depth 10000", `{"annotation":` + deepJSON(10_000) + `}`, "", 422, "deeper than 64 levels"},
		{"depth 10000 of arrays", `{"annotation":{"a":` + strings.Repeat("[", 10_000) + strings.Repeat("]", 10_000) + `}}`, "", 422, "deeper than 64 levels"},
		{"duplicate key in the annotation", `{"annotation":{"label":"cat","label":"dog"}}`, "", 422, `duplicate key "label"`},
		{"duplicate escaped key", `{"annotation":{"label":"cat","\u006cabel":"dog"}}`, "", 422, `duplicate key "label"`},
		{"duplicate key in the body", `{"annotation":{"a":1},"annotation":{"b":2}}`, "", 422, `duplicate key "annotation"`},
		{"same key in sibling objects is fine", `{"annotation":{"a":{"x":1},"b":{"x":2}}}`, "", 202, ""},
		{"invalid UTF-8", "{\"annotation\":{\"a\":\"\xff\xfe\"}}", "", 400, "UTF-8"},
		{"charset utf-16", `{"annotation":{"a":1}}`, "application/json; charset=utf-16", 415, "UTF-8"},
		{"charset latin1", `{"annotation":{"a":1}}`, "application/json;charset=ISO-8859-1", 415, "UTF-8"},
		{"charset utf-8 accepted", `{"annotation":{"a":1}}`, "application/json; charset=UTF-8", 202, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct := tc.ct
			if ct == "" {
				ct = "application/json"
			}
			r := c.do("POST", "/api/v1/annotations", strings.NewReader(tc.body), map[string]string{"Content-Type": ct})
			if tc.status == 202 {
				if r.Status != 202 {
					t.Fatalf("status %d: %s", r.Status, truncate(r.Body))
				}
				return
			}
			got := expectError(t, r, tc.status)
			if !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
	// Other JSON bodies follow the same rules.
	r := c.do("PUT", "/api/v1/images/x/tags", strings.NewReader(`{"tags":["a"],"tags":["b"]}`), map[string]string{"Content-Type": "application/json"})
	expectError(t, r, 422)
	r = c.do("POST", "/api/v1/auth/login", strings.NewReader(`{"username":"a","password":"b"}`), map[string]string{"Content-Type": "application/json; charset=utf-16"})
	expectError(t, r, 415)
	r = c.do("POST", "/api/v1/iris/range", strings.NewReader(deepJSON(10_000)), map[string]string{"Content-Type": "application/json"})
	expectError(t, r, 422)
}

// behindIngress makes the test's loopback peer the trusted ingress, so
// each request can come "from" the address in X-Forwarded-For.
func behindIngress(c *ingest.Config) {
	c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
}

func loginFrom(c *client, addr, user, pw string) response {
	c.t.Helper()
	body, _ := json.Marshal(map[string]string{"username": user, "password": pw})
	h := map[string]string{"Content-Type": "application/json"}
	if addr != "" {
		h["X-Forwarded-For"] = "6.6.6.6, " + addr // the left entry is client-written: ignored
	}
	return c.do("POST", "/api/v1/auth/login", bytes.NewReader(body), h)
}

// Failures from one address slow that address down (429 + Retry-After),
// on every replica, while the owner from elsewhere still logs in.
func TestLoginThrottleDoesNotLockOwnerOut(t *testing.T) {
	a := startIngest(t, behindIngress)
	b := startIngest(t, behindIngress, func(c *ingest.Config) { c.Database = a.Cfg.Database })
	ca, cb := a.client(t), b.client(t)
	// A name of its own: the throttle outlives the test (in NATS KV), and
	// -count=2 must not meet the first run's.
	name := "owner-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if r := ca.json("POST", "/api/v1/auth/register", map[string]string{"username": name, "password": "longenough", "signupCode": "letmein"}); r.Status != 201 {
		t.Fatalf("register: %d %s", r.Status, r.Body)
	}
	// Addresses of its own too, for the same reason.
	subnet := fmt.Sprintf("10.%d.%d.", rand.IntN(256), rand.IntN(256))
	attacker, owner := subnet+"10", subnet+"11"
	for i := range 5 {
		expectError(t, loginFrom(ca, attacker, name, "guess"+strconv.Itoa(i)), 401)
	}
	// The other replica knows: even the right password waits.
	r := loginFrom(cb, attacker, name, "longenough")
	expectError(t, r, 429)
	if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 15*60 {
		t.Fatalf("Retry-After %q", r.Header.Get("Retry-After"))
	}
	// The owner from another address gets in, on both replicas.
	for _, c := range []*client{ca, cb} {
		if r := loginFrom(c, owner, name, "longenough"); r.Status != 200 {
			t.Fatalf("owner locked out: %d %s", r.Status, r.Body)
		}
	}
	// The delay grows: one more failure after the wait would be longer.
	// (Checked on the rule itself in TestThrottleDelayGrows.)

	// Spraying many accounts from one address throttles the address.
	sprayer := subnet + "12"
	for i := range 20 {
		expectError(t, loginFrom(ca, sprayer, "spray-"+strconv.Itoa(i), "wrongwrong"), 401)
	}
	expectError(t, loginFrom(cb, sprayer, "someone-else", "wrongwrong"), 429)
	if r := loginFrom(ca, owner, name, "longenough"); r.Status != 200 {
		t.Fatalf("owner throttled by a sprayer: %d %s", r.Status, r.Body)
	}

	// Without a trusted proxy, X-Forwarded-For is the client's own text:
	// changing it on every attempt does not escape the throttle.
	direct := startIngest(t, func(c *ingest.Config) { c.Database = a.Cfg.Database })
	cd := direct.client(t)
	for i := range 5 {
		r := cd.do("POST", "/api/v1/auth/login", strings.NewReader(`{"username":"`+name+`","password":"nope`+strconv.Itoa(i)+`"}`),
			map[string]string{"Content-Type": "application/json", "X-Forwarded-For": "203.0.113." + strconv.Itoa(i)})
		expectError(t, r, 401)
	}
	r = cd.do("POST", "/api/v1/auth/login", strings.NewReader(`{"username":"`+name+`","password":"longenough"}`),
		map[string]string{"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.99"})
	expectError(t, r, 429)
}

// Logout revokes the token on every replica until it expires; the
// user's other tokens stay valid.
func TestLogoutRevokesToken(t *testing.T) {
	a := startIngest(t)
	b := startIngest(t, func(c *ingest.Config) { c.Database = a.Cfg.Database })
	c, name := a.newUser(t)
	other := a.client(t)
	r := other.json("POST", "/api/v1/auth/login", map[string]string{"username": name, "password": "correct horse"})
	if r.Status != 200 {
		t.Fatalf("login: %d %s", r.Status, r.Body)
	}
	other.token = r.JSON(t)["token"].(string)
	onB := b.client(t)
	onB.token = c.token
	for _, cl := range []*client{c, onB} {
		if r := cl.do("GET", "/api/v1/annotations", nil, nil); r.Status != 200 {
			t.Fatalf("before logout: %d %s", r.Status, r.Body)
		}
	}
	r = c.do("POST", "/api/v1/auth/logout", nil, nil)
	if r.Status != 200 || !strings.Contains(r.Header.Get("Set-Cookie"), "gradeline_token=;") {
		t.Fatalf("logout: %d %s %q", r.Status, r.Body, r.Header.Get("Set-Cookie"))
	}
	if got := expectError(t, c.do("GET", "/api/v1/annotations", nil, nil), 401); !strings.Contains(got, "revoked") {
		t.Fatalf("revoked token: %s", got)
	}
	// The other replica learns it through the bucket it watches.
	eventually(t, "the revocation to reach the other replica", 10*time.Second, func() bool {
		return onB.do("GET", "/api/v1/annotations", nil, nil).Status == 401
	})
	if r := other.do("GET", "/api/v1/annotations", nil, nil); r.Status != 200 {
		t.Fatalf("the user's other token: %d %s", r.Status, r.Body)
	}
	// A restarted replica loads the list before serving.
	fresh := startIngest(t, func(cfg *ingest.Config) { cfg.Database = a.Cfg.Database })
	onFresh := fresh.client(t)
	onFresh.token = c.token
	expectError(t, onFresh.do("GET", "/api/v1/annotations", nil, nil), 401)
	expectError(t, a.client(t).do("POST", "/api/v1/auth/logout", nil, nil), 401)
}

func TestPasswordRules(t *testing.T) {
	s := startIngest(t)
	c := s.client(t)
	long := strings.Repeat("p", 256)
	if r := c.json("POST", "/api/v1/auth/register", map[string]string{"username": "longpw-user", "password": long, "signupCode": "letmein"}); r.Status != 201 {
		t.Fatalf("register with 256 bytes: %d %s", r.Status, r.Body)
	}
	if r := c.json("POST", "/api/v1/auth/login", map[string]string{"username": "longpw-user", "password": long}); r.Status != 200 {
		t.Fatalf("login with 256 bytes: %d %s", r.Status, r.Body)
	}
	// Never truncated: 256 bytes plus anything is over the limit, as at register.
	expectError(t, c.json("POST", "/api/v1/auth/login", map[string]string{"username": "longpw-user", "password": long + "anything"}), 422)
	expectError(t, c.json("POST", "/api/v1/auth/register", map[string]string{"username": "longpw-user2", "password": long + "x", "signupCode": "letmein"}), 422)
	for _, pw := range []string{"password", "Password", "12345678", "iloveyou", "qwertyuiop"} {
		got := expectError(t, c.json("POST", "/api/v1/auth/register", map[string]string{"username": "common-pw", "password": pw, "signupCode": "letmein"}), 422)
		if !strings.Contains(got, "common") {
			t.Fatalf("%q: %s", pw, got)
		}
	}
}

// Errors are JSON for every method, HEAD works where GET does, private
// answers are not cached, and nothing is sniffed; /metrics is not public.
func TestEdgeResponses(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	for _, m := range []string{"PROPFIND", "BREW", "MKCOL"} {
		r := c.do(m, "/api/v1/annotations", nil, nil)
		expectError(t, r, 405)
		if r.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Fatalf("%s: no nosniff", m)
		}
	}
	expectError(t, c.do("GET", "/metrics", nil, nil), 404)
	r := c.do("HEAD", "/api/v1/annotations", nil, nil)
	if r.Status != 200 || len(r.Body) != 0 {
		t.Fatalf("HEAD: %d %q", r.Status, r.Body)
	}
	if r := c.do("HEAD", "/healthz", nil, nil); r.Status != 200 {
		t.Fatalf("HEAD /healthz: %d", r.Status)
	}
	r = c.do("GET", "/api/v1/annotations", nil, nil)
	if r.Header.Get("Cache-Control") != "no-store" || r.Header.Get("X-Content-Type-Options") != "nosniff" || r.Header.Get("X-Request-Id") == "" {
		t.Fatalf("headers %v", r.Header)
	}
	// A broken token says so, without the JWT library's reasons.
	bad := s.client(t)
	bad.token = "eyJhbGciOiJIUzI1NiJ9.e30.xx"
	got := expectError(t, bad.do("GET", "/api/v1/annotations", nil, nil), 401)
	for _, leak := range []string{"token is malformed", "signature", "jwt", "segments"} {
		if strings.Contains(strings.ToLower(got), leak) {
			t.Fatalf("401 carries library text %q: %s", leak, got)
		}
	}
}

// bigPNG16 streams a valid w×h 16-bit RGBA PNG of one colour: a 7000×7000
// one is a few hundred KB and decodes to 392 MB.
func bigPNG16(t testing.TB, w, h int) []byte {
	t.Helper()
	var out bytes.Buffer
	out.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(data)))
		out.Write(n[:])
		out.WriteString(typ)
		out.Write(data)
		binary.BigEndian.PutUint32(n[:], crc32.ChecksumIEEE(append([]byte(typ), data...)))
		out.Write(n[:])
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = 16, 6
	chunk("IHDR", ihdr)
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.BestSpeed)
	row := make([]byte, 1+8*w)
	for i := 1; i < len(row); i++ {
		row[i] = 0x7f
	}
	for range h {
		_, _ = zw.Write(row)
	}
	_ = zw.Close()
	chunk("IDAT", z.Bytes())
	chunk("IEND", nil)
	return out.Bytes()
}

// The catalogue validates the whole image, and an image far beyond what a
// model needs is refused naming the limit instead of being decoded.
func TestImagesCostWhatTheyAreWorth(t *testing.T) {
	s := startIngest(t)
	c, _ := s.newUser(t)
	photo := datasetImage(t, "flower.jpg")
	smallPNG := pngImage(t, 200, 150)
	huge := bigPNG16(t, 7000, 7000)
	for _, tc := range []struct {
		name   string
		data   []byte
		status int
		detail string
	}{
		{"half a JPEG", photo[:len(photo)/2], 422, "truncated or corrupt"},
		{"JPEG without its end", photo[:len(photo)-200], 422, "truncated or corrupt"},
		{"half a PNG", smallPNG[:len(smallPNG)/2], 422, "truncated or corrupt"},
		{"7000x7000 16-bit PNG", huge, 413, "7000x7000"},
	} {
		t.Run("catalogue "+tc.name, func(t *testing.T) {
			r := c.multipart("POST", "/api/v1/images", nil, filePart{"image", "x", tc.data})
			if got := expectError(t, r, tc.status); !strings.Contains(got, tc.detail) {
				t.Fatalf("error %q lacks %q", got, tc.detail)
			}
		})
	}
	if r := c.multipart("POST", "/api/v1/images", nil, filePart{"image", "flower.jpg", photo}); r.Status != 201 {
		t.Fatalf("a whole photograph: %d %s", r.Status, r.Body)
	}
	t.Run("grade the 7000x7000 PNG", func(t *testing.T) {
		needInference(t)
		r := c.multipart("POST", "/api/v1/grades", [][2]string{{"model", "fashion"}}, filePart{"image", "huge.png", huge})
		got := expectError(t, r, 422)
		for _, want := range []string{"7000x7000", "max_pixels"} {
			if !strings.Contains(got, want) {
				t.Fatalf("error %q lacks %q", got, want)
			}
		}
	})
}
