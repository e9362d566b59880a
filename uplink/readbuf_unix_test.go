//go:build unix

package uplink

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestPooledReader checks that a TCP connection's reads are buffered with a
// pooled buffer held only while it holds unread bytes, and that data,
// large reads, the end of the stream and Close behave as with net.Conn.
func TestPooledReader(t *testing.T) {
	client, server := tcpPair(t)
	nc := newReadBuffered(client)
	pr, ok := nc.(*pooledReader)
	if !ok {
		t.Fatalf("a TCP connection got %T, want *pooledReader", nc)
	}

	// Small reads, as paho makes them, are served from one read(2).
	msg := []byte("\x40\x02\x00\x01\x40\x02\x00\x02") // two PUBACKs
	if _, err := server.Write(msg); err != nil {
		t.Fatal(err)
	}
	var got []byte
	one := make([]byte, 1)
	for len(got) < len(msg) {
		if pr.buf != nil && len(got) == 0 {
			t.Fatal("a buffer held before any data")
		}
		n, err := nc.Read(one)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, one[:n]...)
		if len(got) == 1 && (pr.buf == nil || pr.w != len(msg)) {
			t.Fatalf("after the first byte: buffer %v holding %d bytes, want all %d", pr.buf != nil, pr.w, len(msg))
		}
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("read %q, want %q", got, msg)
	}
	if pr.buf != nil {
		t.Fatal("buffer still held once everything was read")
	}

	// More than the buffer holds, read in small pieces and in one large read.
	big := bytes.Repeat([]byte("0123456789abcdef"), 3*readBufferSize/16+5)
	go func() { _, _ = server.Write(big) }()
	got = got[:0]
	small := make([]byte, 100)
	for len(got) < len(big)/2 {
		n, err := nc.Read(small)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, small[:n]...)
	}
	rest := make([]byte, len(big))
	for len(got) < len(big) {
		n, err := nc.Read(rest)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, rest[:n]...)
	}
	if !bytes.Equal(got, big) || pr.buf != nil {
		t.Fatalf("large transfer: %d of %d bytes right, buffer held %v", len(got), len(big), pr.buf != nil)
	}

	// Close from another goroutine ends a read waiting for data.
	errc := make(chan error, 1)
	go func() {
		_, err := nc.Read(one)
		errc <- err
	}()
	time.AfterFunc(50*time.Millisecond, func() { nc.Close() })
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end a waiting read")
	}
}

func TestPooledReaderEOF(t *testing.T) {
	client, server := tcpPair(t)
	nc := newReadBuffered(client)
	if _, err := server.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	server.Close()
	b, err := io.ReadAll(nc)
	if err != nil || string(b) != "x" {
		t.Fatalf("ReadAll: %q, %v", b, err)
	}
}

// TestReadBufferedChoice checks which connections get which buffering.
func TestReadBufferedChoice(t *testing.T) {
	client, _ := tcpPair(t)
	tc := tls.Client(client, &tls.Config{ServerName: "x"})
	if got := newReadBuffered(tc); got != net.Conn(tc) {
		t.Errorf("a TLS connection got %T, want it unwrapped", got)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := newReadBuffered(a); func() bool { _, ok := got.(*readBuffered); return !ok }() {
		t.Errorf("a pipe got %T, want *readBuffered", got)
	}
}

// TestSessionOverPooledReader runs a session on a plain TCP socket (no
// test wrapper, so paho reads through a pooledReader): messages and their
// PUBACKs, before and after a reconnect.
func TestSessionOverPooledReader(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	r.m.connHook = nil
	d := testDevice(1)
	cloud.register(d.ID, d.Secret)
	r.add(d)
	startManager(t, r.m)
	r.q.appendN(t, d.ID, userTopic(d.ID), 1, 50)
	st := r.waitStatus(d.ID, "50 sent", func(st SessionStatus) bool { return st.Sent == 50 })
	checkOrder(t, "first connection", cloud.hook.receivedBy(d.ID), 50)

	cloud.kickClient(t, st.ClientID)
	r.waitStatus(d.ID, "reconnected", func(st SessionStatus) bool { return st.Connects == 2 && st.State == StateConnected })
	r.q.appendN(t, d.ID, userTopic(d.ID), 1, 50)
	r.waitStatus(d.ID, "100 sent", func(st SessionStatus) bool { return st.Sent == 100 })
	checkOrder(t, "both connections", cloud.hook.receivedBy(d.ID), 100)
}
