package localbroker

import (
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/internal/logsafe"
)

// DefaultMaxSubscriptions is Config.MaxSubscriptions when zero: Alibaba
// Cloud allows about 100 subscriptions per device.
const DefaultMaxSubscriptions = 100

// subQuota is what OnSubscribe decided about one SUBSCRIBE, for
// OnSubscribed and OnPacketEncode. All three run on the client's read
// goroutine (mochi's processSubscribe), one SUBSCRIBE at a time, so it
// needs no lock.
type subQuota struct {
	reserved int      // new filters admitted, counted in Broker.pending until OnSubscribed
	refused  []int    // indexes of the filters refused for the quota
	filters  []string // the filters as the client sent them
	v5codes  bool     // the SUBACK still has to get 0x97 at refused
}

// OnSubscribe enforces Config.MaxSubscriptions: a device holds at most that
// many subscriptions, summed over all its sessions (offline persistent ones
// included). Filters beyond it are replaced by an empty filter, which mochi
// refuses as invalid (0x80 on MQTT 3.1.1; OnPacketEncode turns the MQTT 5
// code into 0x97 quota exceeded), so they reach neither mochi's topic
// index, nor the session, nor the Observer. Filters the device already
// holds (a re-subscription replaces the old one) and filters the ACL or
// the syntax refuses anyway are not counted.
//
// The count comes from mochi's own session state, so unsubscriptions,
// takeovers and expiries need no bookkeeping here; what this SUBSCRIBE
// admits is reserved in Broker.pending until OnSubscribed, so that two
// connections of one device subscribing at once cannot both take the last
// places.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	b := h.b
	c := b.connOf(cl)
	if c == nil || c.id.Admin || c.id.Provision != nil || len(pk.Filters) == 0 {
		return pk
	}
	q := &subQuota{filters: make([]string, len(pk.Filters))}
	var fresh []int
	seen := make(map[string]struct{}, len(pk.Filters))
	for i, sub := range pk.Filters {
		q.filters[i] = sub.Filter
		if _, dup := seen[sub.Filter]; dup {
			continue
		}
		seen[sub.Filter] = struct{}{}
		if _, held := cl.State.Subscriptions.Get(sub.Filter); held {
			continue
		}
		if !mqtt.IsValidFilter(sub.Filter, false) || !canReceive(&c.id, sub.Filter) {
			continue
		}
		fresh = append(fresh, i)
	}
	dev := c.id.DeviceID
	b.mu.Lock()
	used := b.pending[dev]
	for s := range b.devices[dev] {
		used += s.cl.State.Subscriptions.Len()
	}
	if !c.established || c.removed {
		used += cl.State.Subscriptions.Len() // not indexed (yet, or any more)
	}
	room := max(b.cfg.MaxSubscriptions-used, 0)
	q.reserved = min(len(fresh), room)
	if q.reserved > 0 {
		b.pending[dev] += q.reserved
	}
	b.mu.Unlock()
	c.quota = q
	if q.reserved == len(fresh) {
		return pk
	}
	q.refused = fresh[q.reserved:]
	q.v5codes = cl.Properties.ProtocolVersion == 5
	filters := make(packets.Subscriptions, len(pk.Filters))
	copy(filters, pk.Filters)
	for _, i := range q.refused {
		filters[i].Filter = "" // invalid: refused by mochi before the ACL and the index
	}
	pk.Filters = filters
	return pk
}

// quotaDone ends what OnSubscribe started: it releases the reservation
// (the admitted filters are in the session now) and counts and logs the
// refusals. It returns the decision, or nil when OnSubscribe made none.
func (h *hook) quotaDone(c *conn) *subQuota {
	q := c.quota
	if q == nil {
		return nil
	}
	b := h.b
	if q.reserved > 0 {
		dev := c.id.DeviceID
		b.mu.Lock()
		if b.pending[dev] -= q.reserved; b.pending[dev] <= 0 {
			delete(b.pending, dev)
		}
		b.mu.Unlock()
	}
	if len(q.refused) > 0 {
		b.stats.subOverQuota.Add(uint64(len(q.refused)))
		b.logDevice("subscribe-quota", c.id.DeviceID, slog.LevelWarn,
			"subscription refused: the device holds its maximum number of subscriptions",
			"device", c.id.String(), "client", logsafe.Clip(c.clientID), "filter", logsafe.Clip(q.filters[q.refused[0]]),
			"refused", len(q.refused), "max_subscriptions", b.cfg.MaxSubscriptions, "remote", c.remote)
	}
	if !q.v5codes {
		c.quota = nil
	}
	return q
}

// subackQuotaCodes gives an MQTT 5 SUBACK the reason 0x97 "quota exceeded"
// for the filters OnSubscribe refused. It runs from OnPacketEncode on the
// read goroutine, right after OnSubscribed.
func (c *conn) subackQuotaCodes(pk packets.Packet) packets.Packet {
	q := c.quota
	c.quota = nil
	if q == nil || !q.v5codes || len(pk.ReasonCodes) != len(q.filters) {
		return pk
	}
	codes := make([]byte, len(pk.ReasonCodes))
	copy(codes, pk.ReasonCodes)
	for _, i := range q.refused {
		if codes[i] == packets.ErrTopicFilterInvalid.Code {
			codes[i] = packets.ErrQuotaExceeded.Code
		}
	}
	pk.ReasonCodes = codes
	return pk
}
