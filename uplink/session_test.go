package uplink

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

// Every attempt builds a new paho client with a new timestamp in the
// clientId and a password signed again — proven against a cloud that
// verifies each login.
func TestFreshCredentialsPerAttempt(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	fc := newFakeClock()
	r := newRig(t, cloud.url, withFakeClock(fc))
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	r.add(dev)
	startManager(t, r.m)
	first := r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
	t0 := fc.Now()

	cloud.kickClient(t, first.ClientID)
	st := r.waitStatus(dev.ID, "backoff after the kick", func(st SessionStatus) bool { return st.State == StateBackoff })
	// A connection without PUBACK that lasted under ResetAfter is a failure:
	// Delay(1, 0.5) = half of 2×Initial.
	if d := st.NextAttempt.Sub(fc.Now()); d != 5*time.Millisecond {
		t.Fatalf("next attempt in %v, want 5ms", d)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return fc.Armed() == 1 }, "backoff timer armed")
	fc.Advance(1234 * time.Millisecond)
	second := r.waitStatus(dev.ID, "reconnected", func(st SessionStatus) bool { return st.State == StateConnected && st.Connects == 2 })

	recs := cloud.hook.connectRecords()
	if len(recs) != 2 {
		t.Fatalf("cloud saw %d CONNECTs, want 2", len(recs))
	}
	for i, want := range []time.Time{t0, t0.Add(1234 * time.Millisecond)} {
		rec := recs[i]
		if !rec.Accepted || rec.Presented == nil {
			t.Fatalf("attempt %d was refused by the verifying cloud", i+1)
		}
		if got := rec.Presented.Timestamp; got != strconv.FormatInt(want.UnixMilli(), 10) {
			t.Errorf("attempt %d signed timestamp %s, want the clock's %d", i+1, got, want.UnixMilli())
		}
		if rec.Presented.SecureMode != 3 {
			t.Errorf("attempt %d: securemode %d over tcp, want 3", i+1, rec.Presented.SecureMode)
		}
	}
	if recs[0].ClientID == recs[1].ClientID || recs[0].Password.Equal(recs[1].Password) {
		t.Fatal("the two attempts carried the same clientId or password")
	}
	if first.ClientID != recs[0].ClientID || second.ClientID != recs[1].ClientID {
		t.Errorf("status clientIds %q, %q do not match the CONNECTs", first.ClientID, second.ClientID)
	}
	if n := r.clients.Load(); n != 2 {
		t.Errorf("%d paho clients created for 2 attempts, want a new one per attempt", n)
	}
	if r.overlaps.Load() != 0 {
		t.Error("sockets of one identity overlapped")
	}
}

// A refused login (mochi answers CONNACK 5 to a v3 client) shows auth-failed and is retried
// only after AuthRetry, never in a tight loop.
func TestAuthFailedSlowRetry(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	fc := newFakeClock()
	r := newRig(t, cloud.url, withFakeClock(fc))
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	cloud.hook.set(func(h *cloudHook) { h.refuse = 1 })
	r.add(dev)
	startManager(t, r.m)

	st := r.waitStatus(dev.ID, "auth-failed", func(st SessionStatus) bool { return st.State == StateAuthFailed })
	if !strings.Contains(st.LastError, "CONNACK 5") {
		t.Errorf("last error %q does not name the refusal", st.LastError)
	}
	if strings.Contains(st.LastError, dev.Secret.Reveal()) {
		t.Fatal("the status shows the secret")
	}
	// Random 0.5 in the default 5–15 min window.
	if d := st.NextAttempt.Sub(fc.Now()); d != 10*time.Minute {
		t.Fatalf("next attempt in %v, want 10m", d)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return fc.Armed() == 1 }, "retry timer armed")
	fc.Advance(10*time.Minute - time.Second)
	if n := len(cloud.hook.connectRecords()); n != 1 || fc.Armed() != 1 {
		t.Fatalf("after 9m59s: %d attempts, %d timers; want 1 attempt still waiting", n, fc.Armed())
	}
	if st, _ := r.m.Status(dev.ID); st.State != StateAuthFailed {
		t.Fatalf("state %s before the retry, want auth-failed", st.State)
	}
	fc.Advance(time.Second)
	r.waitStatus(dev.ID, "connected after the slow retry", func(st SessionStatus) bool { return st.State == StateConnected })
	if n := len(cloud.hook.connectRecords()); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
}

// Each CONNACK refusal is classified: 1, 2, 4, 5 → auth-failed with the
// slow retry; 3 → a long backoff; no CONNACK at all → the normal backoff.
func TestConnackClassification(t *testing.T) {
	tests := []struct {
		name   string
		answer int
		state  State
		delay  time.Duration
	}{
		{"rc1 protocol", 1, StateAuthFailed, 10 * time.Minute},
		{"rc2 identifier", 2, StateAuthFailed, 10 * time.Minute},
		{"rc3 unavailable", 3, StateBackoff, 3 * time.Minute},
		{"rc4 credentials", 4, StateAuthFailed, 10 * time.Minute},
		{"rc5 not authorized", 5, StateAuthFailed, 10 * time.Minute},
		{"closed without CONNACK", -1, StateBackoff, 5 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cloud := startScripted(t, func(int) int { return tt.answer })
			fc := newFakeClock()
			r := newRig(t, cloud.url(), withFakeClock(fc))
			dev := testDevice(1)
			r.add(dev)
			startManager(t, r.m)
			st := r.waitStatus(dev.ID, string(tt.state), func(st SessionStatus) bool { return st.State == tt.state })
			if d := st.NextAttempt.Sub(fc.Now()); d != tt.delay {
				t.Fatalf("next attempt in %v, want %v", d, tt.delay)
			}
			if st.Attempts != 1 || len(cloud.connects()) != 1 {
				t.Fatalf("%d attempts (%d seen), want 1", st.Attempts, len(cloud.connects()))
			}
			var ce *ConnectError
			if tt.answer > 0 {
				if !strings.Contains(st.LastError, fmt.Sprintf("CONNACK %d", tt.answer)) {
					t.Errorf("last error %q", st.LastError)
				}
			} else if errors.As(errors.New(st.LastError), &ce) || st.LastError == "" {
				t.Errorf("last error %q", st.LastError)
			}
			cp := cloud.connects()[0]
			if cp.ProtocolVersion != 4 || !cp.CleanSession || cp.Keepalive != 60 {
				t.Errorf("CONNECT: protocol %d clean %v keepalive %d; want 4, true, 60", cp.ProtocolVersion, cp.CleanSession, cp.Keepalive)
			}
		})
	}
}

// Consecutive failures grow the backoff exponentially; a connection that
// saw a PUBACK, or stayed up ResetAfter, resets it.
func TestBackoffGrowthAndReset(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	fc := newFakeClock()
	r := newRig(t, cloud.url, withFakeClock(fc), func(c *ManagerConfig) {
		l := c.Limits[secrets.Aliyun]
		l.Backoff = Backoff{Initial: time.Second, Max: time.Minute}
		c.Limits[secrets.Aliyun] = l
	})
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	cloud.hook.set(func(h *cloudHook) { h.drop = 3 })
	r.add(dev)
	startManager(t, r.m)

	expectBackoff := func(attempts uint64, want time.Duration) {
		t.Helper()
		st := r.waitStatus(dev.ID, fmt.Sprintf("backoff after attempt %d", attempts), func(st SessionStatus) bool {
			return st.State == StateBackoff && st.Attempts == attempts
		})
		if d := st.NextAttempt.Sub(fc.Now()); d != want {
			t.Fatalf("after attempt %d: next in %v, want %v", attempts, d, want)
		}
		testutil.Eventually(t, 5*time.Second, func() bool { return fc.Armed() == 1 }, "backoff timer")
		fc.Advance(want)
	}
	// Three dropped attempts: ceilings 2 s, 4 s, 8 s, jitter 0.5.
	expectBackoff(1, time.Second)
	expectBackoff(2, 2*time.Second)
	expectBackoff(3, 4*time.Second)
	st := r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })

	// A PUBACK on this connection makes it good: the next delay is reset.
	r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, 1)
	r.waitStatus(dev.ID, "message acknowledged", func(st SessionStatus) bool { return st.Sent == 1 })
	cloud.kickClient(t, st.ClientID)
	expectBackoff(4, 500*time.Millisecond)

	// No PUBACK and only a moment up: a failure again (count 1).
	st = r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected && st.Attempts == 5 })
	cloud.kickClient(t, st.ClientID)
	expectBackoff(5, time.Second)

	// Up for ResetAfter without traffic: good, reset.
	st = r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected && st.Attempts == 6 })
	fc.Advance(time.Minute)
	cloud.kickClient(t, st.ClientID)
	expectBackoff(6, 500*time.Millisecond)
	r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected && st.Attempts == 7 })
}

// The gateway-wide connect budget paces attempts with the injected clock:
// 50 at once, then 50 per second.
func TestConnectBudgetPacing(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	fc := newFakeClock()
	r := newRig(t, cloud.url, withFakeClock(fc), func(c *ManagerConfig) {
		c.ConnectRate = Rate{PerSecond: 50, Burst: 50}
	})
	const n = 120
	for i := range n {
		d := testDevice(i)
		cloud.register(d.ID, d.Secret)
		r.add(d)
	}
	startManager(t, r.m)
	connected := func() int {
		c := 0
		for _, st := range r.m.Statuses() {
			if st.State == StateConnected {
				c++
			}
		}
		return c
	}
	steps := []struct {
		advance   time.Duration
		connected int
	}{
		{0, 50},
		{time.Second, 100},
		{400 * time.Millisecond, 120},
	}
	for _, s := range steps {
		fc.Advance(s.advance)
		testutil.Eventually(t, 20*time.Second, func() bool {
			return connected() == s.connected && fc.Armed() == n-s.connected
		}, "%d connected and %d waiting", s.connected, n-s.connected)
		if got := len(cloud.hook.connectRecords()); got != s.connected {
			t.Fatalf("after %v: the cloud saw %d CONNECTs, want %d", s.advance, got, s.connected)
		}
	}
}

// One identity never has two sessions, whatever Add, Update, Remove and
// Subscribe do concurrently.
func TestOneSessionPerIdentity(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	const ids = 4
	devs := make([]Device, ids)
	for i := range devs {
		devs[i] = testDevice(i)
		cloud.register(devs[i].ID, devs[i].Secret)
	}
	startManager(t, r.m)
	done := make(chan struct{})
	errc := make(chan error, 8)
	for w := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 60 {
				d := devs[(w+i)%ids]
				var err error
				switch (w*7 + i*3) % 5 {
				case 0, 1:
					err = r.m.Add(d)
				case 2:
					err = r.m.Update(d)
				case 3:
					err = r.m.Remove(d.ID)
				case 4:
					err = r.m.Subscribe(d.ID, map[string]byte{userTopic(d.ID) + "/down": 1})
				}
				if err != nil && !errors.Is(err, ErrDeviceExists) && !errors.Is(err, ErrUnknownDevice) {
					errc <- err
					return
				}
				if i%10 == 0 {
					time.Sleep(time.Millisecond) // let some sessions connect
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if r.overlaps.Load() != 0 {
		t.Fatalf("%d dials overlapped another open socket of the same identity", r.overlaps.Load())
	}
	total := 0
	for _, d := range devs {
		r.mu.Lock()
		total += r.dials[d.ID]
		r.mu.Unlock()
		_, registered := r.m.Status(d.ID)
		want := 0
		if registered {
			want = 1
			r.waitStatus(d.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
		}
		testutil.Eventually(t, 10*time.Second, func() bool {
			return r.openSockets(d.ID) == want && cloud.clientCount(d.ID) == want
		}, "%s: %d socket(s) and %d broker session(s)", d.ID, want, want)
	}
	if total < ids {
		t.Fatalf("only %d dials: the churn did not exercise sessions", total)
	}
	t.Logf("%d dials across %d identities, %d paho clients, no overlap", total, ids, r.clients.Load())
}

// Update replaces the secret: the old session is gone before the new one
// logs in, and a device stuck in auth-failed recovers at once.
func TestUpdateNewSecret(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	r.add(dev)
	if err := r.m.Subscribe(dev.ID, map[string]byte{userTopic(dev.ID) + "/down": 1}); err != nil {
		t.Fatal(err)
	}
	startManager(t, r.m)
	st := r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })

	// The secret is rotated in the cloud: the next login is refused.
	rotated := secrets.NewSecret("rotated-secret-123")
	cloud.register(dev.ID, rotated)
	cloud.kickClient(t, st.ClientID)
	r.waitStatus(dev.ID, "auth-failed", func(st SessionStatus) bool { return st.State == StateAuthFailed })

	dev.Secret = rotated
	if err := r.m.Update(dev); err != nil {
		t.Fatal(err)
	}
	st = r.waitStatus(dev.ID, "connected with the new secret", func(st SessionStatus) bool { return st.State == StateConnected })
	if st.Subscriptions != 1 {
		t.Errorf("%d subscriptions after Update, want 1 (kept)", st.Subscriptions)
	}
	recs := cloud.hook.connectRecords()
	if last := recs[len(recs)-1]; !last.Accepted {
		t.Fatal("the login after Update was refused")
	}
	if r.overlaps.Load() != 0 || cloud.clientCount(dev.ID) != 1 {
		t.Fatalf("overlaps %d, broker sessions %d", r.overlaps.Load(), cloud.clientCount(dev.ID))
	}
	// Update of an unknown device is an error.
	if err := r.m.Update(testDevice(99)); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("Update(unknown) = %v", err)
	}
}

// Add validates the device at configuration time.
func TestAddValidation(t *testing.T) {
	r := newRig(t, "tcp://127.0.0.1:1")
	tlsOnly := testDevice(1)
	tlsOnly.ClientCert = nil
	tests := []struct {
		name string
		mod  func(*Device)
		want string
	}{
		{"no product key", func(d *Device) { d.ID.ProductKey = "" }, "required"},
		{"slash in name", func(d *Device) { d.ID.DeviceName = "a/b" }, "'/'"},
		{"unknown dialect", func(d *Device) { d.Dialect = "azure" }, "dialect"},
		{"empty secret", func(d *Device) { d.Secret = secrets.Secret{} }, "secret is empty"},
		{"bad clientId", func(d *Device) { d.ClientID = "a|b" }, "clientId"},
		{"long clientId", func(d *Device) { d.ClientID = strings.Repeat("x", 65) }, "clientId"},
		{"EnOS sign method on Alibaba", func(d *Device) { d.SignMethod = secrets.SHA256 }, "sign method"},
		{"client certificate over plain TCP", func(d *Device) { d.ClientCert = &tlsCertPlaceholder }, "client certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testDevice(1)
			tt.mod(&d)
			err := r.m.Add(d)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Add: %v, want an error mentioning %q", err, tt.want)
			}
			if strings.Contains(err.Error(), d.Secret.Reveal()) && !d.Secret.IsZero() {
				t.Fatal("the error shows the secret")
			}
		})
	}
	d := testDevice(2)
	r.add(d)
	if err := r.m.Add(d); !errors.Is(err, ErrDeviceExists) {
		t.Fatalf("second Add = %v, want ErrDeviceExists", err)
	}
	if err := r.m.Subscribe(d.ID, map[string]byte{"/other/dev/user/x": 1}); err == nil {
		t.Fatal("a filter outside the device's namespace was accepted")
	}
	if err := r.m.Subscribe(secrets.DeviceID{ProductKey: "x", DeviceName: "y"}, nil); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("Subscribe(unknown) = %v", err)
	}
	if err := r.m.Remove(secrets.DeviceID{ProductKey: "x", DeviceName: "y"}); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("Remove(unknown) = %v", err)
	}
}

// EnOS blocks a device for 5 minutes after 4 connection requests within 2
// minutes: even a burst of Updates makes at most 3 attempts per 2 minutes.
func TestEnOSConnectWindow(t *testing.T) {
	cloud := startMochi(t, secrets.EnOS)
	fc := newFakeClock()
	r := newRig(t, cloud.url, withFakeClock(fc), func(c *ManagerConfig) {
		c.Limits = map[secrets.Dialect]DialectLimits{secrets.EnOS: DefaultLimits(secrets.EnOS)}
	})
	dev := testDevice(1)
	dev.Dialect = secrets.EnOS
	cloud.register(dev.ID, dev.Secret)
	r.add(dev)
	startManager(t, r.m)
	r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected && st.Connects == 1 })
	for i := 2; i <= 3; i++ {
		if err := r.m.Update(dev); err != nil {
			t.Fatal(err)
		}
		r.waitStatus(dev.ID, "reconnected", func(st SessionStatus) bool { return st.State == StateConnected && st.Connects == uint64(i) })
	}
	fc.Advance(30 * time.Second)
	if err := r.m.Update(dev); err != nil {
		t.Fatal(err)
	}
	st := r.waitStatus(dev.ID, "held back by the window", func(st SessionStatus) bool { return st.State == StateBackoff })
	if d := st.NextAttempt.Sub(fc.Now()); d != 90*time.Second {
		t.Fatalf("4th attempt in %v, want 90s (2 minutes after the 1st)", d)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return fc.Armed() == 1 }, "window timer")
	fc.Advance(90*time.Second - time.Millisecond)
	if n := len(cloud.hook.connectRecords()); n != 3 {
		t.Fatalf("%d attempts within 2 minutes, want 3", n)
	}
	fc.Advance(time.Millisecond)
	r.waitStatus(dev.ID, "connected after the window", func(st SessionStatus) bool { return st.State == StateConnected && st.Connects == 4 })
	recs := cloud.hook.connectRecords()
	if len(recs) != 4 || !recs[3].Accepted || recs[3].Presented.SecureMode != 2 {
		t.Fatalf("EnOS logins %+v: want 4 accepted with securemode 2", recs)
	}
}
