package spool

import (
	"sync"

	"github.com/edgegw/edgegw/secrets"
)

// notifier hands out one capacity-1 channel per device and signals it
// without blocking.
type notifier struct {
	mu sync.Mutex
	ch map[secrets.DeviceID]chan struct{}
}

func (n *notifier) get(d secrets.DeviceID) chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(map[secrets.DeviceID]chan struct{})
	}
	c := n.ch[d]
	if c == nil {
		c = make(chan struct{}, 1)
		n.ch[d] = c
	}
	return c
}

func (n *notifier) signal(d secrets.DeviceID) {
	select {
	case n.get(d) <- struct{}{}:
	default:
	}
}
