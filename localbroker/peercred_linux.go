package localbroker

import (
	"net"
	"syscall"
)

// unixPeer returns the credentials of the process at the other end of a unix
// socket connection, or nil for other connections.
func unixPeer(c net.Conn) *UnixPeer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return nil
	}
	return &UnixPeer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
}
