package systemd_test

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
)

// notifySocket is a stand-in for systemd's notification socket: a unixgram
// socket the test reads datagrams from.
type notifySocket struct {
	conn *net.UnixConn
	path string
}

// listenNotify binds a notification socket in a temporary directory and
// points NOTIFY_SOCKET at it for the rest of the test.
func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	dir := t.TempDir()
	if len(dir) > 90 { // sun_path holds 108 bytes
		var err error
		dir, err = os.MkdirTemp("", "sdn")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	path := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen on notify socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return &notifySocket{conn: conn, path: path}
}

// next returns the next datagram, failing the test if none arrives within
// timeout.
func (s *notifySocket) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := s.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	n, _, err := s.conn.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	return string(buf[:n])
}

// waitFor reads datagrams until one equals want, failing after timeout.
func (s *notifySocket) waitFor(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("no %q notification within %v", want, timeout)
		}
		if s.next(t, left) == want {
			return
		}
	}
}

// queued returns the datagrams already received, without waiting.
func (s *notifySocket) queued(t *testing.T) []string {
	t.Helper()
	rc, err := s.conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	buf := make([]byte, 4096)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		if errors.Is(rerr, syscall.EAGAIN) {
			return out
		}
		if rerr != nil {
			t.Fatalf("read notification: %v", rerr)
		}
		out = append(out, string(buf[:n]))
	}
}

func newTestLogger() (*slog.Logger, *testutil.SyncBuffer) {
	b := &testutil.SyncBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// count returns how many of msgs equal want.
func count(msgs []string, want string) int {
	n := 0
	for _, m := range msgs {
		if m == want {
			n++
		}
	}
	return n
}
