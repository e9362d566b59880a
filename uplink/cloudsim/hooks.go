package cloudsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/secrets"
)

type sessionKind int

const (
	kindDevice   sessionKind = iota + 1 // a device's normal (or EnOS activation) session
	kindObserver                        // the observer account
	kindRegister                        // an Alibaba dynamic-registration connection
)

// session is an accepted connection's identity. Its fields are set before
// it is published in conn.sess and not changed afterwards, except kicked
// and linger, which Sim.mu guards.
type session struct {
	kind      sessionKind
	dev       DeviceRef
	clientID  string // the full MQTT clientId as presented
	mochiID   string // the id mochi knows the client by
	transport string
	conn      *conn
	cl        *mqtt.Client
	activate  bool // EnOS securemode=3: issue a deviceSecret after CONNACK
	// Alibaba clientId extensions (docs/protocol.md, clientId parameters):
	// serverSub is _ss=1 (the cloud subscribes the session to the
	// device's system downlink topics itself), extRRPC is bit 0 of ext
	// (RRPC on custom topics).
	serverSub bool
	extRRPC   bool
	// ntpRecv is when the last NTP request arrived (Unix ms), for its
	// response's serverRecvTime. Only the connection's read goroutine
	// uses it.
	ntpRecv int64

	kicked bool        // a takeover has closed this session
	linger *time.Timer // kindRegister: closes the connection
}

// refusal is why a CONNECT was refused and with which CONNACK code.
type refusal struct {
	code   byte
	reason string
}

func (r *refusal) Error() string {
	return fmt.Sprintf("connect refused with return code %d: %s", r.code, r.reason)
}

// Errors set as mochi stop causes.
var (
	errRegistered = errors.New("dynamic registration complete")
	errNoActivate = errors.New("device was activated by another connection")
)

// hook is the Sim's mochi hook: authentication, takeover, permissions,
// recording, rate limiting, fault knobs and Alink replies.
type hook struct {
	mqtt.HookBase
	s *Sim
}

func (h *hook) ID() string { return "cloudsim" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnSessionEstablish, mqtt.OnSessionEstablished,
		mqtt.OnACLCheck, mqtt.OnSubscribe, mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnPublished,
	}, []byte{b})
}

func connOf(cl *mqtt.Client) *conn {
	c, _ := cl.Net.Conn.(*conn)
	return c
}

func sessionOf(cl *mqtt.Client) *session {
	if c := connOf(cl); c != nil {
		return c.sess.Load()
	}
	return nil
}

// mochiConnack returns the mochi code that makes SendConnack put the
// 3.1.1 return code on the wire. SendConnack maps v5 reason codes to v3
// through packets.V5CodesToV3 (0x84→1, 0x85→2, 0x88→3, 0x81→4, 0x86→5).
// Note that mochi's own refusal, ErrBadUsernameOrPassword, therefore
// reaches a 3.1.1 client as 5 (not authorized), and ErrNotAuthorized
// (0x87) has no mapping and would be sent raw.
func mochiConnack(code byte) packets.Code {
	switch code {
	case 1:
		return packets.ErrUnsupportedProtocolVersion
	case 2:
		return packets.ErrClientIdentifierNotValid
	case 3:
		return packets.ErrServerUnavailable
	case 4:
		return packets.ErrMalformedUsername
	}
	return packets.ErrBadUsernameOrPassword
}

// OnConnect authenticates the CONNECT. A refusal is answered here with the
// cloud's CONNACK code (returning the error then closes the connection;
// mochi's own refusal path can only send 5). An accepted device is known
// to mochi by its identity ("device:pk&dn") rather than its clientId, so
// that two sessions of one device can never coexist under different ids.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	s := h.s
	c := connOf(cl)
	if c == nil {
		return errors.New("connection did not come through a cloudsim listener")
	}
	sess, ref := s.authenticate(c, cl, pk)
	if ref != nil {
		wire := mochiConnack(ref.code)
		if pk.ProtocolVersion == 5 {
			wire = packets.ErrUnsupportedProtocolVersion
		}
		// Count before answering, so the counter is current when the
		// client sees the refusal.
		s.mu.Lock()
		s.stats.ConnectsRefused[ref.code]++
		s.notifyLocked()
		s.mu.Unlock()
		_ = s.srv.SendConnack(cl, wire, false, nil)
		s.log.Info("connect refused", "code", ref.code, "reason", ref.reason, "transport", c.kind,
			"client", pk.Connect.ClientIdentifier, "username", string(pk.Connect.Username), "remote", cl.Net.Remote)
		return ref
	}
	sess.conn, sess.cl, sess.transport = c, cl, c.kind
	cl.ID = sess.mochiID
	// Persistent sessions are not simulated: a clean=false CONNECT is
	// accepted with session present 0, as by a cloud that holds no
	// session, and nothing is kept after the connection ends.
	cl.Properties.Clean = true
	c.sess.Store(sess)
	return nil
}

// authenticate decides a CONNECT. It returns the session to establish or
// the refusal.
func (s *Sim) authenticate(c *conn, cl *mqtt.Client, pk packets.Packet) (*session, *refusal) {
	cid := pk.Connect.ClientIdentifier
	user := string(pk.Connect.Username)
	if pk.ProtocolVersion != 3 && pk.ProtocolVersion != 4 {
		return nil, &refusal{1, fmt.Sprintf("MQTT protocol version %d not supported (3.1 and 3.1.1 only)", pk.ProtocolVersion)}
	}
	if s.cfg.ObserverUser != "" && user == s.cfg.ObserverUser {
		if !secrets.NewSecret(string(pk.Connect.Password)).Equal(s.cfg.ObserverPassword) {
			return nil, &refusal{4, "observer password mismatch"}
		}
		// cl.ID is the clientId, or the one mochi assigned to an empty one.
		return &session{kind: kindObserver, clientID: cl.ID, mochiID: "observer:" + cl.ID}, nil
	}
	s.mu.Lock()
	refuseCode := s.refuse
	s.mu.Unlock()
	if refuseCode != 0 {
		return nil, &refusal{refuseCode, "refusing all connects (fault knob)"}
	}
	if pk.Connect.WillFlag {
		return nil, &refusal{3, "will messages are not supported"}
	}
	p, err := secrets.ParseConnect(s.dialect, cid, user, secrets.NewSecret(string(pk.Connect.Password)))
	if err != nil {
		return nil, verifyRefusal(err)
	}
	if err := secrets.ValidateClientID(p.ClientID); err != nil {
		return nil, &refusal{3, "malformed clientId: " + err.Error()}
	}
	register := false
	if s.dialect == secrets.Aliyun {
		switch p.AuthType {
		case "":
		case "register":
			register = true
		default:
			return nil, &refusal{5, fmt.Sprintf("authType=%s is not simulated", p.AuthType)}
		}
	}
	if !register {
		lo, hi := uint16(AliyunKeepaliveMin), uint16(AliyunKeepaliveMax)
		if s.dialect == secrets.EnOS {
			lo, hi = EnOSKeepaliveMin, EnOSKeepaliveMax
		}
		if ka := pk.Connect.Keepalive; ka < lo || ka > hi {
			return nil, &refusal{3, fmt.Sprintf("keepalive %d s outside %d-%d s", ka, lo, hi)}
		}
	}
	if s.dialect == secrets.Aliyun {
		switch {
		case register && !c.encrypted():
			return nil, &refusal{3, "dynamic registration needs TLS or wss, not " + c.kind}
		case !register && p.SecureMode == 2 && !c.encrypted():
			return nil, &refusal{3, "securemode=2 (TLS) on a plain " + c.kind + " connection"}
		case !register && p.SecureMode == 3 && c.encrypted():
			return nil, &refusal{3, "securemode=3 (plain TCP) on an encrypted " + c.kind + " connection"}
		}
	}

	ref := DeviceRef{p.ProductKey, p.DeviceName}
	s.mu.Lock()
	d := s.devices[ref]
	var secret secrets.Secret
	var activated bool
	if d != nil {
		secret, activated = d.secret, d.activated
	}
	productSecret, haveProduct := s.products[p.ProductKey]
	s.mu.Unlock()
	if d == nil {
		return nil, &refusal{5, "unknown device " + ref.String()}
	}
	opts := secrets.VerifyOptions{MaxSkew: s.cfg.MaxSkew, Now: s.now}
	sess := &session{kind: kindDevice, dev: ref, clientID: cid, mochiID: "device:" + p.ProductKey + "&" + p.DeviceName}
	if s.dialect == secrets.Aliyun {
		ss, _ := p.Param("_ss")
		ext, _ := p.Param("ext")
		bits, _ := strconv.ParseUint(ext, 10, 32)
		sess.serverSub, sess.extRRPC = ss == "1", bits&1 != 0
	}
	if p.UsesProductSecret() {
		if !haveProduct {
			return nil, &refusal{5, "product " + p.ProductKey + " has no productSecret (dynamic activation not enabled)"}
		}
		if activated {
			return nil, &refusal{5, "device " + ref.String() + " is already activated"}
		}
		if err := p.Verify(productSecret, opts); err != nil {
			return nil, verifyRefusal(err)
		}
		if register {
			s.mu.Lock()
			s.regSeq++
			sess.kind, sess.mochiID = kindRegister, fmt.Sprintf("register:%s&%s#%d", p.ProductKey, p.DeviceName, s.regSeq)
			s.mu.Unlock()
		} else {
			sess.activate = true
		}
		return sess, nil
	}
	if secret.IsZero() {
		return nil, &refusal{5, "device " + ref.String() + " has no deviceSecret yet (not activated)"}
	}
	if err := p.Verify(secret, opts); err != nil {
		return nil, verifyRefusal(err)
	}
	s.mu.Lock()
	if d := s.devices[ref]; d != nil && d.secret.Equal(secret) {
		d.activated = true // Alibaba: the first normal login activates a registered device
	}
	s.mu.Unlock()
	return sess, nil
}

func verifyRefusal(err error) *refusal {
	var ve *secrets.VerifyError
	if errors.As(err, &ve) {
		return &refusal{ve.ConnackCode(), ve.Error()}
	}
	return &refusal{3, err.Error()}
}

// OnConnectAuthenticate admits the clients OnConnect accepted.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return sessionOf(cl) != nil
}

// OnSessionEstablish runs before mochi's own takeover and the CONNACK. For
// a device it closes the device's previous session and waits until that
// connection has been cleaned up completely, so mochi never sees two
// clients with the same id (its takeover path would send a 3.1.1 client a
// DISCONNECT packet, which 3.1.1 does not have, and races with the old
// client's cleanup).
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	s := h.s
	sess := sessionOf(cl)
	if sess == nil {
		return
	}
	if sess.kind == kindDevice && !s.takeOver(cl, sess) {
		return
	}
	// Count before the CONNACK, so the counter is current when the client
	// sees it.
	s.mu.Lock()
	if sess.kind == kindObserver {
		s.stats.ObserverConnects++
	} else {
		s.stats.ConnectsAccepted++
	}
	s.notifyLocked()
	s.mu.Unlock()
}

// takeOver makes sess the device's current session, closing the previous
// one first. It reports false when this connection or the Sim closed
// while waiting.
func (s *Sim) takeOver(cl *mqtt.Client, sess *session) bool {
	for {
		s.mu.Lock()
		old := s.active[sess.dev]
		if old == nil || old == sess {
			s.active[sess.dev] = sess
			s.notifyLocked()
			s.mu.Unlock()
			// Before the CONNACK, so a downlink right after it arrives.
			switch {
			case s.dialect == secrets.EnOS:
				s.subscribeDownstream(cl, enosDownstream(sess.dev))
			case sess.serverSub:
				s.subscribeDownstream(cl, aliyunServerSubscribed(sess.dev))
			}
			return true
		}
		first := !old.kicked
		if first {
			old.kicked = true
			s.stats.Takeovers++
			s.notifyLocked()
		}
		s.mu.Unlock()
		if first {
			s.log.Info("session taken over", "device", sess.dev.String(), "old_client", old.clientID, "new_client", sess.clientID)
		}
		old.cl.Stop(packets.ErrSessionTakenOver)
		select {
		case <-old.conn.done:
		case <-sess.conn.closed:
			return false
		case <-s.done:
			return false
		}
	}
}

// OnSessionEstablished runs after the CONNACK: it counts the connect and
// performs EnOS activation and Alibaba registration.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	s := h.s
	sess := sessionOf(cl)
	if sess == nil {
		return
	}
	if sess.kind == kindObserver {
		s.log.Info("observer connected", "transport", sess.transport, "client", sess.clientID, "remote", cl.Net.Remote)
	} else {
		s.log.Info("connect accepted", "transport", sess.transport, "client", sess.clientID, "device", sess.dev.String(), "kind", sess.kind.String())
	}
	switch sess.kind {
	case kindDevice:
		if sess.activate {
			s.activateEnOS(cl, sess)
		}
	case kindRegister:
		s.registerAliyun(cl, sess)
	}
}

func (k sessionKind) String() string {
	switch k {
	case kindDevice:
		return "device"
	case kindObserver:
		return "observer"
	case kindRegister:
		return "register"
	}
	return "unknown"
}

// issue generates and records a deviceSecret for a device that is not
// activated; activate says whether the device counts as activated now.
func (s *Sim) issue(ref DeviceRef, activate bool) (secrets.Secret, string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[ref]
	if d == nil || d.activated {
		return secrets.Secret{}, "", false
	}
	secret := newDeviceSecret()
	d.secret, d.activated, d.bucket = secret, activate, nil
	d.issued = append(d.issued, secret)
	s.stats.Activations++
	s.notifyLocked()
	return secret, d.assetID, true
}

// activateEnOS publishes a fresh deviceSecret on the device's
// activate/info topic (docs/protocol.md §6.2) without a SUBSCRIBE, as EnOS does.
// The device counts as activated from now on.
func (s *Sim) activateEnOS(cl *mqtt.Client, sess *session) {
	secret, assetID, ok := s.issue(sess.dev, true)
	if !ok {
		cl.Stop(errNoActivate)
		return
	}
	s.mu.Lock()
	s.messageID++
	id := strconv.FormatUint(s.messageID, 10)
	s.mu.Unlock()
	type params struct {
		AssetID      string `json:"assetId"`
		ProductKey   string `json:"productKey"`
		DeviceKey    string `json:"deviceKey"`
		DeviceSecret string `json:"deviceSecret"`
	}
	payload, _ := json.Marshal(struct {
		ID      string `json:"id"`
		Version string `json:"version"`
		Method  string `json:"method"`
		Params  params `json:"params"`
	}{id, "1.0", "thing.activate.info", params{assetID, sess.dev.ProductKey, sess.dev.DeviceName, secret.Reveal()}})
	topic := "/ext/session/" + sess.dev.ProductKey + "/" + sess.dev.DeviceName + "/thing/activate/info"
	if err := cl.WritePacket(publishPacket(topic, payload)); err != nil {
		s.log.Warn("activation info not delivered", "device", sess.dev.String(), "error", err)
		return
	}
	s.log.Info("device activated", "device", sess.dev.String(), "client", sess.clientID)
}

// registerAliyun publishes a fresh deviceSecret on /ext/register and
// closes the connection after RegisterLinger. The device is activated only
// by its first normal login, so registering again before that issues a new
// secret.
func (s *Sim) registerAliyun(cl *mqtt.Client, sess *session) {
	secret, _, ok := s.issue(sess.dev, false)
	if !ok {
		cl.Stop(errNoActivate)
		return
	}
	payload, _ := json.Marshal(struct {
		ProductKey   string `json:"productKey"`
		DeviceName   string `json:"deviceName"`
		DeviceSecret string `json:"deviceSecret"`
	}{sess.dev.ProductKey, sess.dev.DeviceName, secret.Reveal()})
	if err := cl.WritePacket(publishPacket("/ext/register", payload)); err != nil {
		s.log.Warn("registration not delivered", "device", sess.dev.String(), "error", err)
		cl.Stop(err)
		return
	}
	s.log.Info("device registered", "device", sess.dev.String(), "client", sess.clientID)
	s.mu.Lock()
	sess.linger = time.AfterFunc(s.cfg.RegisterLinger, func() { cl.Stop(errRegistered) })
	s.mu.Unlock()
}

func publishPacket(topic string, payload []byte) packets.Packet {
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   topic,
		Payload:     payload,
	}
}

// enosDownstream are the EnOS topics a device receives without a
// SUBSCRIBE (docs/protocol.md, EnOS subscriptions: "Downstream command
// topics are delivered without a SUBSCRIBE"). Reply topics are not among
// them: EnOS sends post replies only to subscribers.
func enosDownstream(dev DeviceRef) []string {
	prefix := "/sys/" + dev.ProductKey + "/" + dev.DeviceName + "/"
	var out []string
	for _, f := range []string{
		"thing/service/#",
		"thing/model/down_raw",
		"rrpc/request/+",
		"thing/enable",
		"thing/disable",
		"thing/delete",
		"ota/device/upgrade",
	} {
		out = append(out, prefix+f)
	}
	return out
}

// aliyunServerSubscribed are the filters Alibaba subscribes an _ss=1
// session to itself: the catalogue's server-subscribed downlink forms
// (system topics and their replies, NTP responses, OTA notices, shadow,
// synchronous RRPC, errors), for the device's own identity.
func aliyunServerSubscribed(dev DeviceRef) []string {
	var out []string
	for _, f := range secrets.TopicCatalogue() {
		if !f.Aliyun || !f.ServerSubscribed || f.Dir&secrets.Receive == 0 {
			continue
		}
		segs := strings.Split(f.Pattern, "/")
		for i, seg := range segs {
			switch {
			case seg == "{pk}":
				segs[i] = dev.ProductKey
			case seg == "{dn}":
				segs[i] = dev.DeviceName
			case strings.HasPrefix(seg, "{"):
				segs[i] = "+"
			}
		}
		out = append(out, strings.Join(segs, "/"))
	}
	return out
}

// subscribeDownstream subscribes a device to filters server-side, with
// NoLocal so the device's own publishes (e.g. a thing/service/…_reply, or
// an RRPC reply on the request's topic) are not echoed back.
func (s *Sim) subscribeDownstream(cl *mqtt.Client, filters []string) {
	for _, f := range filters {
		sub := packets.Subscription{Filter: f, Qos: 1, NoLocal: true}
		if s.srv.Topics.Subscribe(cl.ID, sub) {
			atomic.AddInt64(&s.srv.Info.Subscriptions, 1) // as mochi's processSubscribe counts it
		}
		cl.State.Subscriptions.Add(sub.Filter, sub)
	}
}

// OnACLCheck: a device may use its own topics (subscribe filters and
// deliveries are checked as filters, publishes as topic names), the
// observer anything, a registration connection nothing.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	sess := sessionOf(cl)
	if sess == nil {
		return false
	}
	switch sess.kind {
	case kindObserver:
		return true
	case kindDevice:
		if write {
			return sess.dev.ID().MayPublish(h.s.topics, topic)
		}
		if !strings.ContainsAny(topic, "+#") {
			// A delivery (or a filter without wildcards): RRPC on custom
			// topics only with ext bit 0.
			return h.s.mayReceive(sess, topic)
		}
		return sess.dev.ID().MayReceive(h.s.topics, topic)
	}
	return false
}

// mayReceive reports whether the session may be delivered the concrete
// topic: one of the device's downlink topics on this cloud, and for RRPC
// on custom topics only with ext bit 0.
func (s *Sim) mayReceive(sess *session, topic string) bool {
	f, ok := sess.dev.ID().TopicForm(s.topics, topic, secrets.Receive)
	return ok && !strings.ContainsAny(topic, "+#") && (!f.NeedsExtRRPC || sess.extRRPC)
}

// OnSubscribe counts the filters a device may not use (mochi answers them
// with 0x80 after OnACLCheck) and grants at most QoS 1.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	s := h.s
	sess := sessionOf(cl)
	if sess == nil || sess.kind == kindObserver {
		return pk
	}
	refused := 0
	for i, f := range pk.Filters {
		if sess.kind != kindDevice || !sess.dev.ID().MayReceive(s.topics, f.Filter) {
			refused++
			s.log.Info("subscription refused", "device", sess.dev.String(), "client", sess.clientID, "filter", f.Filter)
		}
		if f.Qos > 1 {
			pk.Filters[i].Qos = 1
		}
		// The clouds never echo a device's publish back to it (an RRPC
		// reply goes out on the request's own topic).
		pk.Filters[i].NoLocal = true
	}
	if refused > 0 {
		s.mu.Lock()
		s.stats.PermissionRefused += int64(refused)
		s.notifyLocked()
		s.mu.Unlock()
	}
	return pk
}

// OnPacketRead closes the connection of a device that publishes outside
// its topics or at QoS 2 (mochi itself would drop a forbidden QoS 0
// publish silently and send a forbidden QoS 1 publisher a DISCONNECT
// packet, which 3.1.1 does not have). A registration connection may not
// publish at all.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	s := h.s
	sess := sessionOf(cl)
	if sess == nil || sess.kind == kindObserver {
		return pk, nil
	}
	var counter *int64
	var why string
	switch {
	case sess.kind == kindRegister:
		counter, why = &s.stats.ProtocolErrors, "publish on a dynamic-registration connection"
	case pk.FixedHeader.Qos > 1:
		counter, why = &s.stats.ProtocolErrors, "QoS 2 is not supported"
	case !sess.dev.ID().MayPublish(s.topics, pk.TopicName):
		counter, why = &s.stats.PermissionRefused, "topic is not the device's"
	default:
		return pk, nil
	}
	s.mu.Lock()
	*counter++
	s.notifyLocked()
	s.mu.Unlock()
	s.log.Info("publish refused, closing connection", "reason", why, "device", sess.dev.String(), "client", sess.clientID, "topic", pk.TopicName, "qos", pk.FixedHeader.Qos)
	return pk, packets.ErrRejectPacket
}

// OnPublish runs before the PUBACK: stall (no PUBACK), rate limit (PUBACK
// but drop), record, delay.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	pk.FixedHeader.Retain = false // retained messages are not supported
	s := h.s
	sess := sessionOf(cl)
	if sess == nil || sess.kind != kindDevice {
		return pk, nil
	}
	now := s.now()
	rec := Record{
		Device: sess.dev, ClientID: sess.clientID, Transport: sess.transport,
		Topic: pk.TopicName, Payload: append([]byte(nil), pk.Payload...),
		QoS: pk.FixedHeader.Qos, Dup: pk.FixedHeader.Dup, Time: now,
	}
	s.mu.Lock()
	if s.stall {
		s.stats.Stalled++
		s.seq++
		rec.Seq = s.seq
		s.stalled = appendBounded(s.stalled, rec, s.cfg.MaxRecords, nil)
		s.notifyLocked()
		s.mu.Unlock()
		return pk, packets.ErrRejectPacket
	}
	if d := s.devices[sess.dev]; d != nil && s.rate > 0 {
		if d.bucket == nil {
			d.bucket = newBucket(s.rate, now)
		}
		if !d.bucket.take(now) {
			s.stats.RateDropped++
			s.notifyLocked()
			s.mu.Unlock()
			return pk, packets.CodeSuccessIgnore
		}
	}
	s.seq++
	rec.Seq = s.seq
	s.records = appendBounded(s.records, rec, s.cfg.MaxRecords, &s.stats.RecordsDiscarded)
	s.stats.Messages++
	s.rrpcRepliedLocked(rec)
	sess.ntpRecv = now.UnixMilli()
	delay := s.delay
	s.notifyLocked()
	s.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-sess.conn.closed:
		case <-s.done:
		}
	}
	return pk, nil
}

// OnPublished answers Alink requests after the PUBACK.
func (h *hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || pk.Ignore {
		return
	}
	if sess := sessionOf(cl); sess != nil && sess.kind == kindDevice {
		h.s.alinkReply(sess, pk)
		h.s.ntpReply(sess, pk)
	}
}
