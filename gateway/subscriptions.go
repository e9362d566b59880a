package gateway

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgegw/edgegw/internal/loglimit"
	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
)

// subscriptions mirrors the filters devices subscribe to locally onto their
// cloud sessions. A filter with '+' in the identity positions, as firmware
// built on the Link SDK uses (/sys/+/+/thing/service/+), is mirrored
// narrowed to the device's own identity (secrets.DeviceID.OwnFilter): it can
// only ever match the device's own topics. A device may hold several local
// connections, and several local filters may narrow to one cloud filter; a
// cloud filter is subscribed while at least one (connection, local filter)
// holds it. It implements localbroker.Observer.
//
// A device mirrors at most max cloud filters (broker.max_subscriptions).
// The broker already refuses local subscriptions beyond that bound, and
// narrowing only merges filters, so this is a second fence for whatever
// slips between them (a takeover moving subscriptions while another
// session of the device subscribes): a new cloud filter beyond the bound is
// not mirrored (nor remembered: freeing a place later does not bring it
// in), counted and logged once per device and minute.
type subscriptions struct {
	mgr       mirror
	max       int // cloud filters per device; 0: unbounded
	log       *slog.Logger
	logLimit  *loglimit.Limiter
	overQuota atomic.Uint64 // filters not mirrored because of max

	mu sync.Mutex
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

// mirror is what subscriptions needs of the uplink.Manager.
type mirror interface {
	Subscribe(id secrets.DeviceID, filters map[string]byte) error
	Unsubscribe(id secrets.DeviceID, filters ...string) error
}

func newSubscriptions(mgr mirror, max int, log *slog.Logger) *subscriptions {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &subscriptions{mgr: mgr, max: max, log: log, logLimit: loglimit.New(time.Minute, 1),
		holders: map[secrets.DeviceID]map[string]map[holder]struct{}{}}
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
	var refused []string
	for _, f := range filters {
		cf := cloudFilter(dev, f)
		if byFilter[cf] == nil {
			if s.max > 0 && len(byFilter) >= s.max {
				refused = append(refused, f)
				continue
			}
			byFilter[cf] = map[holder]struct{}{}
			added[cf] = 1
		}
		byFilter[cf][holder{clientID, f}] = struct{}{}
	}
	if len(byFilter) == 0 {
		delete(s.holders, dev)
	}
	s.mu.Unlock()
	if len(refused) > 0 {
		s.overQuota.Add(uint64(len(refused)))
		if ok, suppressed := s.logLimit.Allow(dev.String()); ok {
			s.log.Warn("subscription not mirrored to the cloud: the device holds its maximum number of cloud subscriptions",
				"device", dev.String(), "filter", logsafe.Clip(refused[0]), "refused", len(refused), "max_subscriptions", s.max,
				"suppressed", suppressed)
		}
	}
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
