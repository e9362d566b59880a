package systemd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/edgegw/systemd"
)

const waitLong = 5 * time.Second

func TestNotifierMessages(t *testing.T) {
	sock := listenNotify(t)
	n := systemd.NewNotifier(nil)

	long := strings.Repeat("x", 255) + "é" + "tail" // the 2-byte rune straddles byte 256
	tests := []struct {
		name string
		send func() error
		want string
	}{
		{"ready with status", func() error { return n.Ready("serving 3 devices, spool 0 B") }, "READY=1\nSTATUS=serving 3 devices, spool 0 B"},
		{"ready without status", func() error { return n.Ready("") }, "READY=1"},
		{"status", func() error { return n.Status("12 devices connected, spool 4.0 KiB") }, "STATUS=12 devices connected, spool 4.0 KiB"},
		{"status cannot inject fields", func() error { return n.Status("a\nREADY=1\r\nMAINPID=1") }, "STATUS=a READY=1  MAINPID=1"},
		{"long status is cut at a rune boundary", func() error { return n.Status(long) }, "STATUS=" + strings.Repeat("x", 255)},
		{"stopping", n.Stopping, "STOPPING=1"},
		{"extend timeout", func() error { return n.ExtendTimeout(90 * time.Second) }, "EXTEND_TIMEOUT_USEC=90000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.send(); err != nil {
				t.Fatalf("send: %v", err)
			}
			if got := sock.next(t, waitLong); got != tt.want {
				t.Errorf("datagram = %q, want %q", got, tt.want)
			}
		})
	}
	if err := n.Status(""); err != nil {
		t.Fatalf("empty status: %v", err)
	}
	if err := n.ExtendTimeout(0); err == nil {
		t.Error("ExtendTimeout(0) returned nil, want an error")
	}
	if q := sock.queued(t); len(q) != 0 {
		t.Errorf("empty status and a rejected extension sent %q, want nothing", q)
	}
}

func TestNotifierWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	t.Setenv("WATCHDOG_USEC", "")
	os.Unsetenv("WATCHDOG_USEC")

	n := systemd.NewNotifier(nil)
	for name, f := range map[string]func() error{
		"Ready":         func() error { return n.Ready("up") },
		"Status":        func() error { return n.Status("up") },
		"Stopping":      n.Stopping,
		"ExtendTimeout": func() error { return n.ExtendTimeout(time.Second) },
	} {
		if err := f(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: %v, want nil", name, err)
		}
	}
	var called atomic.Bool
	err := n.RunWatchdog(t.Context(), func() error { called.Store(true); return nil })
	if err != nil {
		t.Errorf("RunWatchdog without WATCHDOG_USEC: %v, want nil", err)
	}
	if called.Load() {
		t.Error("RunWatchdog called the check with the watchdog off")
	}
	if iv, err := systemd.WatchdogInterval(); iv != 0 || err != nil {
		t.Errorf("WatchdogInterval() = %v, %v; want 0, nil", iv, err)
	}
}

func TestNotifierSendError(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent.sock"))
	err := systemd.NewNotifier(nil).Ready("up")
	if err == nil || !strings.Contains(err.Error(), "notify systemd READY") {
		t.Fatalf("Ready to a missing socket: %v, want an error naming READY", err)
	}
}

func TestWatchdogSettings(t *testing.T) {
	tests := []struct {
		name    string
		usec    string
		pid     string
		wantErr bool
	}{
		{"another process's watchdog", "100000", "1", false},
		{"not a number", "soon", "", true},
		{"zero", "0", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := listenNotify(t)
			t.Setenv("WATCHDOG_USEC", tt.usec)
			t.Setenv("WATCHDOG_PID", tt.pid)
			var called atomic.Bool
			err := systemd.NewNotifier(nil).RunWatchdog(t.Context(), func() error { called.Store(true); return nil })
			if (err != nil) != tt.wantErr {
				t.Fatalf("RunWatchdog: %v, want error %v", err, tt.wantErr)
			}
			if called.Load() {
				t.Error("the check ran although the watchdog is not ours")
			}
			if q := sock.queued(t); len(q) != 0 {
				t.Errorf("sent %q, want nothing", q)
			}
		})
	}
}

// startWatchdog runs RunWatchdog with a 100 ms watchdog (a ping every
// 50 ms) and stops it when the test ends, checking it returns promptly.
func startWatchdog(t *testing.T, n *systemd.Notifier, check func() error) {
	t.Helper()
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.RunWatchdog(ctx, check) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("RunWatchdog returned %v, want nil", err)
			}
		case <-time.After(waitLong):
			t.Error("RunWatchdog did not return after its context ended")
		}
	})
}

func TestWatchdogPingsOnlyWhileAlive(t *testing.T) {
	sock := listenNotify(t)
	log, logs := newTestLogger()

	var (
		mu      sync.Mutex
		wedged  bool
		results []bool // per call: did the check pass
	)
	calls := make(chan bool, 1000)
	check := func() error {
		mu.Lock()
		ok := !wedged
		results = append(results, ok)
		mu.Unlock()
		calls <- ok
		if !ok {
			return errors.New("spool writer made no progress for 20s")
		}
		return nil
	}
	setWedged := func(v bool) {
		mu.Lock()
		wedged = v
		mu.Unlock()
	}
	startWatchdog(t, systemd.NewNotifier(log), check)

	// Alive: pings arrive.
	for range 3 {
		sock.waitFor(t, "WATCHDOG=1", waitLong)
	}

	// Wedged: once the third failing check has started, the loop has
	// handled every earlier result, so the pings sent must be exactly the
	// passing checks.
	setWedged(true)
	failed := 0
	deadline := time.After(waitLong)
	for failed < 3 {
		select {
		case ok := <-calls:
			if !ok {
				failed++
			}
		case <-deadline:
			t.Fatalf("only %d failing checks within %v", failed, waitLong)
		}
	}
	mu.Lock()
	passed := 0
	for _, ok := range results {
		if ok {
			passed++
		}
	}
	mu.Unlock()
	pings := 3 + count(sock.queued(t), "WATCHDOG=1")
	if pings != passed {
		t.Fatalf("%d WATCHDOG=1 pings for %d passing checks: a ping was sent for a failing check", pings, passed)
	}
	logs.WaitFor(t, "withholding the watchdog ping", waitLong)
	logs.WaitFor(t, "spool writer made no progress", waitLong)

	// Alive again: pings resume and the recovery is logged.
	setWedged(false)
	sock.waitFor(t, "WATCHDOG=1", waitLong)
	logs.WaitFor(t, "watchdog pings resumed", waitLong)
}

func TestWatchdogStuckCheck(t *testing.T) {
	sock := listenNotify(t)
	log, logs := newTestLogger()

	release := make(chan struct{})
	var calls atomic.Int32
	check := func() error {
		if calls.Add(1) == 1 {
			<-release // the first call hangs, like a wedged loop
		}
		return nil
	}
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	startWatchdog(t, systemd.NewNotifier(log), check)

	logs.WaitFor(t, "withheld=3", waitLong)
	if !strings.Contains(logs.String(), "liveness check has not returned") {
		t.Errorf("log does not say the check is stuck:\n%s", logs.String())
	}
	if c := calls.Load(); c != 1 {
		t.Errorf("check called %d times while the first call hung, want 1", c)
	}
	if q := sock.queued(t); count(q, "WATCHDOG=1") != 0 {
		t.Fatalf("pinged while the check hung: %q", q)
	}

	close(release)
	sock.waitFor(t, "WATCHDOG=1", waitLong)
	logs.WaitFor(t, "watchdog pings resumed", waitLong)
}
