package gateway

import (
	"sync"

	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
)

// subscriptions mirrors the filters devices subscribe to locally onto their
// cloud sessions. A device may hold several local connections; a filter is
// subscribed in the cloud while at least one of them holds it. It implements
// localbroker.Observer.
type subscriptions struct {
	mgr *uplink.Manager
	mu  sync.Mutex
	// holders[device][filter] = set of local client IDs holding it.
	holders map[secrets.DeviceID]map[string]map[string]struct{}
}

func newSubscriptions(mgr *uplink.Manager) *subscriptions {
	return &subscriptions{mgr: mgr, holders: map[secrets.DeviceID]map[string]map[string]struct{}{}}
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
		byFilter = map[string]map[string]struct{}{}
		s.holders[dev] = byFilter
	}
	added := map[string]byte{}
	for _, f := range filters {
		if byFilter[f] == nil {
			byFilter[f] = map[string]struct{}{}
			added[f] = 1
		}
		byFilter[f][clientID] = struct{}{}
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
		set := byFilter[f]
		if set == nil {
			continue
		}
		delete(set, clientID)
		if len(set) == 0 {
			delete(byFilter, f)
			removed = append(removed, f)
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
