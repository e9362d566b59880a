package localbroker

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// errWriteTimeout stops a client that did not take a write in time.
var errWriteTimeout = errors.New("write to client timed out")

// Deliver publishes a downlink message to one device: to each of its
// sessions with a subscription matching topic, at the lower of qos and the
// subscription's QoS (at most 1), and to each of its server-subscribed
// sessions (Identity.ServerSubscribed) at qos (at most 1). No other client receives it, not even
// another device of the product subscribed to the same /broadcast/ topic.
// topic must be a concrete topic the device could subscribe to
// (secrets.TopicAllowed).
//
// A live session is written to at once (bounded by Config.WriteTimeout; a
// client that does not take the data in time is disconnected). An offline
// persistent session gets QoS 1 messages queued (at most
// Config.MaxInflight unacknowledged), sent when it resumes; QoS 0 ones are
// not queued (ErrNotConnected). Deliver returns nil when the message was written or queued for at least one
// session; otherwise ErrNotConnected, ErrNotSubscribed, ErrInflightFull,
// ErrTopicNotAllowed or ErrNotRunning (wrapped), or the write error.
func (b *Broker) Deliver(dev secrets.DeviceID, topic string, payload []byte, qos byte) error {
	err := b.deliver(dev, topic, payload, min(qos, 1))
	if err != nil {
		b.stats.deliverFailed.Add(1)
		return fmt.Errorf("deliver to %s on %q: %w", dev, topic, err)
	}
	b.stats.delivered.Add(1)
	return nil
}

func (b *Broker) deliver(dev secrets.DeviceID, topic string, payload []byte, qos byte) error {
	rs := b.rs.Load()
	if rs == nil {
		return ErrNotRunning
	}
	if !deliverable(dev, topic) {
		return ErrTopicNotAllowed
	}
	b.mu.Lock()
	set := b.devices[dev]
	sessions := make([]*conn, 0, len(set))
	for c := range set {
		sessions = append(sessions, c)
	}
	b.mu.Unlock()
	if len(sessions) == 0 {
		return ErrNotConnected
	}
	var firstErr error
	ok := false
	for _, c := range sessions {
		err := b.deliverTo(rs.srv, c, topic, payload, qos)
		if err == nil {
			ok = true
		} else if firstErr == nil || errors.Is(firstErr, ErrNotSubscribed) {
			firstErr = err
		}
	}
	if ok {
		return nil
	}
	return firstErr
}

// deliverTo publishes to one session if it has a matching subscription or
// is server-subscribed.
// It does what mochi's (unexported) publishToClient does, minus topic
// aliases: inflight accounting, the client's receive maximum, subscription
// identifiers, message expiry.
func (b *Broker) deliverTo(srv *mqtt.Server, c *conn, topic string, payload []byte, qos byte) error {
	cl := c.cl
	subQos, ids, found := matchSubscriptions(cl, topic)
	if !found {
		if !c.id.ServerSubscribed {
			return ErrNotSubscribed
		}
		subQos = qos
	}
	out := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: min(qos, subQos, 1)},
		TopicName:   topic,
		Payload:     payload,
		Created:     time.Now().Unix(),
	}
	if exp := srv.Options.Capabilities.MaximumMessageExpiryInterval; exp > 0 {
		out.Expiry = out.Created + exp
	}
	if len(ids) > 0 {
		out.Properties.SubscriptionIdentifier = ids
	}
	offline := cl.Closed()
	if out.FixedHeader.Qos == 0 {
		if offline {
			return ErrNotConnected // QoS 0 is not queued for offline sessions
		}
		return b.writeBounded(cl, out)
	}

	if cl.State.Inflight.Len() >= int(b.cfg.MaxInflight) {
		atomic.AddInt64(&srv.Info.InflightDropped, 1)
		return ErrInflightFull
	}
	c.ids.mu.Lock()
	pid, err := cl.NextPacketID()
	if err != nil {
		c.ids.mu.Unlock()
		atomic.AddInt64(&srv.Info.InflightDropped, 1)
		return ErrInflightFull
	}
	out.PacketID = uint16(pid)
	// An MQTT 5 client limits how many QoS 1 messages it takes at once; past
	// that the message waits in the inflight store, marked for immediate
	// sending (Expiry -1) when mochi sees the quota free up, as mochi does.
	held := offline || (cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.ReceiveMaximum > 0 &&
		cl.State.Inflight.Len() >= int(cl.Properties.Props.ReceiveMaximum))
	if held && !offline {
		out.Expiry = -1
	}
	if cl.State.Inflight.Set(out) {
		atomic.AddInt64(&srv.Info.Inflight, 1)
	}
	c.ids.mu.Unlock()
	if held {
		return nil // sent when the session resumes / the quota frees up
	}
	cl.State.Inflight.DecreaseSendQuota()
	if err := b.writeBounded(cl, out); err != nil {
		if errors.Is(err, packets.ErrPacketTooLarge) {
			if cl.State.Inflight.Delete(out.PacketID) {
				atomic.AddInt64(&srv.Info.Inflight, -1)
			}
			cl.State.Inflight.IncreaseSendQuota()
		}
		// Otherwise the message stays inflight: a persistent session
		// resends it when it resumes; a clean one drops it at disconnect.
		return err
	}
	return nil
}

// matchSubscriptions merges the client's subscriptions that match topic:
// the highest QoS and the MQTT 5 subscription identifiers.
func matchSubscriptions(cl *mqtt.Client, topic string) (qos byte, ids []int, found bool) {
	for filter, sub := range cl.State.Subscriptions.GetAll() {
		if !matchFilter(filter, topic) {
			continue
		}
		found = true
		qos = max(qos, sub.Qos)
		if sub.Identifier > 0 {
			ids = append(ids, sub.Identifier)
		}
	}
	slices.Sort(ids)
	return qos, ids, found
}

// writeBounded writes a packet to a client from outside its goroutines. If
// the client does not take it within Config.WriteTimeout (its TCP window is
// full), the connection is closed, which also unblocks the write.
func (b *Broker) writeBounded(cl *mqtt.Client, pk packets.Packet) error {
	t := time.AfterFunc(b.cfg.WriteTimeout, func() {
		b.logLimited("write-timeout", slog.LevelWarn, "client did not take a message in time; disconnecting",
			"client", logsafe.Clip(cl.ID), "remote", cl.Net.Remote, "timeout", b.cfg.WriteTimeout)
		cl.Stop(errWriteTimeout)
	})
	defer t.Stop()
	return cl.WritePacket(pk)
}

// PublishAdmin publishes an admin reply to topic, which must be a concrete
// topic under AdminTopicPrefix other than AdminRequestTopic (normally the
// request's ResponseTopic, else AdminResponseTopic). correlationData, when
// not nil, is sent as MQTT 5 Correlation Data. Only admin subscriptions
// receive it. It is a fan-out with mochi's usual semantics: QoS 1, never
// blocking on a slow subscriber (whose copy is then dropped and counted).
func (b *Broker) PublishAdmin(topic string, payload []byte, correlationData []byte) error {
	rs := b.rs.Load()
	if rs == nil {
		return fmt.Errorf("publish admin reply on %q: %w", topic, ErrNotRunning)
	}
	if !adminResponseTopicOK(topic) {
		return fmt.Errorf("publish admin reply on %q: %w", topic, ErrTopicNotAllowed)
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   topic,
		Payload:     payload,
		PacketID:    1, // required by validation; inline publishes are not acknowledged
	}
	pk.Properties.CorrelationData = correlationData
	if err := rs.srv.InjectPacket(rs.inline, pk); err != nil {
		return fmt.Errorf("publish admin reply on %q: %w", topic, err)
	}
	return nil
}

// DisconnectDevice closes every live connection of the device (MQTT 5
// clients get DISCONNECT 0x98, administrative action), e.g. after it was
// removed or disabled; the Authenticator must already refuse it, or it will
// simply reconnect. Offline persistent sessions of the device are left to
// expire. It returns the number of connections closed.
func (b *Broker) DisconnectDevice(dev secrets.DeviceID) int {
	rs := b.rs.Load()
	if rs == nil {
		return 0
	}
	b.mu.Lock()
	var live []*conn
	for c := range b.devices[dev] {
		if !c.offline {
			live = append(live, c)
		}
	}
	b.mu.Unlock()
	for _, c := range live {
		b.disconnect(rs.srv, c.cl, packets.ErrAdministrativeAction, b.cfg.WriteTimeout)
	}
	if len(live) > 0 {
		b.log.Info("device disconnected", "device", dev.String(), "connections", len(live))
	}
	return len(live)
}
