package gateway

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/loglimit"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
)

// Admin logins on network listeners ([[broker.admin]]) are the keys to the
// whole gateway, so guessing them is made slow twice over:
//
//   - the password is kept only as a PBKDF2 hash made when the
//     configuration loads (secrets.HashPassword, as for local device
//     passwords), so every check costs a slow hash;
//   - after a failed login the user and the source address wait before
//     the next check: 0 after the first failure, then 1 s, 2 s, 4 s …
//     up to adminMaxDelay. During the wait a login is refused at once
//     with CONNACK 5, without a hash. A successful login resets both;
//     failures older than adminForget are forgotten.
//
// A failure is counted before the hash is computed, so concurrent guesses
// see each other's delay instead of all passing the check at once.
// Device logins never pass through here and are never delayed. The price
// is that someone guessing can make the real admin wait up to
// adminMaxDelay on the network; the unix socket is never throttled.
const (
	adminMaxDelay = 30 * time.Second
	adminForget   = 15 * time.Minute
	// adminMaxSources bounds the per-address state: beyond it the
	// address with the oldest failure is forgotten (the per-user delay
	// still holds).
	adminMaxSources = 4096
)

// adminUser is an admin identity for network listeners.
type adminUser struct {
	name string
	hash string // PBKDF2 ($pbkdf2-sha256$…); the password is not kept
	wait backoff
}

// backoff is the failure state of one user or source address.
type backoff struct {
	failures int
	last     time.Time // latest failure
	until    time.Time // no check before this
}

// delayAfter is the wait after n consecutive failures.
func delayAfter(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	if n-2 >= 5 { // 1 s << 5 = 32 s
		return adminMaxDelay
	}
	return min(adminMaxDelay, time.Second<<(n-2))
}

// expire forgets failures older than adminForget.
func (b *backoff) expire(now time.Time) {
	if b.failures > 0 && now.Sub(b.last) >= adminForget {
		*b = backoff{}
	}
}

func (b *backoff) fail(now time.Time) {
	b.expire(now)
	b.failures++
	b.last = now
	b.until = now.Add(delayAfter(b.failures))
}

// adminLoginStats are the counters behind
// edgegw_broker_admin_login_failures_total.
type adminLoginStats struct {
	wrongPassword atomic.Uint64 // checked and wrong
	throttled     atomic.Uint64 // refused during a delay, not checked
}

// adminLogins authenticates [[broker.admin]] users and throttles guessing.
type adminLogins struct {
	now func() time.Time
	// check compares a password with a hash (secrets.CheckPassword;
	// tests count the calls).
	check func(encoded string, pw secrets.Secret) bool
	stats *adminLoginStats
	log   *slog.Logger
	limit *loglimit.Limiter

	mu      sync.Mutex
	users   map[string]*adminUser // replaced by setUsers
	sources map[string]*backoff   // by remote host
}

func newAdminLogins(users []*adminUser, now func() time.Time, stats *adminLoginStats, log *slog.Logger) *adminLogins {
	if now == nil {
		now = time.Now
	}
	if stats == nil {
		stats = &adminLoginStats{}
	}
	l := &adminLogins{users: map[string]*adminUser{}, now: now, check: secrets.CheckPassword, stats: stats, log: log,
		limit: loglimit.New(time.Minute, 5), sources: map[string]*backoff{}}
	l.limit.Now = now
	for _, u := range users {
		l.users[u.name] = u
	}
	return l
}

// loadAdminUsers reads the admins' password files and keeps only a PBKDF2
// hash of each password (iterations: secrets.DefaultPasswordIterations
// when 0).
func loadAdminUsers(admins []config.AdminUser, iterations int) ([]*adminUser, error) {
	if iterations == 0 {
		iterations = secrets.DefaultPasswordIterations
	}
	var users []*adminUser
	for _, u := range admins {
		pw, err := os.ReadFile(u.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("admin user %q: read password file: %w", u.User, err)
		}
		line, _, _ := strings.Cut(string(pw), "\n")
		line = strings.TrimSpace(line)
		if line == "" {
			return nil, fmt.Errorf("admin user %q: password file %s is empty", u.User, u.PasswordFile)
		}
		hash, err := secrets.HashPasswordIterations(secrets.NewSecret(line), iterations)
		if err != nil {
			return nil, fmt.Errorf("admin user %q: %w", u.User, err)
		}
		users = append(users, &adminUser{name: u.User, hash: hash})
	}
	return users, nil
}

// user returns the admin named name, or nil.
func (l *adminLogins) user(name string) *adminUser {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.users[name]
}

// setUsers replaces the admin users (a configuration reload). A user kept
// under the same name keeps its failure state, and so does every source
// address: a reload does not reset the throttling of a guesser.
func (l *adminLogins) setUsers(users []*adminUser) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[string]*adminUser, len(users))
	for _, u := range users {
		if old := l.users[u.name]; old != nil {
			u.wait = old.wait
		}
		m[u.name] = u
	}
	l.users = m
}

// sourceHost is the address part of a remote "host:port".
func sourceHost(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// login checks the password of admin u connecting from remote.
func (l *adminLogins) login(u *adminUser, remote string, pw secrets.Secret) (localbroker.Identity, error) {
	src := sourceHost(remote)
	now := l.now()

	l.mu.Lock()
	u.wait.expire(now)
	until := u.wait.until
	s := l.sources[src]
	if s != nil {
		s.expire(now)
		if s.until.After(until) {
			until = s.until
		}
	}
	if now.Before(until) {
		failures := u.wait.failures
		l.mu.Unlock()
		l.stats.throttled.Add(1)
		wait := until.Sub(now).Round(time.Millisecond)
		l.logFailure(u, remote, "admin login refused without a check: too many failed logins; waiting", failures, wait)
		return localbroker.Identity{}, refusal(localbroker.RefuseNotAuthorized,
			"admin %q: %d failed logins; next check in %s", u.name, failures, wait)
	}
	// Counted before the (slow) check: a concurrent guess sees the delay.
	u.wait.fail(now)
	if s == nil {
		s = l.newSource(src, now)
	}
	s.fail(now)
	l.mu.Unlock()

	if !pw.IsZero() && l.check(u.hash, pw) {
		l.mu.Lock()
		u.wait = backoff{}
		delete(l.sources, src)
		l.mu.Unlock()
		return localbroker.Identity{Admin: true, Name: u.name, Method: localbroker.MethodAdmin}, nil
	}
	l.stats.wrongPassword.Add(1)
	l.mu.Lock()
	failures, wait := u.wait.failures, max(u.wait.until.Sub(now), 0)
	l.mu.Unlock()
	l.logFailure(u, remote, "admin login failed: wrong password", failures, wait)
	return localbroker.Identity{}, refusal(localbroker.RefuseNotAuthorized, "admin %q: wrong password", u.name)
}

// newSource adds the state of a source address, forgetting the one with
// the oldest failure when there are adminMaxSources already; l.mu is held.
func (l *adminLogins) newSource(src string, now time.Time) *backoff {
	if len(l.sources) >= adminMaxSources {
		oldest := ""
		for k, b := range l.sources {
			if b.expire(now); b.failures == 0 {
				delete(l.sources, k)
				continue
			}
			if oldest == "" || b.last.Before(l.sources[oldest].last) {
				oldest = k
			}
		}
		if len(l.sources) >= adminMaxSources {
			delete(l.sources, oldest)
		}
	}
	b := &backoff{}
	l.sources[src] = b
	return b
}

// logFailure logs a failed admin login, at most 5 lines per user and
// minute (with a count of the lines held back).
func (l *adminLogins) logFailure(u *adminUser, remote, msg string, failures int, wait time.Duration) {
	if l.log == nil {
		return
	}
	ok, suppressed := l.limit.Allow(u.name)
	if !ok {
		return
	}
	args := []any{"user", u.name, "remote", logsafe.Clip(remote), "failures", failures, "wait", wait}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.log.Warn(msg, args...)
}
