package gateway

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
)

// loginClock is a clock a test moves by hand.
type loginClock struct{ t time.Time }

func (c *loginClock) now() time.Time          { return c.t }
func (c *loginClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// newTestAdmins is an adminLogins with the user "ops" (password "right"),
// on clk, counting the password checks in *checks.
func newTestAdmins(t *testing.T, clk *loginClock, checks *int) *adminLogins {
	t.Helper()
	pwFile := filepath.Join(t.TempDir(), "ops.pw")
	if err := os.WriteFile(pwFile, []byte("right\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := loadAdminUsers([]config.AdminUser{{User: "ops", PasswordFile: pwFile}}, secrets.MinPasswordIterations)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(users[0].hash, "$pbkdf2-sha256$") {
		t.Fatalf("admin password kept as %q, want a PBKDF2 hash", users[0].hash)
	}
	l := newAdminLogins(users, clk.now, nil, slog.New(slog.DiscardHandler))
	l.check = func(encoded string, pw secrets.Secret) bool {
		*checks++
		return secrets.CheckPassword(encoded, pw)
	}
	return l
}

func refusedCode(t *testing.T, err error) byte {
	t.Helper()
	r, ok := err.(*localbroker.Refusal)
	if !ok {
		t.Fatalf("err = %v, want a *localbroker.Refusal", err)
	}
	return r.Code
}

// TestAdminLoginBackoff: after N wrong guesses a login waits 0, 1 s, 2 s,
// 4 s … (at most 30 s); during the wait it is refused with CONNACK 5
// without computing the hash; after it the right password works and
// resets the count. A device's login goes through the authenticator
// untouched.
func TestAdminLoginBackoff(t *testing.T) {
	clk := &loginClock{t: time.Unix(1_700_000_000, 0)}
	checks := 0
	l := newTestAdmins(t, clk, &checks)
	u := l.user("ops")
	const remote = "192.0.2.7:50000"

	wantDelay := []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, want := range wantDelay {
		before := checks
		_, err := l.login(u, remote, secrets.NewSecret(fmt.Sprintf("guess-%d", i)))
		if code := refusedCode(t, err); code != localbroker.RefuseNotAuthorized || checks != before+1 {
			t.Fatalf("guess %d: code %d, %d checks; want 5 and one check", i, code, checks-before)
		}
		if want > 0 {
			// During the wait: refused at once, no hash, even the right password.
			for _, pw := range []string{"right", "another-guess"} {
				_, err := l.login(u, remote, secrets.NewSecret(pw))
				if code := refusedCode(t, err); code != localbroker.RefuseNotAuthorized {
					t.Fatalf("during the %v wait after guess %d: code %d", want, i, code)
				}
			}
			if checks != before+1 {
				t.Fatalf("during the wait after guess %d: %d hashes computed, want none", i, checks-before-1)
			}
			clk.advance(want - time.Millisecond)
			if _, err := l.login(u, remote, secrets.NewSecret("right")); err == nil {
				t.Fatalf("right password 1 ms before the %v wait ended was accepted", want)
			}
			clk.advance(time.Millisecond)
		}
	}
	if got := l.stats.throttled.Load(); got != uint64(3*(len(wantDelay)-1)) {
		t.Errorf("throttled = %d, want %d", got, 3*(len(wantDelay)-1))
	}
	if got := l.stats.wrongPassword.Load(); got != uint64(len(wantDelay)) {
		t.Errorf("wrongPassword = %d, want %d", got, len(wantDelay))
	}
	clk.advance(30 * time.Second)
	id, err := l.login(u, remote, secrets.NewSecret("right"))
	if err != nil || !id.Admin || id.Name != "ops" {
		t.Fatalf("right password after the wait: %+v, %v", id, err)
	}
	if u.wait.failures != 0 || len(l.sources) != 0 {
		t.Fatalf("success did not reset: user %+v, %d sources", u.wait, len(l.sources))
	}

	// The authenticator sends only admin names here; a device from the
	// same address while the admin waits is checked as usual.
	for range 3 {
		l.login(u, remote, secrets.NewSecret("wrong"))
	}
	a := &authenticator{admins: l, modes: map[string]bool{config.AuthPassword: true}, log: slog.New(slog.DiscardHandler)}
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	reg := openTestRegistry(t, cfg)
	t.Cleanup(func() { reg.Close() })
	if _, err := reg.PutProduct(secrets.Product{ProductKey: "a1Prod", Dialect: secrets.Aliyun}); err != nil {
		t.Fatal(err)
	}
	hash, err := secrets.HashPasswordIterations(secrets.NewSecret("dev-pw"), secrets.MinPasswordIterations)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.AddDevice(secrets.Device{ProductKey: "a1Prod", DeviceName: "dev1", DeviceSecret: secrets.NewSecret("0123456789abcdef0123456789abcdef"), LocalPassword: hash}); err != nil {
		t.Fatal(err)
	}
	a.reg = reg
	if _, err := a.Authenticate(localbroker.ConnectRequest{ClientID: "dev1", Username: "dev1&a1Prod", Password: secrets.NewSecret("dev-pw"),
		Remote: remote, Transport: localbroker.TransportTCP}); err != nil {
		t.Fatalf("device login while the admin waits: %v", err)
	}
	if _, err := a.Authenticate(localbroker.ConnectRequest{Username: "ops", Password: secrets.NewSecret("right"),
		Remote: remote, Transport: localbroker.TransportTCP}); err == nil {
		t.Fatal("admin accepted during the wait")
	}
	// The unix socket is never throttled.
	if id, err := a.Authenticate(localbroker.ConnectRequest{Transport: localbroker.TransportUnix}); err != nil || !id.Admin {
		t.Fatalf("unix socket: %+v, %v", id, err)
	}
}

// TestAdminLoginPerSource: a source address that failed waits for any
// admin user; another address waits only for the user that failed.
// Old failures are forgotten, and the per-address state is bounded.
func TestAdminLoginPerSource(t *testing.T) {
	clk := &loginClock{t: time.Unix(1_700_000_000, 0)}
	checks := 0
	l := newTestAdmins(t, clk, &checks)
	second := &adminUser{name: "ops2", hash: l.users["ops"].hash}
	l.users[second.name] = second
	for range 3 {
		l.login(l.user("ops"), "192.0.2.7:1", secrets.NewSecret("wrong"))
	}
	if _, err := l.login(second, "192.0.2.7:2", secrets.NewSecret("right")); err == nil {
		t.Fatal("another user from the guessing address was checked during its wait")
	}
	if _, err := l.login(second, "192.0.2.8:1", secrets.NewSecret("right")); err != nil {
		t.Fatalf("another user from another address: %v", err)
	}
	// 15 minutes later the failures are forgotten: one more costs no wait.
	clk.advance(adminForget)
	l.login(l.user("ops"), "192.0.2.7:1", secrets.NewSecret("wrong"))
	if u := l.user("ops"); u.wait.failures != 1 {
		t.Fatalf("failures after %v: %d, want 1", adminForget, u.wait.failures)
	}

	// Guesses from many addresses: the state stays bounded.
	clk.advance(time.Hour)
	for i := range adminMaxSources + 100 {
		clk.advance(time.Second)
		l.login(second, fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255), secrets.NewSecret("wrong"))
	}
	if n := len(l.sources); n > adminMaxSources {
		t.Fatalf("%d source addresses kept, want at most %d", n, adminMaxSources)
	}
}

// TestAdminGuessRate reports how many passwords one user's attacker gets
// checked in an hour with the throttle, on the injected clock, guessing as
// fast as the gateway answers (before: every guess checked, ~6,700/s over
// TCP, BenchmarkAdminGuessing).
func TestAdminGuessRate(t *testing.T) {
	clk := &loginClock{t: time.Unix(1_700_000_000, 0)}
	checks := 0
	l := newTestAdmins(t, clk, &checks)
	u := l.user("ops")
	attempts := 0
	for end := clk.t.Add(time.Hour); clk.t.Before(end); clk.advance(100 * time.Millisecond) {
		l.login(u, "192.0.2.7:1", secrets.NewSecret("wrong"))
		attempts++
	}
	t.Logf("one hour at 10 attempts/s: %d attempts, %d password checks (%.3f checks/s)", attempts, checks, float64(checks)/3600)
	if checks > 3600/30+10 {
		t.Fatalf("%d checks in an hour, want at most about one per %v", checks, adminMaxDelay)
	}
}
