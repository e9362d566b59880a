package secrets

import (
	"container/list"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

// Local password hashing.
//
// A field device that logs into the local broker with a password is checked
// against a slow, salted PBKDF2-HMAC-SHA256 hash. The encoded form names the
// algorithm and iteration count, so the cost can be raised later and old
// hashes still verify (see PasswordNeedsRehash):
//
//	$pbkdf2-sha256$i=100000$<salt, base64 without padding>$<hash, base64 without padding>
const (
	// DefaultPasswordIterations is the PBKDF2 iteration count HashPassword
	// uses. About 17 ms per check on one x86 core, 5-10 times that on a
	// small ARM board; PasswordChecker keeps reconnects from paying it
	// again.
	DefaultPasswordIterations = 100_000
	// MinPasswordIterations is the lowest iteration count HashPasswordIterations
	// accepts and CheckPassword trusts (tests use it to stay fast).
	MinPasswordIterations = 1_000
	// maxPasswordIterations bounds what CheckPassword will compute, so that
	// a damaged or hostile encoded hash cannot pin a core for minutes.
	maxPasswordIterations = 10_000_000

	pbkdf2Scheme   = "pbkdf2-sha256"
	pwSaltLen      = 16
	pwHashLen      = 32
	pwMaxSaltLen   = 64
	pwEncodedLimit = 256
)

var pwB64 = base64.RawStdEncoding

// HashPassword hashes pw with DefaultPasswordIterations and a fresh random
// salt and returns the encoded hash. The encoded hash is not a secret value
// in the sense of Secret, but it allows offline guessing: do not print it.
func HashPassword(pw Secret) (string, error) {
	return HashPasswordIterations(pw, DefaultPasswordIterations)
}

// HashPasswordIterations is HashPassword with an explicit iteration count
// (at least MinPasswordIterations).
func HashPasswordIterations(pw Secret, iterations int) (string, error) {
	if pw.IsZero() {
		return "", errors.New("hash password: password is empty")
	}
	if iterations < MinPasswordIterations || iterations > maxPasswordIterations {
		return "", fmt.Errorf("hash password: %d iterations out of range [%d, %d]", iterations, MinPasswordIterations, maxPasswordIterations)
	}
	salt := make([]byte, pwSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: read random salt: %w", err)
	}
	dk, err := pbkdf2.Key(sha256.New, pw.Reveal(), salt, iterations, pwHashLen)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return "$" + pbkdf2Scheme + "$i=" + strconv.Itoa(iterations) + "$" + pwB64.EncodeToString(salt) + "$" + pwB64.EncodeToString(dk), nil
}

// CheckPassword reports whether pw matches the encoded hash made by
// HashPassword. It compares in constant time and returns false for an empty
// password or a malformed encoded hash.
func CheckPassword(encoded string, pw Secret) bool {
	h, err := parsePasswordHash(encoded)
	if err != nil || pw.IsZero() {
		return false
	}
	dk, err := pbkdf2.Key(sha256.New, pw.Reveal(), h.salt, h.iterations, len(h.hash))
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(dk, h.hash) == 1
}

// PasswordNeedsRehash reports whether encoded was made with fewer than
// iterations rounds (or is not a hash this package understands), so that a
// caller holding the plain password after a successful check can store a
// stronger hash.
func PasswordNeedsRehash(encoded string, iterations int) bool {
	h, err := parsePasswordHash(encoded)
	return err != nil || h.iterations < iterations
}

type passwordHash struct {
	iterations int
	salt, hash []byte
}

// parsePasswordHash decodes the encoded form strictly. Its errors describe
// the shape only.
func parsePasswordHash(encoded string) (passwordHash, error) {
	var h passwordHash
	if len(encoded) > pwEncodedLimit {
		return h, errors.New("encoded password hash too long")
	}
	parts := strings.Split(encoded, "$")
	if len(parts) != 5 || parts[0] != "" {
		return h, errors.New("encoded password hash: want $scheme$i=N$salt$hash")
	}
	if parts[1] != pbkdf2Scheme {
		return h, fmt.Errorf("encoded password hash: unknown scheme %s", quoteIdent(parts[1]))
	}
	it, ok := strings.CutPrefix(parts[2], "i=")
	if !ok {
		return h, errors.New("encoded password hash: missing i=iterations")
	}
	n, err := strconv.Atoi(it)
	if err != nil || n < MinPasswordIterations || n > maxPasswordIterations || strconv.Itoa(n) != it {
		return h, errors.New("encoded password hash: invalid iteration count")
	}
	salt, err := pwB64.Strict().DecodeString(parts[3])
	if err != nil || len(salt) < pwSaltLen || len(salt) > pwMaxSaltLen {
		return h, errors.New("encoded password hash: invalid salt")
	}
	sum, err := pwB64.Strict().DecodeString(parts[4])
	if err != nil || len(sum) != pwHashLen {
		return h, errors.New("encoded password hash: invalid hash")
	}
	return passwordHash{iterations: n, salt: salt, hash: sum}, nil
}

// DefaultPasswordCacheSize is the number of verified (hash, password)
// pairs a PasswordChecker made with size 0 remembers.
const DefaultPasswordCacheSize = 4096

// PasswordChecker verifies local passwords with CheckPassword and remembers
// successful checks, so that a device that reconnects (or a thousand that
// reconnect after a network blip) costs one slow hash per process lifetime
// instead of one per connection.
//
// An entry is an HMAC-SHA256, under a random key made per checker, of the
// encoded hash and the password; neither is kept. Changing a device's
// password changes its encoded hash (new salt), so old entries never match
// again and age out. Failed checks are never cached. The cache is a
// bounded LRU.
//
// Slow checks run at most max(1, GOMAXPROCS/2) at a time, so a connection
// storm at boot leaves CPU for the rest of the gateway. A PasswordChecker is
// safe for concurrent use.
type PasswordChecker struct {
	key  [32]byte
	max  int
	slow chan struct{}

	mu     sync.Mutex
	lru    *list.List // of [32]byte, most recent at the front
	idx    map[[32]byte]*list.Element
	hits   uint64
	misses uint64
}

// PasswordCheckerStats are counters of a PasswordChecker.
type PasswordCheckerStats struct {
	Entries int    // remembered successful checks
	Hits    uint64 // checks answered from memory
	Misses  uint64 // checks that computed the slow hash
}

// NewPasswordChecker returns a checker remembering up to maxEntries
// successful checks (DefaultPasswordCacheSize if maxEntries <= 0).
func NewPasswordChecker(maxEntries int) *PasswordChecker {
	if maxEntries <= 0 {
		maxEntries = DefaultPasswordCacheSize
	}
	c := &PasswordChecker{
		max:  maxEntries,
		slow: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)),
		lru:  list.New(),
		idx:  make(map[[32]byte]*list.Element),
	}
	if _, err := rand.Read(c.key[:]); err != nil {
		// crypto/rand.Read does not fail on supported platforms (Go 1.24+);
		// a checker with a predictable key would only weaken the cache.
		panic("secrets: read random password cache key: " + err.Error())
	}
	return c
}

// Check reports whether pw matches encoded, answering from memory when the
// same pair was verified before.
func (c *PasswordChecker) Check(encoded string, pw Secret) bool {
	if encoded == "" || pw.IsZero() {
		return false
	}
	k := c.cacheKey(encoded, pw)
	c.mu.Lock()
	if e, ok := c.idx[k]; ok {
		c.lru.MoveToFront(e)
		c.hits++
		c.mu.Unlock()
		return true
	}
	c.misses++
	c.mu.Unlock()

	c.slow <- struct{}{}
	ok := CheckPassword(encoded, pw)
	<-c.slow
	if !ok {
		return false
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if e, dup := c.idx[k]; dup { // a concurrent check of the same pair won
		c.lru.MoveToFront(e)
		return true
	}
	c.idx[k] = c.lru.PushFront(k)
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.idx, old.Value.([32]byte))
	}
	return true
}

// Stats returns the checker's counters.
func (c *PasswordChecker) Stats() PasswordCheckerStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return PasswordCheckerStats{Entries: c.lru.Len(), Hits: c.hits, Misses: c.misses}
}

// String describes the checker without its key or entries.
func (c *PasswordChecker) String() string {
	s := c.Stats()
	return fmt.Sprintf("PasswordChecker(%d/%d entries, %d hits, %d misses)", s.Entries, c.max, s.Hits, s.Misses)
}

// GoString is String, so that %#v does not dump the key.
func (c *PasswordChecker) GoString() string { return c.String() }

func (c *PasswordChecker) cacheKey(encoded string, pw Secret) [32]byte {
	m := hmac.New(sha256.New, c.key[:])
	var n [binary.MaxVarintLen64]byte
	m.Write(n[:binary.PutUvarint(n[:], uint64(len(encoded)))])
	m.Write([]byte(encoded))
	m.Write([]byte(pw.Reveal()))
	var k [32]byte
	m.Sum(k[:0])
	return k
}
