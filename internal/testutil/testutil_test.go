package testutil_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
)

// stopTB records how a helper ended the test instead of ending it.
type stopTB struct {
	testing.TB
	how, msg string
}

func (s *stopTB) Helper() {}

func (s *stopTB) Fatalf(format string, args ...any) {
	s.how, s.msg = "fatal", fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (s *stopTB) Fatal(args ...any) {
	s.how, s.msg = "fatal", fmt.Sprint(args...)
	runtime.Goexit()
}

func (s *stopTB) Skipf(format string, args ...any) {
	s.how, s.msg = "skip", fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls f with a stopTB on its own goroutine (Goexit ends only that).
func run(t *testing.T, f func(tb testing.TB)) *stopTB {
	s := &stopTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(s)
	}()
	<-done
	return s
}

func TestEventually(t *testing.T) {
	var calls atomic.Int32
	testutil.Eventually(t, 5*time.Second, func() bool { return calls.Add(1) == 3 }, "third call")
	if got := calls.Load(); got != 3 {
		t.Fatalf("cond called %d times, want 3", got)
	}

	start := time.Now()
	s := run(t, func(tb testing.TB) {
		testutil.Eventually(tb, 50*time.Millisecond, func() bool { return false }, "the %s", "impossible")
	})
	if s.how != "fatal" || !strings.Contains(s.msg, "the impossible") || !strings.Contains(s.msg, "50ms") {
		t.Fatalf("Eventually on a false condition: %s %q, want a failure naming what and how long", s.how, s.msg)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Eventually with a 50ms timeout took %v", d)
	}
}

func TestSyncBufferWaitFor(t *testing.T) {
	var b testutil.SyncBuffer
	go func() { _, _ = io.WriteString(&b, "level=INFO msg=ready\n") }()
	b.WaitFor(t, "msg=ready", 5*time.Second)
	s := run(t, func(tb testing.TB) { b.WaitFor(tb, "never", 20*time.Millisecond) })
	if s.how != "fatal" || !strings.Contains(s.msg, "msg=ready") {
		t.Fatalf("WaitFor failure: %s %q, want the buffer shown", s.how, s.msg)
	}
}

func TestPeerMissing(t *testing.T) {
	const name = "edgegw-no-such-peer"
	t.Setenv(testutil.RequirePeersEnv, "")
	if s := run(t, func(tb testing.TB) { testutil.Peer(tb, name) }); s.how != "skip" || !strings.Contains(s.msg, "apt-get install") {
		t.Fatalf("missing peer: %s %q, want a skip saying what to install", s.how, s.msg)
	}
	t.Setenv(testutil.RequirePeersEnv, "1")
	if s := run(t, func(tb testing.TB) { testutil.Peer(tb, name) }); s.how != "fatal" || !strings.Contains(s.msg, testutil.RequirePeersEnv) {
		t.Fatalf("missing peer under %s=1: %s %q, want a failure", testutil.RequirePeersEnv, s.how, s.msg)
	}
}

// The PKI's server certificate verifies for every loopback name, and a
// client certificate from the CA passes mutual TLS while one from another
// CA does not.
func TestPKIHandshake(t *testing.T) {
	pki := testutil.NewPKI(t)
	other := testutil.NewNamedPKI(t, "unrelated CA")
	for _, tt := range []struct {
		name       string
		serverName string
		cert       []tls.Certificate
		wantErr    bool
	}{
		{"ipv4 with client cert", "127.0.0.1", []tls.Certificate{pki.ClientCert(t, "pk/dn")}, false},
		{"localhost with client cert", "localhost", []tls.Certificate{pki.ClientCert(t, "pk/dn")}, false},
		{"no client cert", "127.0.0.1", nil, true},
		{"client cert of another CA", "127.0.0.1", []tls.Certificate{other.ClientCert(t, "pk/dn")}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l, err := tls.Listen("tcp", "127.0.0.1:0", pki.ServerTLS(tls.RequireAndVerifyClientCert))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			srvErr := make(chan error, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					srvErr <- err
					return
				}
				defer c.Close()
				srvErr <- c.(*tls.Conn).Handshake()
			}()
			cfg := pki.ClientTLS(tt.cert...)
			cfg.ServerName = tt.serverName
			c, err := tls.Dial("tcp", l.Addr().String(), cfg)
			if err == nil {
				// TLS 1.3: the client learns of a refused certificate on its first read.
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Read(make([]byte, 1))
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					err = nil
				}
				c.Close()
			}
			sErr := <-srvErr
			if tt.wantErr != (sErr != nil) {
				t.Fatalf("server handshake error %v (client %v), want error: %v", sErr, err, tt.wantErr)
			}
		})
	}
	certFile, keyFile := pki.WriteCert(t, pki.Server, "server")
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatalf("written server certificate does not load: %v", err)
	}
}

// fakeToken is a paho token that completes as told.
type fakeToken struct {
	done bool
	err  error
}

func (f fakeToken) Wait() bool                     { return f.done }
func (f fakeToken) WaitTimeout(time.Duration) bool { return f.done }
func (f fakeToken) Done() <-chan struct{}          { return nil }
func (f fakeToken) Error() error                   { return f.err }

func TestWaitToken(t *testing.T) {
	testutil.WaitToken(t, fakeToken{done: true}, time.Second, "done")
	s := run(t, func(tb testing.TB) { testutil.WaitToken(tb, fakeToken{}, 30*time.Millisecond, "subscribe x") })
	if s.how != "fatal" || !strings.Contains(s.msg, "subscribe x: timed out") {
		t.Fatalf("WaitToken on a token that never completes: %s %q", s.how, s.msg)
	}
	s = run(t, func(tb testing.TB) {
		testutil.WaitToken(tb, fakeToken{done: true, err: io.ErrUnexpectedEOF}, time.Second, "publish")
	})
	if s.how != "fatal" || !strings.Contains(s.msg, "publish: unexpected EOF") {
		t.Fatalf("WaitToken on a failed token: %s %q", s.how, s.msg)
	}
}
