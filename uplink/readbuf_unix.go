//go:build unix

package uplink

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// pooledReader buffers reads from a TCP connection with a buffer borrowed
// from readBufPool only while it holds unread bytes (see readBuffered). It
// waits for the socket to become readable through syscall.RawConn, which
// needs no buffer, then reads what is there into a pooled one. A read of
// readBufferSize or more with nothing buffered goes straight to the socket.
// Like bufio.Reader it is for one reader at a time.
type pooledReader struct {
	net.Conn
	rc   syscall.RawConn
	buf  *[]byte // nil while nothing is buffered
	r, w int     // unread bytes are (*buf)[r:w]
}

var readBufPool = sync.Pool{New: func() any {
	b := make([]byte, readBufferSize)
	return &b
}}

// newPooledReader returns a pooledReader for a connection that gives
// access to its file descriptor (*net.TCPConn), else nil.
func newPooledReader(nc net.Conn) net.Conn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return &pooledReader{Conn: nc, rc: rc}
}

func (c *pooledReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.buf == nil {
		if len(p) >= readBufferSize {
			return c.Conn.Read(p)
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, (*c.buf)[c.r:c.w])
	c.r += n
	if c.r == c.w {
		readBufPool.Put(c.buf)
		c.buf = nil
	}
	return n, nil
}

// fill waits until the socket has data and reads it into a pooled buffer.
// Errors read like those of net.Conn.Read; the end of the stream is io.EOF.
func (c *pooledReader) fill() error {
	var (
		b    *[]byte
		n    int
		rerr error
	)
	err := c.rc.Read(func(fd uintptr) bool {
		b = readBufPool.Get().(*[]byte)
		n, rerr = syscall.Read(int(fd), *b)
		if rerr == syscall.EAGAIN || rerr == syscall.EINTR {
			readBufPool.Put(b) // nothing to read yet: wait without a buffer
			b = nil
			return false
		}
		return true
	})
	switch {
	case err != nil: // closed, or a deadline passed
		return err
	case rerr != nil:
		readBufPool.Put(b)
		return &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n <= 0:
		readBufPool.Put(b)
		return io.EOF
	}
	c.buf, c.r, c.w = b, 0, n
	return nil
}
