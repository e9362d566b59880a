package secrets_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/edgegw/edgegw/secrets"
)

// knownHash was computed independently with Python:
// hashlib.pbkdf2_hmac('sha256', b'correct horse battery staple',
// b'0123456789abcdef', 1000, 32), base64 without padding.
const knownHash = "$pbkdf2-sha256$i=1000$MDEyMzQ1Njc4OWFiY2RlZg$yqSq2SygY1sB4EcH9f2FG0JTMES+wqLsOT5YmiRBplI"

func TestCheckPasswordKnownAnswer(t *testing.T) {
	if !secrets.CheckPassword(knownHash, secrets.NewSecret("correct horse battery staple")) {
		t.Error("independently computed hash does not verify")
	}
	if secrets.CheckPassword(knownHash, secrets.NewSecret("correct horse battery stapl")) {
		t.Error("wrong password verifies")
	}
}

func TestHashPassword(t *testing.T) {
	pw := secrets.NewSecret("s3cret-pw")
	h1, err := secrets.HashPasswordIterations(pw, secrets.MinPasswordIterations)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := secrets.HashPasswordIterations(pw, secrets.MinPasswordIterations)
	if err != nil {
		t.Fatal(err)
	}
	if h1 == h2 {
		t.Error("two hashes of one password are equal: salt is not random")
	}
	if !strings.HasPrefix(h1, "$pbkdf2-sha256$i=1000$") || strings.Contains(h1, pw.Reveal()) {
		t.Errorf("unexpected encoding shape")
	}
	for _, h := range []string{h1, h2} {
		if !secrets.CheckPassword(h, pw) {
			t.Error("own hash does not verify")
		}
		if secrets.CheckPassword(h, secrets.NewSecret("s3cret-pW")) || secrets.CheckPassword(h, secrets.Secret{}) {
			t.Error("wrong or empty password verifies")
		}
	}

	def, err := secrets.HashPassword(pw)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("$pbkdf2-sha256$i=%d$", secrets.DefaultPasswordIterations); !strings.HasPrefix(def, want) || !secrets.CheckPassword(def, pw) {
		t.Errorf("default hash does not start with %q or does not verify", want)
	}
	if secrets.DefaultPasswordIterations < 100_000 {
		t.Errorf("default iterations %d below 100000", secrets.DefaultPasswordIterations)
	}

	if _, err := secrets.HashPassword(secrets.Secret{}); err == nil {
		t.Error("empty password hashed")
	}
	for _, n := range []int{0, 999, 1 << 30} {
		if _, err := secrets.HashPasswordIterations(pw, n); err == nil {
			t.Errorf("%d iterations accepted", n)
		}
	}

	if secrets.PasswordNeedsRehash(h1, secrets.MinPasswordIterations) {
		t.Error("fresh hash needs rehash at its own cost")
	}
	if !secrets.PasswordNeedsRehash(h1, secrets.DefaultPasswordIterations) || !secrets.PasswordNeedsRehash("garbage", 1) {
		t.Error("weaker or unknown hash does not need rehash")
	}
}

func TestCheckPasswordMalformed(t *testing.T) {
	pw := secrets.NewSecret("correct horse battery staple")
	parts := strings.Split(knownHash, "$") // "", scheme, i=, salt, hash
	join := func(p ...string) string { return strings.Join(p, "$") }
	for _, enc := range []string{
		"",
		"correct horse battery staple",
		"$pbkdf2-sha256$",
		join("", "pbkdf2-sha1", parts[2], parts[3], parts[4]),
		join("", parts[1], "i=999", parts[3], parts[4]),
		join("", parts[1], "i=01000", parts[3], parts[4]),
		join("", parts[1], "i=-1", parts[3], parts[4]),
		join("", parts[1], "i=99999999999999999999", parts[3], parts[4]),
		join("", parts[1], "1000", parts[3], parts[4]),
		join("", parts[1], parts[2], "c2hvcnQ", parts[4]),       // salt too short
		join("", parts[1], parts[2], parts[3]+"=", parts[4]),    // padding
		join("", parts[1], parts[2], parts[3], parts[4][:40]),   // truncated hash
		join("", parts[1], parts[2], parts[3], parts[4]+"AAAA"), // long hash
		join("", parts[1], parts[2], parts[3], "!"+parts[4][1:]),
		join("", parts[1], parts[2], parts[3], parts[4], "extra"),
		"x" + knownHash,
		knownHash + strings.Repeat("A", 300),
	} {
		if secrets.CheckPassword(enc, pw) {
			t.Errorf("malformed %q verifies", enc)
		}
	}
	// One flipped character in the hash part must fail.
	b := []byte(knownHash)
	b[len(b)-3] ^= 1
	if secrets.CheckPassword(string(b), pw) {
		t.Error("tampered hash verifies")
	}
}

func TestPasswordChecker(t *testing.T) {
	hash := func(pw string) string {
		h, err := secrets.HashPasswordIterations(secrets.NewSecret(pw), secrets.MinPasswordIterations)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	hA, hB, hC := hash("pw-a"), hash("pw-b"), hash("pw-c")
	c := secrets.NewPasswordChecker(2)
	want := func(st secrets.PasswordCheckerStats) {
		t.Helper()
		if got := c.Stats(); got != st {
			t.Errorf("stats = %+v, want %+v", got, st)
		}
	}

	if !c.Check(hA, secrets.NewSecret("pw-a")) {
		t.Fatal("right password refused")
	}
	want(secrets.PasswordCheckerStats{Entries: 1, Misses: 1})
	if !c.Check(hA, secrets.NewSecret("pw-a")) {
		t.Fatal("cached password refused")
	}
	want(secrets.PasswordCheckerStats{Entries: 1, Hits: 1, Misses: 1})

	// Wrong passwords are never cached and never hit.
	for range 2 {
		if c.Check(hA, secrets.NewSecret("pw-b")) {
			t.Fatal("wrong password accepted")
		}
	}
	want(secrets.PasswordCheckerStats{Entries: 1, Hits: 1, Misses: 3})
	// A cached password does not unlock another hash.
	if c.Check(hB, secrets.NewSecret("pw-a")) {
		t.Fatal("password accepted for another hash")
	}
	if c.Check("", secrets.NewSecret("pw-a")) || c.Check(hA, secrets.Secret{}) {
		t.Fatal("empty input accepted")
	}

	// Bounded: the least recently used entry goes.
	c.Check(hB, secrets.NewSecret("pw-b"))
	c.Check(hA, secrets.NewSecret("pw-a")) // hit, A is now most recent
	c.Check(hC, secrets.NewSecret("pw-c")) // evicts B
	st := c.Stats()
	if st.Entries != 2 {
		t.Errorf("entries = %d, want 2", st.Entries)
	}
	c.Check(hA, secrets.NewSecret("pw-a"))
	if c.Stats().Hits != st.Hits+1 {
		t.Error("recently used entry was evicted")
	}
	c.Check(hB, secrets.NewSecret("pw-b"))
	if c.Stats().Misses != st.Misses+1 {
		t.Error("least recently used entry was not evicted")
	}
	if s := fmt.Sprintf("%v %+v %#v", c, c, c); strings.Contains(s, "pw-") || !strings.Contains(s, "PasswordChecker(") {
		t.Errorf("checker formats as %q", s)
	}
}

func TestPasswordCheckerConcurrent(t *testing.T) {
	h, err := secrets.HashPasswordIterations(secrets.NewSecret("pw"), secrets.MinPasswordIterations)
	if err != nil {
		t.Fatal(err)
	}
	c := secrets.NewPasswordChecker(0)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for range 20 {
				pw, want := "pw", true
				if i%2 == 1 {
					pw, want = "nope", false
				}
				if got := c.Check(h, secrets.NewSecret(pw)); got != want {
					t.Errorf("Check(%s) = %v", pw, got)
					return
				}
			}
		})
	}
	wg.Wait()
	if st := c.Stats(); st.Entries != 1 || st.Hits+st.Misses != 320 {
		t.Errorf("stats %+v, want 1 entry and 320 checks", st)
	}
}

func BenchmarkHashPasswordDefault(b *testing.B) {
	pw := secrets.NewSecret("benchmark password")
	for b.Loop() {
		if _, err := secrets.HashPassword(pw); err != nil {
			b.Fatal(err)
		}
	}
}
