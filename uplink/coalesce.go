package uplink

import (
	"errors"
	"net"
	"sync"
	"time"
)

// coalescing gives paho's writes to one cloud connection one write(2) per
// burst instead of one per packet. paho writes every packet with its own
// Write call from its single outgoing goroutine; with a device's window of
// publishes (and the PUBACKs for downlinks) going out back to back, that is
// one system call, and one TCP segment for the cloud to read, per packet.
//
// A Write that is not part of a burst (none for burstGap) goes straight
// out on paho's goroutine. Within a burst, Write copies the packet into
// the connection's pending buffer and returns; a flusher goroutine,
// started when the buffer goes from empty to not empty and gone once it is
// empty again (an idle session has none), writes whatever has gathered by
// the time it runs. A write
// error is kept and returned by every later Write, and closes the
// connection so that paho's reader sees it too; what paho had written
// after the failure is lost with the connection, as it would be in the
// kernel's buffer, and is sent again from the spool after the reconnect.
//
// Deadlines: paho sets a write deadline before each publish write and
// clears it afterwards. The flusher bounds each of its writes by the last
// timeout paho asked for (or the session's WriteTimeout), so a cloud that
// stops reading fails the connection within that time, as before.
type coalescing struct {
	net.Conn
	timeout time.Duration // default bound of one flush

	mu        sync.Mutex
	space     sync.Cond // signalled when the pending buffer shrinks or err is set
	pending   []byte
	flushing  bool
	err       error
	wto       time.Duration // last write timeout paho set
	closed    bool
	waiting   int       // Writes blocked on a full buffer
	lastWrite time.Time // end of the last write(2)
}

// maxPending bounds the bytes waiting for the flusher: beyond it Write
// blocks, as a full socket buffer would.
const maxPending = 64 << 10

// errCoalescingClosed is returned by a Write after Close.
var errCoalescingClosed = errors.New("use of closed network connection")

// coalesceBufs recycles pending buffers between bursts, so that an idle
// session holds none.
var coalesceBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func newCoalescing(nc net.Conn, timeout time.Duration) *coalescing {
	c := &coalescing{Conn: nc, timeout: timeout}
	c.space.L = &c.mu
	return c
}

func (c *coalescing) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && len(c.pending) > 0 && len(c.pending)+len(p) > maxPending {
		c.waiting++
		c.space.Wait()
		c.waiting--
	}
	if c.err != nil {
		return 0, c.err
	}
	if !c.flushing && len(c.pending) == 0 && time.Since(c.lastWrite) > burstGap {
		return c.writeNow(p)
	}
	if c.pending == nil {
		c.pending = (*coalesceBufs.Get().(*[]byte))[:0]
	}
	c.pending = append(c.pending, p...)
	if !c.flushing {
		c.flushing = true
		go c.flush()
	}
	return len(p), nil
}

// burstGap: a Write this long after the previous write(2) is not part of
// a burst and goes out at once, on the caller's goroutine: at a low rate
// every packet would otherwise wait for a flusher goroutine to be
// scheduled (a hand-off that, on a busy box, costs milliseconds).
const burstGap = time.Millisecond

// writeNow writes p on the caller's goroutine; c.mu is held and is held
// again on return. What other goroutines Write meanwhile gathers for a
// flusher.
func (c *coalescing) writeNow(p []byte) (int, error) {
	c.flushing = true
	timeout := c.timeoutLocked()
	c.mu.Unlock()
	err := c.writeOut(p, timeout)
	c.mu.Lock()
	c.lastWrite = time.Now()
	if err != nil {
		c.fail(err)
		c.flushing = false
		c.space.Broadcast()
		return 0, err
	}
	if len(c.pending) > 0 {
		go c.flush() // still flushing
	} else {
		c.flushing = false
		c.space.Broadcast()
	}
	return len(p), nil
}

// timeoutLocked is the bound of the next write(2); c.mu is held.
func (c *coalescing) timeoutLocked() time.Duration {
	timeout := c.wto
	if timeout <= 0 {
		timeout = c.timeout
	}
	if c.closed {
		timeout = min(timeout, closeFlushTimeout)
	}
	return timeout
}

// writeOut writes buf to the socket within timeout.
func (c *coalescing) writeOut(buf []byte, timeout time.Duration) error {
	if timeout > 0 {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
	}
	_, err := c.Conn.Write(buf)
	return err
}

// fail keeps the first write error and closes the socket; c.mu is held.
func (c *coalescing) fail(err error) {
	if c.err == nil {
		c.err = err
		_ = c.Conn.Close()
	}
}

// flush writes the pending bytes until there are none left.
func (c *coalescing) flush() {
	var spare []byte
	c.mu.Lock()
	for len(c.pending) > 0 && c.err == nil {
		buf := c.pending
		c.pending = spare
		timeout := c.timeoutLocked()
		c.mu.Unlock()

		err := c.writeOut(buf, timeout)

		c.mu.Lock()
		c.lastWrite = time.Now()
		spare = buf[:0]
		if err != nil {
			c.fail(err)
		}
		c.space.Broadcast()
	}
	c.flushing = false
	if c.pending != nil && (len(c.pending) == 0 || c.err != nil) {
		if cap(c.pending) <= maxPending {
			b := c.pending[:0]
			coalesceBufs.Put(&b)
		}
		c.pending = nil
	}
	c.space.Broadcast()
	c.mu.Unlock()
	if spare != nil && cap(spare) <= maxPending {
		coalesceBufs.Put(&spare)
	}
}

// SetWriteDeadline records the timeout paho wants for a write; clearing it
// (paho does after each Write returns) is ignored, the flusher bounds its
// own writes.
func (c *coalescing) SetWriteDeadline(t time.Time) error {
	if !t.IsZero() {
		c.mu.Lock()
		c.wto = time.Until(t)
		c.mu.Unlock()
	}
	return nil
}

// SetDeadline sets the read deadline and records the write timeout.
func (c *coalescing) SetDeadline(t time.Time) error {
	_ = c.SetWriteDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

// Close gives a burst being flushed (paho's DISCONNECT, typically) a
// short time to go out, then closes the connection: once it returns,
// nothing more is written.
func (c *coalescing) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	if c.flushing {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		deadline := time.AfterFunc(closeFlushTimeout, func() {
			c.mu.Lock()
			c.space.Broadcast()
			c.mu.Unlock()
		})
		start := time.Now()
		for c.flushing && time.Since(start) < closeFlushTimeout {
			c.space.Wait()
		}
		deadline.Stop()
	}
	if c.err == nil {
		c.err = errCoalescingClosed
	}
	c.space.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}

// closeFlushTimeout bounds how long Close lets pending bytes go out (a
// cloud that stopped reading does not hold a shutdown longer).
const closeFlushTimeout = 200 * time.Millisecond
