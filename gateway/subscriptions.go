package gateway

import (
	"sync"

	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// subscriptions mirrors the filters devices subscribe to locally onto their
// cloud sessions. A filter with '+' in the identity positions, as firmware
// built on the Link SDK uses (/sys/+/+/thing/service/+), is mirrored
// narrowed to the device's own identity (secrets.DeviceID.OwnFilter): it can
// only ever match the device's own topics. A device may hold several local
// connections, and several local filters may narrow to one cloud filter; a
// cloud filter is subscribed while at least one (connection, local filter)
// holds it. It implements localbroker.Observer.
type subscriptions struct {
	mgr *uplink.Manager
	mu  sync.Mutex
	// holders[device][cloud filter] = set of holders, each a local client
	// ID and the local filter it subscribed to.
	holders map[secrets.DeviceID]map[string]map[holder]struct{}
}

type holder struct{ clientID, filter string }

// cloudFilter is what the device's local filter f is mirrored as.
func cloudFilter(dev secrets.DeviceID, f string) string {
	if own, ok := dev.OwnFilter("", f); ok {
		return own
	}
	return f
}

func newSubscriptions(mgr *uplink.Manager) *subscriptions {
	return &subscriptions{mgr: mgr, holders: map[secrets.DeviceID]map[string]map[holder]struct{}{}}
}

func deviceOf(id localbroker.Identity) (secrets.DeviceID, bool) {
	if id.Admin || id.ProductKey == "" {
		return secrets.DeviceID{}, false
	}
	return id.DeviceID, true
}

func (s *subscriptions) Connected(localbroker.Identity, string)           {}
func (s *subscriptions) Disconnected(localbroker.Identity, string, error) {}

func (s *subscriptions) Subscribed(id localbroker.Identity, clientID string, filters []string) {
	dev, ok := deviceOf(id)
	if !ok {
		return
	}
	s.mu.Lock()
	byFilter := s.holders[dev]
	if byFilter == nil {
		byFilter = map[string]map[holder]struct{}{}
		s.holders[dev] = byFilter
	}
	added := map[string]byte{}
	for _, f := range filters {
		cf := cloudFilter(dev, f)
		if byFilter[cf] == nil {
			byFilter[cf] = map[holder]struct{}{}
			added[cf] = 1
		}
		byFilter[cf][holder{clientID, f}] = struct{}{}
	}
	s.mu.Unlock()
	if len(added) > 0 {
		_ = s.mgr.Subscribe(dev, added) // unknown device (no session): nothing to mirror
	}
}

func (s *subscriptions) Unsubscribed(id localbroker.Identity, clientID string, filters []string) {
	dev, ok := deviceOf(id)
	if !ok {
		return
	}
	var removed []string
	s.mu.Lock()
	byFilter := s.holders[dev]
	for _, f := range filters {
		cf := cloudFilter(dev, f)
		set := byFilter[cf]
		if set == nil {
			continue
		}
		delete(set, holder{clientID, f})
		if len(set) == 0 {
			delete(byFilter, cf)
			removed = append(removed, cf)
		}
	}
	if len(byFilter) == 0 {
		delete(s.holders, dev)
	}
	s.mu.Unlock()
	if len(removed) > 0 {
		_ = s.mgr.Unsubscribe(dev, removed...)
	}
}
