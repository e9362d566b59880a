//go:build !linux

package localbroker

import "net"

// unixPeer is only implemented on Linux.
func unixPeer(net.Conn) *UnixPeer { return nil }
