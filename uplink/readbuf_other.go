//go:build !unix

package uplink

import "net"

// newPooledReader is the pooled reader of unix systems (readbuf_unix.go);
// elsewhere connections get a bufio.Reader.
func newPooledReader(net.Conn) net.Conn { return nil }
