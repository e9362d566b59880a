package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
)

// TestRunNotifiesSystemd runs the daemon as systemd would start it, with a
// notification socket and a watchdog: READY=1 with a STATUS line comes once
// the listeners are bound even though the cloud is unreachable (the plant
// works offline), WATCHDOG=1 pings follow, and STOPPING=1 on shutdown.
func TestRunNotifiesSystemd(t *testing.T) {
	dir := t.TempDir()
	notes := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))

	conf := filepath.Join(dir, "edgegw.toml")
	err := os.WriteFile(conf, fmt.Appendf(nil, `state_dir = %q
log_format = "text"
[broker]
listeners = ["tcp://127.0.0.1:0"]
[cloud]
endpoint = "tcp://127.0.0.1:1"
[metrics]
listen = ""
`, filepath.Join(dir, "state")), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stderr testutil.SyncBuffer
	go func() { done <- runDaemon(ctx, []string{"-config", conf}, nil, nil, &stderr) }()

	has := func(field string) bool { return notes.count(field) > 0 }
	deadline := time.Now().Add(20 * time.Second)
	for !(has("READY=1") && has("WATCHDOG=1")) {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no READY and WATCHDOG within 20 s; got %q", notes.messages())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ready := ""
	for _, m := range notes.messages() {
		if strings.Contains(m, "READY=1") {
			ready = m
		}
	}
	if !strings.Contains(ready, "STATUS=") || !strings.Contains(ready, "cloud sessions up") {
		t.Errorf("READY datagram %q has no STATUS line", ready)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not stop within 30 s")
	}
	deadline = time.Now().Add(5 * time.Second)
	for !has("STOPPING=1") {
		if time.Now().After(deadline) {
			t.Fatalf("no STOPPING=1; got %q", notes.messages())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestKeygen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "edgegw.key")
	if code, _, errOut := runCmd(t, "", "keygen", "-out", p); code != 0 {
		t.Fatalf("keygen: %d %s", code, errOut)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	key, _ := os.ReadFile(p)
	if code, out, errOut := runCmd(t, "", "keygen", "-out", p); code != 0 || strings.Contains(out+errOut, string(key)) {
		t.Fatalf("second keygen: exit %d, output %q", code, out+errOut)
	}
	if again, _ := os.ReadFile(p); !bytes.Equal(again, key) {
		t.Error("keygen replaced an existing key")
	}
	if err := os.WriteFile(p, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCmd(t, "", "keygen", "-out", p); code == 0 || !strings.Contains(errOut, p) {
		t.Errorf("malformed key accepted: exit %d, %q", code, errOut)
	}
}

// TestRunReloadsOnSIGHUP: SIGHUP (systemctl reload) re-reads the
// configuration file. A bad file is logged with its file:line: key and the
// running configuration stays; a good one is applied (log level) and the
// log says what changed and what needs a restart; systemd is told
// RELOADING=1 and READY=1 around it.
func TestRunReloadsOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	notes := listenNotify(t)
	count := notes.count

	conf := filepath.Join(dir, "edgegw.toml")
	write := func(logLevel, extra string) {
		t.Helper()
		err := os.WriteFile(conf, fmt.Appendf(nil, `state_dir = %q
log_level = %q
log_format = "text"
%s
[broker]
listeners = ["tcp://127.0.0.1:0"]
[cloud]
endpoint = "tcp://127.0.0.1:1"
[metrics]
listen = ""
`, filepath.Join(dir, "state"), logLevel, extra), 0o600)
		if err != nil {
			t.Fatal(err)
		}
	}
	write("info", "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stderr testutil.SyncBuffer
	go func() { done <- runDaemon(ctx, []string{"-config", conf}, nil, nil, &stderr) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("daemon did not stop within 30 s")
		}
	}()
	testutil.Eventually(t, 20*time.Second, func() bool { return count("READY=1") == 1 }, "READY=1")

	write("info", "spool_budget = 5")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	stderr.WaitFor(t, "edgegw.toml:4: spool_budget", 20*time.Second)
	if !strings.Contains(stderr.String(), "keeping the running configuration") {
		t.Errorf("bad file on reload: log does not say the running configuration stays:\n%s", stderr.String())
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return count("READY=1") == 2 }, "READY=1 after the failed reload")

	write("debug", "")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	stderr.WaitFor(t, "configuration reloaded", 20*time.Second)
	testutil.Eventually(t, 10*time.Second, func() bool { return count("READY=1") == 3 }, "READY=1 after the reload")
	if n := count("RELOADING=1"); n != 2 {
		t.Errorf("%d RELOADING=1 notifications, want 2", n)
	}
	if !strings.Contains(stderr.String(), "applied=log_level") {
		t.Errorf("reload log does not name log_level as applied:\n%s", stderr.String())
	}
}

// notifyRecorder is a systemd notification socket for a test: it records
// every datagram the daemon sends to $NOTIFY_SOCKET.
type notifyRecorder struct {
	mu  sync.Mutex
	got []string
}

// listenNotify opens the socket and points NOTIFY_SOCKET at it for the
// rest of the test.
func listenNotify(t *testing.T) *notifyRecorder {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r := &notifyRecorder{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.got = append(r.got, string(buf[:n]))
			r.mu.Unlock()
		}
	}()
	t.Setenv("NOTIFY_SOCKET", sock)
	return r
}

// messages returns the datagrams received so far.
func (r *notifyRecorder) messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// count returns how many datagrams so far contain field.
func (r *notifyRecorder) count(field string) int {
	n := 0
	for _, m := range r.messages() {
		if strings.Contains(m, field) {
			n++
		}
	}
	return n
}
