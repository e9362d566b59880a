package localbroker

import (
	"errors"
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/internal/logsafe"
)

// provisionClientPrefix sets a provisioning connection's mochi client ID
// apart, so that it never takes over (or inherits) a normal session of the
// device that uses the same client identifier, nor the other way round.
const provisionClientPrefix = "$edgegw/provision/"

// errProvisioned ends a provisioning connection after its hold time.
var errProvisioned = errors.New("activation connection closed after the push")

// admitProvision prepares a provisioning connection in OnConnect: its own
// client ID, a clean session, no will. It reports a reason when the
// authenticator's Provision is unusable.
func admitProvision(cl *mqtt.Client, p *Provision) string {
	if p.Topic == "" || p.Payload.IsZero() {
		return "provisioning identity without topic or payload"
	}
	cl.ID = provisionClientPrefix + cl.ID
	cl.Properties.Clean = true
	cl.Properties.Props.SessionExpiryInterval = 0
	cl.Properties.Will = mqtt.Will{}
	return ""
}

// pushProvision writes the provisioning message right after the CONNACK
// (OnSessionEstablished runs on the client's goroutine before its read
// loop) and arms the close after the hold time.
func (h *hook) pushProvision(cl *mqtt.Client, c *conn) {
	b, p := h.b, c.id.Provision
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   p.Topic,
		Payload:     []byte(p.Payload.Reveal()),
		Created:     time.Now().Unix(),
	}
	if err := b.writeBounded(cl, pk); err != nil {
		b.log.Warn("activation: push to the device failed", "device", c.id.String(), "client", logsafe.Clip(c.clientID),
			"topic", p.Topic, "err", err)
		cl.Stop(err)
		return
	}
	hold := p.Hold
	if hold <= 0 {
		hold = DefaultProvisionHold
	}
	b.log.Info("activation: deviceSecret pushed to the device", "device", c.id.String(), "client", logsafe.Clip(c.clientID),
		"topic", p.Topic, "remote", c.remote, "close_in", hold)
	b.mu.Lock()
	if !c.offline {
		c.holdTimer = time.AfterFunc(hold, func() { cl.Stop(errProvisioned) })
	}
	b.mu.Unlock()
}

// provisionPublish answers a publish on a provisioning connection: the
// reply on Provision.Reply is acknowledged and dropped, anything else is
// acknowledged, dropped and logged as refused (closing a 3.1.1 connection
// would only make the firmware retry). Nothing reaches the Sink.
func (h *hook) provisionPublish(cl *mqtt.Client, c *conn, pk *packets.Packet) error {
	if pk.TopicName == c.id.Provision.Reply {
		h.b.log.Debug("activation: device acknowledged the push", "device", c.id.String(), "topic", logsafe.Clip(pk.TopicName))
		return packets.CodeSuccessIgnore
	}
	h.b.stats.pubDenied.Add(1)
	h.b.logDevice("acl-publish", c.id.DeviceID, slog.LevelWarn, "publish refused: an activation connection may not publish; acknowledged and dropped",
		"device", c.id.String(), "client", logsafe.Clip(c.clientID), "topic", logsafe.Clip(pk.TopicName), "qos", pk.FixedHeader.Qos, "remote", c.remote)
	if pk.FixedHeader.Qos > 0 && cl.Properties.ProtocolVersion == 5 {
		return packets.ErrNotAuthorized
	}
	return packets.CodeSuccessIgnore
}

// observer returns the Observer for events about c: none for provisioning
// connections, which are not sessions of the device.
func (b *Broker) observer(c *conn) Observer {
	if c.id.Provision != nil {
		return nil
	}
	return b.cfg.Observer
}
