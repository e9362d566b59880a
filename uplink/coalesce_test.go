package uplink

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
)

// gatedConn records what reaches the socket, one entry per Write; while
// gate is set, a Write waits for it to close.
type gatedConn struct {
	net.Conn // nil: only what is overridden is used

	mu       sync.Mutex
	writes   [][]byte
	gate     chan struct{}
	entered  chan struct{} // receives once per Write that found the gate
	failWith error
	closed   bool
	deadline time.Time
}

func (c *gatedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	gate := c.gate
	c.mu.Unlock()
	if gate != nil {
		c.entered <- struct{}{}
		select {
		case <-gate:
		case <-time.After(time.Until(c.writeDeadline())):
			return 0, errors.New("i/o timeout")
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if c.failWith != nil {
		return 0, c.failWith
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func (c *gatedConn) writeDeadline() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deadline.IsZero() {
		return time.Now().Add(time.Hour)
	}
	return c.deadline
}

func (c *gatedConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

func (c *gatedConn) SetReadDeadline(time.Time) error { return nil }

func (c *gatedConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

func (c *gatedConn) got() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.writes...)
}

func (c *coalescing) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.flushing && c.pending == nil
}

// The first packet after a pause goes out at once, on the caller's
// goroutine; packets written while the socket is busy go out together, in
// order, in the next write; the flusher is gone once everything is out.
func TestCoalescingGathersABurst(t *testing.T) {
	g := &gatedConn{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	c := newCoalescing(g, time.Minute)
	first := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("p1"))
		first <- err
	}()
	<-g.entered // the first Write is in write(2) with p1
	g.mu.Lock()
	gate := g.gate
	g.gate = nil
	g.mu.Unlock()
	var want bytes.Buffer
	for _, p := range []string{"p2", "p3", "p4", "p5"} {
		if _, err := c.Write([]byte(p)); err != nil { // returns at once
			t.Fatal(err)
		}
		want.WriteString(p)
	}
	close(gate) // p1's write(2) returns
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, c.idle, "the flusher finished")
	got := g.got()
	if len(got) != 2 || string(got[0]) != "p1" || string(got[1]) != want.String() {
		t.Errorf("writes reaching the socket: %q, want [p1 %s]", got, want.String())
	}
}

// A failed write fails every later Write and closes the socket.
func TestCoalescingWriteErrorSticks(t *testing.T) {
	boom := errors.New("connection reset")
	g := &gatedConn{failWith: boom}
	c := newCoalescing(g, time.Minute)
	if _, err := c.Write([]byte("p1")); !errors.Is(err, boom) { // written at once
		t.Fatalf("first write: %v, want %v", err, boom)
	}
	testutil.Eventually(t, 10*time.Second, c.idle, "the flusher finished")
	if _, err := c.Write([]byte("p2")); !errors.Is(err, boom) {
		t.Errorf("write after a failed flush: %v, want %v", err, boom)
	}
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if !closed {
		t.Error("socket left open after a failed write")
	}
}

// A socket that takes nothing: Write blocks once maxPending bytes wait,
// the flusher's write fails at the timeout paho set, and Close returns
// without waiting for it.
func TestCoalescingStuckSocket(t *testing.T) {
	g := &gatedConn{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	c := newCoalescing(g, time.Minute)
	if err := c.SetWriteDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("first"))
		first <- err
	}()
	<-g.entered
	big := make([]byte, maxPending)
	if _, err := c.Write(big); err != nil { // fills the pending buffer
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("more"))
		blocked <- err
	}()
	testutil.Eventually(t, 10*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.waiting == 1
	}, "a Write blocked on the full buffer")
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*closeFlushTimeout {
		t.Errorf("Close took %v with a stuck socket", took)
	}
	if err := <-blocked; err == nil {
		t.Error("a Write blocked on a full buffer succeeded after Close")
	}
	close(g.gate)
	if err := <-first; err == nil {
		t.Error("the write stuck until after Close succeeded")
	}
	if _, err := c.Write([]byte("after")); err == nil {
		t.Error("Write after Close succeeded")
	}
}

// Close lets a burst in flight finish, so paho's DISCONNECT goes out, and
// nothing is written after it returns.
func TestCoalescingCloseFlushes(t *testing.T) {
	g := &gatedConn{}
	c := newCoalescing(g, time.Minute)
	if _, err := c.Write([]byte{0xe0, 0}); err != nil { // DISCONNECT
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	n := len(g.got())
	if n != 1 {
		t.Errorf("writes before Close returned: %d, want the DISCONNECT", n)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("Write after Close succeeded")
	}
	if len(g.got()) != n {
		t.Error("a write reached the socket after Close")
	}
}
