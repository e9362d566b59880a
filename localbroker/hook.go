package localbroker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/internal/logsafe"
	"github.com/edgegw/edgegw/secrets"
)

// errRefused marks a connection the hook refused (and already logged).
var errRefused = errors.New("connection refused")

// v5ConnackCodes maps MQTT 3.1.1 CONNACK return codes to MQTT 5 reason codes.
var v5ConnackCodes = map[byte]byte{
	RefuseProtocolVersion:    0x84,
	RefuseIdentifierRejected: 0x85,
	RefuseServerUnavailable:  0x88,
	RefuseBadCredentials:     0x86,
	RefuseNotAuthorized:      0x87,
}

// pubackCodes are the MQTT 5 PUBACK reason codes a sink may choose.
var pubackCodes = map[byte]packets.Code{
	ReasonUnspecifiedError:       packets.ErrUnspecifiedError,
	ReasonImplementationSpecific: packets.ErrImplementationSpecificError,
	ReasonNotAuthorized:          packets.ErrNotAuthorized,
	ReasonTopicNameInvalid:       packets.ErrTopicNameInvalid,
	ReasonQuotaExceeded:          packets.ErrQuotaExceeded,
	ReasonPayloadFormatInvalid:   packets.ErrPayloadFormatInvalid,
}

// hook is the broker's single mochi hook: authentication, ACL, the sink,
// admin requests and session bookkeeping.
type hook struct {
	mqtt.HookBase
	b         *Broker
	srv       *mqtt.Server
	sinkCtx   context.Context
	transport map[string]string // listener ID → transport; read-only once serving
}

var provided = []byte{
	mqtt.OnConnect,
	mqtt.OnConnectAuthenticate,
	mqtt.OnACLCheck,
	mqtt.OnSessionEstablished,
	mqtt.OnDisconnect,
	mqtt.OnPacketRead,
	mqtt.OnPacketEncode,
	mqtt.OnPacketProcessed,
	mqtt.OnPublish,
	mqtt.OnPublished,
	mqtt.OnSubscribe,
	mqtt.OnSubscribed,
	mqtt.OnUnsubscribed,
	mqtt.OnClientExpired,
}

// ID names the hook in mochi's logs.
func (h *hook) ID() string { return "edgegw-localbroker" }

// Provides reports the hook methods mochi should call.
func (h *hook) Provides(b byte) bool { return bytes.IndexByte(provided, b) >= 0 }

// OnConnect authenticates the connection. Authentication happens here rather
// than in OnConnectAuthenticate because mochi answers a false from the
// latter always with "bad user name or password"; here the hook writes the
// CONNACK code the Authenticator chose and returns an error, which makes
// mochi close the connection without writing anything else.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	b := h.b
	transport := h.transport[cl.Net.Listener]
	req := ConnectRequest{
		ClientID:        pk.Connect.ClientIdentifier,
		Username:        string(pk.Connect.Username),
		Password:        secrets.NewSecret(string(pk.Connect.Password)),
		ProtocolVersion: pk.ProtocolVersion,
		Keepalive:       pk.Connect.Keepalive,
		Listener:        cl.Net.Listener,
		Transport:       transport,
		Remote:          cl.Net.Remote,
	}
	switch nc := cl.Net.Conn.(type) {
	case *tls.Conn:
		// The CONNECT was read through the TLS connection, so the
		// handshake is complete; make sure anyway before trusting state.
		if !nc.ConnectionState().HandshakeComplete {
			ctx, cancel := context.WithTimeout(context.Background(), b.cfg.ConnectTimeout)
			err := nc.HandshakeContext(ctx)
			cancel()
			if err != nil {
				return fmt.Errorf("tls handshake: %w", err)
			}
		}
		req.PeerCertificates = nc.ConnectionState().PeerCertificates
	case *wsConn:
		req.PeerCertificates = nc.peerCerts
	default:
		req.Peer = unixPeer(cl.Net.Conn)
	}

	id, err := b.cfg.Auth.Authenticate(req)
	if err != nil {
		code, reason := RefuseNotAuthorized, err.Error()
		var r *Refusal
		if errors.As(err, &r) {
			code, reason = r.Code, r.Reason
		}
		return h.refuse(cl, req, nil, code, reason)
	}
	switch {
	case !id.Admin && (id.ProductKey == "" || id.DeviceName == ""):
		b.log.Error("authenticator returned a device identity without productKey or deviceName",
			"client", logsafe.Clip(cl.ID), "listener", cl.Net.Listener)
		return h.refuse(cl, req, &id, RefuseServerUnavailable, "incomplete identity from the authenticator")
	case id.Admin && pk.Connect.WillFlag:
		return h.refuse(cl, req, &id, RefuseNotAuthorized, "admin connections may not set a will")
	case pk.Connect.WillFlag && id.Provision == nil && !canPublish(&id, pk.Connect.WillTopic):
		return h.refuse(cl, req, &id, RefuseNotAuthorized, "will topic outside the device namespace")
	}
	clientID := cl.ID // as sent, or the one mochi assigned to an MQTT 5 client
	key, ok := sessionKey(id, clientID)
	if !ok {
		b.log.Error("authenticator returned an identity with '|' in it", "client", logsafe.Clip(clientID), "listener", cl.Net.Listener)
		return h.refuse(cl, req, nil, RefuseServerUnavailable, "unusable identity from the authenticator")
	}
	cl.ID = key
	if id.Provision != nil && !id.Admin {
		if reason := admitProvision(cl, id.Provision); reason != "" {
			b.log.Error("authenticator returned an unusable provisioning identity", "client", logsafe.Clip(clientID), "listener", cl.Net.Listener)
			return h.refuse(cl, req, &id, RefuseServerUnavailable, reason)
		}
	}
	c := &conn{
		cl:        cl,
		nc:        cl.Net.Conn,
		id:        id,
		clientID:  clientID,
		session:   cl.ID,
		remote:    cl.Net.Remote,
		listener:  cl.Net.Listener,
		transport: transport,
	}
	b.conns.Store(cl, c)
	if c.nc != nil {
		b.netConns.Store(c.nc, c)
	}
	return nil
}

// refusalReasonMax bounds an Authenticator's refusal reason in the log
// line: the reason may quote what the client sent (Authenticators clip
// what they quote; this is the backstop).
const refusalReasonMax = 512

// sessionKey is the mochi client ID of a connection: the identity, then
// the client identifier it sent. mochi keys sessions (takeover, inherited
// subscriptions and queued messages, expiry) by client ID alone, so without
// the identity in the key a device could take another's usual client
// identifier with a persistent session and either inherit the owner's
// session or, refused, hold the identifier and lock the owner out until
// the session expired (issue #13). With it, two identities never share a
// session: each has its own, whatever client identifiers they choose, and
// a second connection of the same identity with the same client
// identifier takes the session over as MQTT prescribes. The identity part
// never contains '|' (product keys, device names and admin names cannot,
// secrets/validate.go; ok is false otherwise), so keys of different
// identities never collide. MQTT 5's Assigned Client Identifier is
// unaffected: mochi keeps it apart from the ID.
func sessionKey(id Identity, clientID string) (key string, ok bool) {
	var who string
	if id.Admin {
		who = "$admin:" + id.Name
	} else {
		who = id.ProductKey + "/" + id.DeviceName
		if strings.Contains(id.ProductKey, "/") {
			return "", false
		}
	}
	if strings.Contains(who, "|") {
		return "", false
	}
	return who + "|" + clientID, true
}

// refuse writes a CONNACK with the given 3.1.1 code (or its MQTT 5
// equivalent), logs the refusal without secrets, and returns errRefused.
func (h *hook) refuse(cl *mqtt.Client, req ConnectRequest, id *Identity, code byte, reason string) error {
	b := h.b
	b.stats.refused.Add(1)
	rc := code
	if req.ProtocolVersion == 5 {
		var ok bool
		if rc, ok = v5ConnackCodes[code]; !ok {
			rc = v5ConnackCodes[RefuseNotAuthorized]
		}
	} else if code < RefuseProtocolVersion || code > RefuseNotAuthorized {
		rc = RefuseNotAuthorized
	}
	args := []any{"client", logsafe.Clip(cl.ID), "username", logsafe.Clip(req.Username), "remote", req.Remote, "listener", req.Listener,
		"code", code, "reason", logsafe.ClipN(reason, refusalReasonMax)}
	if id != nil {
		args = append(args, "device", id.String())
	}
	b.logLimited("refused", slog.LevelInfo, "connection refused", args...)
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connack},
		ReasonCode:  rc,
	})
	return errRefused
}

// OnConnectAuthenticate admits the connections OnConnect authenticated.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	_, ok := h.b.conns.Load(cl)
	return ok
}

// OnACLCheck is called for every publish (write, concrete topic), every
// subscription (read, filter) and every delivery (read, concrete topic). It
// is on the hot path: a map load, a string compare for the common case of a
// device publishing to the topic it used last, and secrets.TopicAllowed.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	v, ok := h.b.conns.Load(cl)
	if !ok {
		return false
	}
	c := v.(*conn)
	if !write {
		if p := c.id.Provision; p != nil {
			return topic == p.Topic // subscribing to the pushed topic is harmless
		}
		return canReceive(&c.id, topic)
	}
	if !c.id.Admin {
		// A device's publish outside its namespace is refused in
		// OnPublish, where it can be acknowledged instead of closing
		// the connection (see refuseTopic).
		return true
	}
	if canPublish(&c.id, topic) {
		return true
	}
	h.b.stats.pubDenied.Add(1)
	h.b.logLimited("acl-publish", slog.LevelInfo, "publish denied: topic outside the namespace",
		"admin", c.id.String(), "client", logsafe.Clip(c.clientID), "topic", logsafe.Clip(topic), "remote", c.remote)
	return false
}

// publishAllowed reports whether a device may publish to topic, caching the
// last allowed topic (devices publish to few topics, mostly the same one).
func (c *conn) publishAllowed(topic string) bool {
	if last := c.lastPub.Load(); last != nil && *last == topic {
		return true
	}
	if canPublish(&c.id, topic) {
		c.rememberPub(topic)
		return true
	}
	return false
}

// refuseTopic answers a device's publish outside its namespace. Nothing
// of it is forwarded; it is counted and logged at most once per device and
// log window. mochi's own answer, closing a 3.1.1 connection after a
// refused QoS 1 publish, made firmware that publishes such a topic right
// after CONNACK (a version report, say) reconnect and resend it for ever.
// So an MQTT 5 client gets PUBACK 0x87 "not authorized", a 3.1.1 client a
// PUBACK (it has no negative one), and QoS 0 is dropped. The PUBACK takes
// its turn in the connection's ack queue, behind the publishes still
// waiting for the sink.
func (h *hook) refuseTopic(cl *mqtt.Client, c *conn, pk *packets.Packet) error {
	h.b.stats.pubDenied.Add(1)
	h.b.logDevice("acl-publish", c.id.DeviceID, slog.LevelWarn, "publish refused: topic outside the device's namespace; acknowledged and dropped",
		"device", c.id.String(), "client", logsafe.Clip(c.clientID), "topic", logsafe.Clip(pk.TopicName), "qos", pk.FixedHeader.Qos, "remote", c.remote)
	if pk.FixedHeader.Qos == 0 {
		return packets.CodeSuccessIgnore
	}
	v5 := cl.Properties.ProtocolVersion == 5
	ticket, ok := c.acks.enter(int(h.b.cfg.MaxInflight), h.b.stopping, true, pk.PacketID, v5)
	if ok {
		var code byte
		if v5 {
			code = ReasonNotAuthorized
		}
		h.ackDone(c, ticket, ackReady, code)
	}
	return errAckQueued
}

// OnSessionEstablished indexes the session once its CONNACK is written.
//
// Known gap: a Deliver between the CONNACK of a resumed persistent session
// and this indexing still finds the taken-over (offline) session and
// queues the message there, where the new session does not see it; the
// message is lost for that device (counted as delivered). Closing it needs
// the new session indexed before the CONNACK with its writes held until
// then.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	b := h.b
	c := b.connOf(cl)
	if c == nil {
		return
	}
	b.mu.Lock()
	if c.removed {
		b.mu.Unlock()
		return
	}
	if old := b.bySession[c.session]; old != nil && old != c {
		// Taken over. If the old connection has not yet been through
		// OnDisconnect, it keeps its identity until then (for its
		// Disconnected event), but no longer receives downlink, nor
		// PUBACKs (its read loop may be waiting for room in the queue).
		old.acks.close()
		if old.disconnectSeen.Load() {
			b.removeLocked(old)
		} else {
			b.unindexLocked(old)
		}
	}
	b.bySession[c.session] = c
	if !c.id.Admin && c.id.Provision == nil { // Deliver never reaches a provisioning connection
		k := c.id.DeviceID
		set := b.devices[k]
		if set == nil {
			set = map[*conn]struct{}{}
			b.devices[k] = set
		}
		set[c] = struct{}{}
	}
	c.established = true
	b.mu.Unlock()
	b.stats.connects.Add(1)
	b.log.Debug("client connected", "device", c.id.String(), "client", logsafe.Clip(c.clientID), "remote", c.remote,
		"listener", c.listener, "method", c.id.Method)
	if o := b.observer(c); o != nil {
		o.Connected(c.id, c.clientID)
	}
	if c.id.Provision != nil {
		h.pushProvision(cl, c)
	}
}

// OnDisconnect ends the connection; a clean or taken-over session ends with
// it, a persistent one stays indexed (Deliver queues QoS 1 for it) until it
// expires.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	b := h.b
	c := b.connOf(cl)
	if c == nil {
		return
	}
	c.disconnectSeen.Store(true)
	c.acks.close() // publishes completing from now on are not acknowledged
	takenOver := cl.IsTakenOver()
	var unsub []string
	b.mu.Lock()
	established := c.established
	c.offline = true
	if c.holdTimer != nil {
		c.holdTimer.Stop()
	}
	switch {
	case takenOver:
		b.removeLocked(c)
	case expire:
		unsub = filtersOf(cl)
		b.removeLocked(c)
	}
	b.mu.Unlock()
	if !established {
		return
	}
	if err == nil {
		err = cl.StopCause()
	}
	b.log.Debug("client disconnected", "device", c.id.String(), "client", logsafe.Clip(c.clientID), "remote", c.remote,
		"error", err, "session_kept", !expire && !takenOver)
	if o := b.observer(c); o != nil {
		o.Disconnected(c.id, c.clientID, err)
		if len(unsub) > 0 {
			o.Unsubscribed(c.id, c.clientID, unsub)
		}
	}
}

// OnClientExpired ends a persistent session. mochi itself leaves the
// session's subscriptions in its topic index; they are removed here.
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	b := h.b
	var unsub []string
	c := b.connOf(cl)
	if c != nil {
		b.mu.Lock()
		unsub = filtersOf(cl)
		b.removeLocked(c)
		b.mu.Unlock()
	}
	h.srv.UnsubscribeClient(cl)
	cl.ClearInflights()
	if c != nil && len(unsub) > 0 {
		if o := b.observer(c); o != nil {
			o.Unsubscribed(c.id, c.clientID, unsub)
		}
	}
}

func filtersOf(cl *mqtt.Client) []string {
	subs := cl.State.Subscriptions.GetAll()
	out := make([]string, 0, len(subs))
	for f := range subs {
		out = append(out, f)
	}
	return out
}

// OnPacketRead closes connections that publish with QoS 2. mochi would
// downgrade the message and answer the PUBREC-expecting client with a
// PUBACK; MQTT 5 clients were told the maximum QoS in the CONNACK and get a
// DISCONNECT 0x9B first.
//
// It also sets aside a downlink in flight whose packet id a SUBSCRIBE or
// UNSUBSCRIBE reuses (see idStash).
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch pk.FixedHeader.Type {
	case packets.Subscribe, packets.Unsubscribe:
		h.b.stashCollidingID(cl, pk)
		return pk, nil
	}
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos < 2 {
		return pk, nil
	}
	device := ""
	if c := h.b.connOf(cl); c != nil {
		device = c.id.String()
	}
	h.b.logLimited("qos2", slog.LevelInfo, "QoS 2 publish refused; disconnecting",
		"device", device, "client", logsafe.Clip(cl.ID), "topic", logsafe.Clip(pk.TopicName), "remote", cl.Net.Remote)
	h.b.disconnect(h.srv, cl, packets.ErrQosNotSupported, h.b.cfg.WriteTimeout)
	cl.Stop(packets.ErrQosNotSupported)
	return pk, packets.ErrRejectPacket
}

// OnPacketEncode completes a successful MQTT 5 CONNACK with what mochi does
// not advertise: the maximum packet size, and that retain and shared
// subscriptions are unavailable.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Suback {
		if c := h.b.connOf(cl); c != nil && c.quota != nil {
			return c.subackQuotaCodes(pk)
		}
		return pk
	}
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0 && cl.Properties.ProtocolVersion == 5 {
		pk.Properties.MaximumPacketSize = h.b.cfg.MaxPacketSize
		pk.Properties.RetainAvailable, pk.Properties.RetainAvailableFlag = 0, true
		pk.Properties.SharedSubAvailable, pk.Properties.SharedSubAvailableFlag = 0, true
	}
	return pk
}

// OnPublish hands every device publish to the sink. Nothing a device
// publishes is fanned out locally: its messages go to the spool and its
// cloud session only, as on the cloud, which never echoes a device's
// publish back to it. The hook returns the packet taken over (takenOver:
// QoS 0, ignored, no error), so mochi neither acknowledges nor routes the
// message, and the connection's ack queue
// writes the PUBACK once the sink reports the message durable, in the
// order the publishes arrived (acks.go). Admin requests are acknowledged
// by mochi (CodeSuccessIgnore: acknowledged, not delivered, not retained)
// and handled in OnPublished.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // admin replies from PublishAdmin
	}
	b := h.b
	c := b.connOf(cl)
	if c == nil {
		return pk, packets.ErrRejectPacket
	}
	v5 := cl.Properties.ProtocolVersion == 5
	if c.id.Admin {
		if rt := pk.Properties.ResponseTopic; rt != "" && !adminResponseTopicOK(rt) {
			b.logLimited("admin-response-topic", slog.LevelInfo, "admin request refused: response topic outside "+AdminTopicPrefix,
				"admin", c.id.String(), "client", logsafe.Clip(c.clientID), "response_topic", logsafe.Clip(rt))
			if v5 && pk.FixedHeader.Qos > 0 {
				return pk, packets.ErrNotAuthorized
			}
			return pk, packets.ErrRejectPacket
		}
		b.stats.adminRequests.Add(1)
		return pk, packets.CodeSuccessIgnore
	}
	if c.id.Provision != nil {
		return pk, h.provisionPublish(cl, c, &pk)
	}

	if !c.publishAllowed(pk.TopicName) {
		return pk, h.refuseTopic(cl, c, &pk)
	}
	qos := pk.FixedHeader.Qos
	ticket, ok := c.acks.enter(int(b.cfg.MaxInflight), b.stopping, qos > 0, pk.PacketID, v5)
	if !ok {
		return pk, errAckQueued // the connection or the broker is closing
	}
	h.toSink(c, &pk, ticket, v5)
	return takenOver(pk)
}

// takenOver is what OnPublish returns for a device publish whose PUBACK
// the ack queue writes: no error, but a packet mochi has nothing left to
// do with — QoS 0 (no PUBACK, no inflight entry), not retained, and
// Ignore (not fanned out; OnPublished sees Ignore and a device topic and
// does nothing). Returning packets.ErrRejectPacket has the same effect,
// but mochi's Hooks.OnPublish then passes the packet to a Debug log call,
// which boxes it on the heap whatever the level: about 1 KB of garbage for
// every message (BenchmarkPublishQoS1: 3,319 bytes allocated per publish
// before, 2,358 after).
func takenOver(pk packets.Packet) (packets.Packet, error) {
	pk.FixedHeader.Qos = 0
	pk.FixedHeader.Retain = false
	pk.Ignore = true
	return pk, nil
}

// toSink hands a device publish to the sink. It is OnPublish's tail, out
// of line so that OnPublish's frame (on mochi's read goroutine, with the
// packet it takes and returns by value) stays small.
//
//go:noinline
func (h *hook) toSink(c *conn, pk *packets.Packet, ticket uint64, v5 bool) {
	qos := pk.FixedHeader.Qos
	topic := pk.TopicName
	h.b.cfg.Sink.Publish(h.sinkCtx, Message{
		Device:   c.id,
		ClientID: c.clientID,
		Topic:    topic,
		Payload:  pk.Payload,
		QoS:      qos,
		Retain:   pk.FixedHeader.Retain,
		Received: time.Now(),
	}, func(err error) { h.published(c, ticket, qos, v5, topic, err) })
}

// dropAfterWithheld ends the connection of a client whose QoS 1 publish
// was not acknowledged, so that it reconnects and sends it again: MQTT 5
// clients get a DISCONNECT "server busy" first.
func (h *hook) dropAfterWithheld(cl *mqtt.Client, c *conn) {
	b := h.b
	b.stats.withheldDrops.Add(1)
	b.logLimited("withheld", slog.LevelInfo, "disconnecting a device whose publish was not acknowledged, so that it sends it again",
		"device", c.id.String(), "client", logsafe.Clip(c.clientID))
	if rs := b.rs.Load(); rs != nil {
		b.disconnect(rs.srv, cl, packets.ErrServerBusy, min(time.Second, b.cfg.WriteTimeout))
		return
	}
	cl.Stop(packets.ErrServerBusy)
}

// OnPublished hands acknowledged admin requests to the AdminHandler.
func (h *hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if !pk.Ignore || cl.Net.Inline || pk.TopicName != AdminRequestTopic {
		return
	}
	b := h.b
	c := b.connOf(cl)
	if c == nil || !c.id.Admin {
		return
	}
	if b.cfg.Admin == nil {
		b.logLimited("admin-none", slog.LevelWarn, "admin request dropped: no admin handler configured",
			"admin", c.id.String(), "client", logsafe.Clip(c.clientID))
		return
	}
	b.cfg.Admin.HandleAdmin(c.id, AdminRequest{
		ClientID:        c.clientID,
		Topic:           pk.TopicName,
		Payload:         pk.Payload,
		ResponseTopic:   pk.Properties.ResponseTopic,
		CorrelationData: pk.Properties.CorrelationData,
	})
}

// OnSubscribed reports accepted filters to the observer and logs denied ones
// (those refused for the device's quota in quotaDone).
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	b := h.b
	c := b.connOf(cl)
	if c == nil {
		return
	}
	var overQuota []int
	if q := h.quotaDone(c); q != nil {
		overQuota = q.refused
	}
	var accepted []string
	for i, sub := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] < packets.ErrUnspecifiedError.Code {
			accepted = append(accepted, sub.Filter)
			continue
		}
		if len(overQuota) > 0 && overQuota[0] == i {
			overQuota = overQuota[1:]
			continue
		}
		b.stats.subDenied.Add(1)
		if c.id.Admin {
			b.logLimited("acl-subscribe", slog.LevelInfo, "subscription denied",
				"admin", c.id.String(), "client", logsafe.Clip(c.clientID), "filter", logsafe.Clip(sub.Filter), "remote", c.remote)
			continue
		}
		b.logDevice("acl-subscribe", c.id.DeviceID, slog.LevelWarn, "subscription refused: filter outside the device's topics",
			"device", c.id.String(), "client", logsafe.Clip(c.clientID), "filter", logsafe.Clip(sub.Filter), "remote", c.remote)
	}
	if o := b.observer(c); len(accepted) > 0 && o != nil {
		o.Subscribed(c.id, c.clientID, accepted)
	}
}

// OnUnsubscribed reports removed filters to the observer.
func (h *hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	if b.cfg.Observer == nil || len(pk.Filters) == 0 {
		return
	}
	c := b.connOf(cl)
	if c == nil || b.observer(c) == nil {
		return
	}
	filters := make([]string, len(pk.Filters))
	for i, f := range pk.Filters {
		filters[i] = f.Filter
	}
	b.cfg.Observer.Unsubscribed(c.id, c.clientID, filters)
}
