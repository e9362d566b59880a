package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
)

// listenFdsStart is the first descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFdsStart = 3

var (
	listenersOnce sync.Once
	listenersByFD map[string][]net.Listener
	listenersErr  error
)

// Listeners returns the stream sockets systemd passed to this process
// (socket activation), grouped by their FileDescriptorName= (an unnamed
// descriptor is keyed "LISTEN_FD_<n>"). Without socket activation it
// returns an empty map and nil.
//
// The descriptors are taken from the environment on the first call only:
// LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES are then unset so that child
// processes do not inherit them, and every later call returns the same
// map and error. The caller owns the listeners.
//
// A passed descriptor that is not a stream socket (a datagram socket from
// ListenDatagram=, a FIFO from ListenFIFO=) is closed and left out of
// the map, and the returned error names it; the map still holds every
// usable listener, so the caller decides whether to carry on.
func Listeners() (map[string][]net.Listener, error) {
	listenersOnce.Do(func() {
		listenersByFD, listenersErr = listenersFrom(activation.Files(true))
	})
	return listenersByFD, listenersErr
}

// listenersFrom turns the files systemd passed (in descriptor order, from
// fd 3) into listeners by name.
func listenersFrom(files []*os.File) (map[string][]net.Listener, error) {
	out := make(map[string][]net.Listener)
	var errs []error
	for i, f := range files {
		name := f.Name()
		l, err := net.FileListener(f) // duplicates the descriptor
		if cerr := f.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if err == nil && l == nil {
			err = errors.New("no listener")
		}
		if err != nil {
			if l != nil {
				l.Close()
			}
			errs = append(errs, fmt.Errorf("use socket-activated fd %d (%q): not a stream socket: %w", listenFdsStart+i, name, err))
			continue
		}
		out[name] = append(out[name], l)
	}
	return out, errors.Join(errs...)
}
