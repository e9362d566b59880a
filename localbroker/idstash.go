package localbroker

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// idStash works around a mochi defect: MQTT gives client and server
// independent packet id spaces (3.1.1 §2.3.1, 5.0 §2.2.1), but mochi
// answers a SUBSCRIBE or UNSUBSCRIBE whose id equals the id of any message
// in the client's inflight store with 0x91 "packet identifier in use" —
// including a downlink the broker sent and the client has not acknowledged
// yet. A resumed persistent session gets its queued downlinks resent right
// after the CONNACK, so a client that then subscribes with its own first id
// (mosquitto_sub -c, most embedded SDKs) is refused.
//
// Around such a packet the broker takes the colliding downlink out of the
// inflight store (OnPacketRead) and puts it back once mochi processed the
// packet (OnPacketProcessed). Both run on the client's read goroutine, so
// the client's PUBACK for that downlink cannot be processed in between;
// mu keeps Deliver from handing out the freed id meanwhile.
type idStash struct {
	mu     sync.Mutex
	held   bool            // mu is held by the stash, from OnPacketRead to OnPacketProcessed
	parked *packets.Packet // a downlink to restore; a pointer, as a Packet is most of a KiB and rarely needed
}

// stashCollidingID sets aside the in-flight downlink whose id pk reuses.
// Only packets mochi will process (valid ones) are considered, so that
// OnPacketProcessed, which mochi skips for invalid packets, is sure to run.
func (b *Broker) stashCollidingID(cl *mqtt.Client, pk packets.Packet) {
	c := b.connOf(cl)
	if c == nil {
		return
	}
	valid := pk.SubscribeValidate
	if pk.FixedHeader.Type == packets.Unsubscribe {
		valid = pk.UnsubscribeValidate
	}
	if valid() != packets.CodeSuccess {
		return
	}
	c.ids.mu.Lock()
	parked, ok := cl.State.Inflight.Get(pk.PacketID)
	if !ok || parked.FixedHeader.Type != packets.Publish {
		c.ids.mu.Unlock()
		return
	}
	cl.State.Inflight.Delete(pk.PacketID)
	c.ids.parked, c.ids.held = &parked, true
	b.stats.idCollisions.Add(1)
}

// OnPacketProcessed puts back a downlink stashCollidingID set aside.
func (h *hook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type != packets.Subscribe && pk.FixedHeader.Type != packets.Unsubscribe {
		return
	}
	c := h.b.connOf(cl)
	if c == nil || !c.ids.held {
		return
	}
	if c.ids.parked != nil {
		cl.State.Inflight.Set(*c.ids.parked)
		c.ids.parked = nil
	}
	c.ids.held = false
	c.ids.mu.Unlock()
}
