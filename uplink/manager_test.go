package uplink

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

// Run starts devices added before it, stops every session within its bound
// when its context ends (in-flight messages or not), and refuses a second
// run and later changes.
func TestRunLifecycle(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	cloud.hook.set(func(h *cloudHook) { h.swallow = true }) // messages stay in flight
	r := newRig(t, cloud.url, func(c *ManagerConfig) { c.Quiesce = 100 * time.Millisecond })
	const n = 20
	var devs []Device
	for i := range n {
		d := testDevice(i)
		devs = append(devs, d)
		cloud.register(d.ID, d.Secret)
		r.add(d)
		r.q.appendN(t, d.ID, userTopic(d.ID), 1, 3)
	}
	if st, ok := r.m.Status(devs[0].ID); !ok || st.State != StateIdle {
		t.Fatalf("before Run: %+v, want idle", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.m.Run(ctx) }()
	for _, d := range devs {
		r.waitStatus(d.ID, "messages in flight", func(st SessionStatus) bool { return st.State == StateConnected && st.InFlight == 3 })
	}
	start := time.Now()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5 s")
	}
	took := time.Since(start)
	if took > 2*time.Second {
		t.Errorf("stopping %d sessions took %v", n, took)
	}
	for _, st := range r.m.Statuses() {
		if st.State != StateStopped || st.InFlight != 0 {
			t.Errorf("%s after Run: state %s, in flight %d", st.Device, st.State, st.InFlight)
		}
		if r.openSockets(st.Device) != 0 {
			t.Errorf("%s: socket still open after Run returned", st.Device)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, d := range devs {
			if cloud.clientCount(d.ID) != 0 {
				return false
			}
		}
		return true
	}, "broker sees every session gone")
	if err := r.m.Run(context.Background()); err == nil {
		t.Error("a second Run was accepted")
	}
	if err := r.m.Add(testDevice(99)); !errors.Is(err, ErrStopped) {
		t.Errorf("Add after Run: %v, want ErrStopped", err)
	}
	if r.q.depth(devs[0].ID) != 3 {
		t.Errorf("queue depth %d: unacknowledged messages must stay queued", r.q.depth(devs[0].ID))
	}
	t.Logf("stopped %d sessions with messages in flight in %v", n, took.Round(time.Millisecond))
}

// Remove stops the session and closes its client; the messages stay queued.
func TestRemove(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	d := testDevice(1)
	cloud.register(d.ID, d.Secret)
	r.add(d)
	startManager(t, r.m)
	r.waitStatus(d.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
	if err := r.m.Remove(d.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.m.Status(d.ID); ok {
		t.Fatal("removed device still has a status")
	}
	if r.openSockets(d.ID) != 0 {
		t.Fatal("socket open after Remove returned")
	}
	r.q.appendN(t, d.ID, userTopic(d.ID), 1, 2)
	testutil.Eventually(t, 5*time.Second, func() bool { return cloud.clientCount(d.ID) == 0 }, "broker session gone")
	if r.q.depth(d.ID) != 2 {
		t.Fatal("messages of a removed device were consumed")
	}
	r.add(d) // and back
	r.waitStatus(d.ID, "delivered after re-adding", func(st SessionStatus) bool { return st.Sent == 2 })
}

// No secret or password reaches a log line, a status or an error, across
// connects, refusals, kicks and a secret rotation.
func TestNoSecretsInLogsOrStatus(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	var logs testutil.SyncBuffer
	r := newRig(t, cloud.url, func(c *ManagerConfig) { c.Logger = slogText(&logs) })
	d := testDevice(1)
	cloud.register(d.ID, d.Secret)
	cloud.hook.set(func(h *cloudHook) { h.refuse = 1 })
	r.add(d)
	r.m.cfg.AuthRetry = RetryWindow{Min: time.Millisecond, Max: time.Millisecond}
	startManager(t, r.m)
	st := r.waitStatus(d.ID, "connected after a refusal", func(st SessionStatus) bool { return st.State == StateConnected })
	cloud.kickClient(t, st.ClientID)
	r.waitStatus(d.ID, "reconnected", func(st SessionStatus) bool { return st.State == StateConnected && st.Connects == 2 })
	d.Secret = secrets.NewSecret("the-rotated-secret-value")
	cloud.register(d.ID, d.Secret)
	if err := r.m.Update(d); err != nil {
		t.Fatal(err)
	}
	st = r.waitStatus(d.ID, "connected with the new secret", func(st SessionStatus) bool { return st.State == StateConnected && st.Connects == 3 })

	leaks := []string{testDevice(1).Secret.Reveal(), d.Secret.Reveal()}
	for _, rec := range cloud.hook.connectRecords() {
		leaks = append(leaks, rec.Password.Reveal())
	}
	text := logs.String() + fmt.Sprintf("%+v", r.m.Statuses())
	for _, s := range leaks {
		if strings.Contains(text, s) {
			t.Fatalf("a secret or password appears in the logs or status:\n%s", text)
		}
	}
	if !strings.Contains(text, "cloud refused the login") || !strings.Contains(text, st.ClientID) {
		t.Fatalf("the logs miss the refusal or the clientId:\n%s", text)
	}
}

// Many sessions in one process against mochi; reports memory per session.
func TestManySessions(t *testing.T) {
	if testing.Short() {
		t.Skip("connects 1,000 sessions (takes several seconds); skipped with -short")
	}
	n := 1000
	if raceEnabled {
		n = 300 // the race detector allows 8128 live goroutines; paho uses ~10 per session
	}
	run := func(t *testing.T, url string, register func(secrets.DeviceID, secrets.Secret), brokerInProcess bool) {
		r := newRig(t, url, func(c *ManagerConfig) {
			c.ConnectRate = Rate{PerSecond: 2000, Burst: 200}
			c.Logger = nil
		})
		devs := make([]Device, n)
		for i := range devs {
			devs[i] = testDevice(i)
			register(devs[i].ID, devs[i].Secret)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()
		start := time.Now()
		r.add(devs...)
		startManager(t, r.m)
		testutil.Eventually(t, 60*time.Second, func() bool {
			c := 0
			for _, st := range r.m.Statuses() {
				if st.State == StateConnected {
					c++
				}
			}
			return c == n
		}, "%d sessions connected", n)
		connected := time.Since(start)
		for _, d := range devs {
			r.q.appendN(t, d.ID, userTopic(d.ID), 1, 1)
		}
		testutil.Eventually(t, 60*time.Second, func() bool {
			for _, st := range r.m.Statuses() {
				if st.Sent != 1 {
					return false
				}
			}
			return true
		}, "one message from every device delivered")
		runtime.GC()
		runtime.ReadMemStats(&after)
		g1 := runtime.NumGoroutine()
		used := int64(after.HeapInuse+after.StackInuse) - int64(before.HeapInuse+before.StackInuse)
		what := "client only (broker in another process)"
		if brokerInProcess {
			what = "client and in-process mochi broker together"
		}
		t.Logf("%d sessions connected in %v; heap+stack %.1f KiB per session (%s); %.1f goroutines per session",
			n, connected.Round(time.Millisecond), float64(used)/1024/float64(n), what, float64(g1-g0)/float64(n))
		if r.overlaps.Load() != 0 {
			t.Fatal("sockets of one identity overlapped")
		}
	}
	t.Run("mochi", func(t *testing.T) {
		cloud := startMochi(t, secrets.Aliyun)
		run(t, cloud.url, cloud.register, true)
	})
	t.Run("mosquitto", func(t *testing.T) {
		mq := startMosquitto(t)
		run(t, mq.url, func(secrets.DeviceID, secrets.Secret) {}, false)
	})
}

// TestSummaryMatchesStatuses checks Summary against Statuses, and that
// Statuses are sorted by device.
func TestSummaryMatchesStatuses(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	const n = 5
	for i := range n {
		d := testDevice(n - 1 - i) // added in reverse order
		cloud.register(d.ID, d.Secret)
		r.add(d)
		r.q.appendN(t, d.ID, userTopic(d.ID), 1, i+1)
	}
	if by, sent := r.m.Summary(); by[StateIdle] != n || sent != 0 {
		t.Fatalf("before Run: %v, %d sent", by, sent)
	}
	startManager(t, r.m)
	for i := range n {
		r.waitStatus(testDevice(i).ID, "all sent", func(st SessionStatus) bool { return st.Sent == uint64(n-i) })
	}
	by, sent := r.m.Summary()
	sts := r.m.Statuses()
	if by[StateConnected] != n || len(by) != 1 || sent != n*(n+1)/2 || len(sts) != n {
		t.Fatalf("summary %v, %d sent; %d statuses", by, sent, len(sts))
	}
	for i, st := range sts {
		if st.Device != testDevice(i).ID {
			t.Errorf("status %d is %s, want %s", i, st.Device, testDevice(i).ID)
		}
	}
}
