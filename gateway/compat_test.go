package gateway_test

// The firmware compatibility suite (issue #15): vendor firmware must work
// through edgegw unchanged. Each file in testdata/firmware/*.txt is a
// recorded conversation of one vendor SDK (docs/protocol.md §9: the exact
// CONNECT, the SUBSCRIBE list, the PUBLISHes right after CONNACK, the normal
// uplinks and the answers to the cloud's downlinks); TestFirmwareConversations
// replays each one packet by packet against a gateway and a strict cloud
// simulator. TestNodeSDKDevice runs the vendor's Node SDK itself.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/internal/testutil/rawmqtt"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// compatDevice is the one device of a compatibility rig.
type compatDevice struct {
	dialect secrets.Dialect
	pk, dn  string
	secret  secrets.Secret
	// productSecret, when set, is the product's (for dynamic activation and
	// registration), in the cloud and in the gateway's registry.
	productSecret secrets.Secret
	// connectParams, when set, is the product's DefaultConnectParams: the
	// firmware's clientId extension parameters, as a plant configures a
	// product whose firmware it knows.
	connectParams []secrets.Param
}

func (d compatDevice) String() string { return d.pk + "/" + d.dn }

// newCompatRig starts a strict cloud simulator (the dialect's own topic
// forms only) and a gateway with the metrics server on, both knowing one
// device of the given dialect.
func newCompatRig(t *testing.T, d compatDevice, mutate func(*cloudsim.Config, *config.Config)) *rig {
	t.Helper()
	simCfg := cloudsim.Config{Dialect: d.dialect, Listen: "127.0.0.1:0",
		DeviceRate: cloudsim.RateUnlimited,
		Devices:    []cloudsim.Device{{ProductKey: d.pk, DeviceName: d.dn, Secret: d.secret}}}
	dir := t.TempDir()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.Cloud.Dialect = d.dialect
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0", "unix://" + filepath.Join(dir, "admin.sock")}
	if d.dialect == secrets.Aliyun {
		// EnOS keeps its own floor (4 connects in 2 minutes block a device).
		cfg.Cloud.BackoffMin = config.Duration(50 * time.Millisecond)
		cfg.Cloud.BackoffMax = config.Duration(200 * time.Millisecond)
	}
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Shutdown.Timeout = config.Duration(15 * time.Second) // roomy: under -race on a loaded CI box a part can take seconds to stop
	if !d.productSecret.IsZero() {
		simCfg.Products = []cloudsim.Product{{ProductKey: d.pk, Secret: d.productSecret}}
	}
	if mutate != nil {
		mutate(&simCfg, cfg)
	}
	sim := gwtest.StartCloud(t, simCfg)
	cfg.Cloud.Endpoint = "tcp://" + sim.Addr(cloudsim.TCP)
	if simCfg.TLSListen != "" {
		cfg.Cloud.Endpoint = "tls://" + sim.Addr(cloudsim.TLS)
	}

	reg := gwtest.OpenRegistry(t, cfg)
	if _, err := reg.PutProduct(secrets.Product{ProductKey: d.pk, Dialect: d.dialect, ProductSecret: d.productSecret,
		DefaultConnectParams: d.connectParams}); err != nil {
		t.Fatal(err)
	}
	if err := reg.AddDevice(secrets.Device{ProductKey: d.pk, DeviceName: d.dn, DeviceSecret: d.secret}); err != nil {
		t.Fatal(err)
	}
	// Devices created in the console without a secret (to be activated
	// with the productSecret) are registered at the gateway the same way.
	for _, sd := range simCfg.Devices {
		if sd.ProductKey == d.pk && sd.DeviceName != d.dn && sd.Secret.IsZero() {
			if err := reg.AddDevice(secrets.Device{ProductKey: sd.ProductKey, DeviceName: sd.DeviceName}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, sim: sim, cfg: cfg,
		devices: []devsim.Device{{Dialect: d.dialect, ProductKey: d.pk, DeviceName: d.dn, Secret: d.secret}}}
	r.start()
	// The device's cloud session is up before the device comes: firmware
	// expects the cloud to be there.
	testutil.Eventually(t, 20*time.Second, func() bool { return sim.Connected(d.pk, d.dn) }, "cloud session of %s up", d)
	return r
}

// metric returns the value of an unlabelled series of the gateway's
// /metrics.
func (r *rig) metric(name string) float64 {
	r.t.Helper()
	resp, err := http.Get("http://" + r.gw.MetricsAddr().String() + "/metrics")
	if err != nil {
		r.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("GET /metrics: %v", err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		r.t.Fatalf("/metrics has no series %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		r.t.Fatalf("/metrics %s: %v", name, err)
	}
	return v
}

// ---- a raw MQTT 3.1.1 device ----

// fwConn is one firmware connection, packet by packet: it acknowledges
// the QoS 1 publishes it receives (as every SDK does) and keeps every
// packet it reads.
type fwConn struct {
	t    *testing.T
	conn net.Conn
	wmu  sync.Mutex
	next uint16 // packet ids

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every packet read
	pubs    []packets.Packet
	used    []bool // pubs[i] matched by a step already
	acks    []packets.Packet
	readErr error
}

// dialFirmware sends the CONNECT of c and returns the connection and the
// CONNACK.
func dialFirmware(t *testing.T, addr string, cp packets.ConnectParams, level byte) (*fwConn, packets.Packet) {
	t.Helper()
	return dialFirmwareTLS(t, addr, nil, cp, level)
}

// dialFirmwareTLS is dialFirmware over TLS when tc is not nil.
func dialFirmwareTLS(t *testing.T, addr string, tc *tls.Config, cp packets.ConnectParams, level byte) (*fwConn, packets.Packet) {
	t.Helper()
	var conn net.Conn
	var err error
	if tc != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
	} else {
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &fwConn{t: t, conn: conn, changed: make(chan struct{})}
	cp.ProtocolName = []byte("MQTT")
	if level == 3 {
		cp.ProtocolName = []byte("MQIsdp")
	}
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: level, Connect: cp})
	go c.readLoop()
	ack, err := c.waitAck(packets.Connack, 0)
	if err != nil {
		t.Fatalf("CONNACK: %v", err)
	}
	return c, ack
}

func (c *fwConn) write(pk packets.Packet) {
	c.t.Helper()
	b, err := rawmqtt.Encode(pk)
	if err != nil {
		c.t.Fatal(err)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write packet type %d: %v", pk.FixedHeader.Type, err)
	}
}

func (c *fwConn) readLoop() {
	r := bufio.NewReader(c.conn)
	for {
		pk, err := rawmqtt.Read(r)
		c.mu.Lock()
		if err != nil {
			c.readErr = err
		} else if pk.FixedHeader.Type == packets.Publish {
			c.pubs = append(c.pubs, pk)
			c.used = append(c.used, false)
		} else {
			c.acks = append(c.acks, pk)
		}
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		if err != nil {
			return
		}
		if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 1 {
			ack, _ := rawmqtt.Encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
			c.wmu.Lock()
			_, _ = c.conn.Write(ack)
			c.wmu.Unlock()
		}
	}
}

// wait runs cond under the lock until it is true, the connection fails
// or 10 s pass.
func (c *fwConn) wait(what string, cond func() bool) error {
	deadline := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		ok, err, ch := cond(), c.readErr, c.changed
		c.mu.Unlock()
		switch {
		case ok:
			return nil
		case err != nil:
			return fmt.Errorf("%s: connection lost: %w", what, err)
		}
		select {
		case <-ch:
		case <-deadline:
			return fmt.Errorf("%s: nothing within 10 s", what)
		}
	}
}

// waitAck returns the first unconsumed acknowledgement of the type (and
// packet id, unless 0).
func (c *fwConn) waitAck(typ byte, id uint16) (packets.Packet, error) {
	var got packets.Packet
	err := c.wait(fmt.Sprintf("packet type %d id %d", typ, id), func() bool {
		for i, a := range c.acks {
			if a.FixedHeader.Type == typ && (id == 0 || a.PacketID == id) {
				got = a
				c.acks = slices.Delete(c.acks, i, i+1)
				return true
			}
		}
		return false
	})
	return got, err
}

// waitPublish returns the first publish received, and not matched yet,
// whose topic matches.
func (c *fwConn) waitPublish(what string, match func(topic string) bool) (packets.Packet, error) {
	var got packets.Packet
	err := c.wait(what, func() bool {
		for i, p := range c.pubs {
			if !c.used[i] && match(p.TopicName) {
				c.used[i], got = true, p
				return true
			}
		}
		return false
	})
	return got, err
}

func (c *fwConn) id() uint16 {
	c.next++
	if c.next == 0 {
		c.next = 1
	}
	return c.next
}

// publish sends a device publish; at QoS 1 it waits for the PUBACK.
func (c *fwConn) publish(qos byte, topic string, payload []byte) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, Payload: payload}
	if qos > 0 {
		pk.PacketID = c.id()
	}
	c.write(pk)
	if qos == 0 {
		return nil
	}
	_, err := c.waitAck(packets.Puback, pk.PacketID)
	return err
}

// subscribe sends one SUBSCRIBE with the filters and returns the SUBACK's
// codes.
func (c *fwConn) subscribe(subs packets.Subscriptions) ([]byte, error) {
	id := c.id()
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: id, Filters: subs})
	ack, err := c.waitAck(packets.Suback, id)
	return ack.ReasonCodes, err
}

// ping proves the connection is still the same open one.
func (c *fwConn) ping() error {
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	_, err := c.waitAck(packets.Pingresp, 0)
	return err
}

// ---- conversations ----

// A conversation file holds one directive a line ('#' starts a comment;
// {pk} and {dn} stand for the device's productKey and deviceName/deviceKey):
//
//	dialect aliyun|enos
//	connect clientid=<full MQTT clientId> username=<u> password=upper|lower keepalive=<s> clean=0|1 level=4
//	sub <qos> <filter> [<qos> <filter>…]   one SUBSCRIBE packet; every filter must be granted
//	pub <qos> <topic> <payload>            the device publishes; it must reach the cloud, in order
//	recv <topic>                           the device must receive this (a reply the cloud sends by itself)
//	cloud <qos> <topic> <payload>          the cloud publishes (Sim.Publish); the device must receive it
//	rrpc <topic> <request> => <reply>      a synchronous call (Sim.RRPC); the device answers as the SDK does
//	settle                                 wait until the cloud session holds every filter the device subscribed
//
// The password is the device's signature over the clientId's bare id and
// timestamp with the clientId's signmethod (secrets.Sign), in the hex case
// the SDK uses.
type conversation struct {
	name    string
	dialect secrets.Dialect
	connect map[string]string
	steps   []step
}

type step struct {
	line    int
	verb    string
	qos     byte
	topic   string
	payload string
	reply   string
	subs    packets.Subscriptions
}

func loadConversation(t *testing.T, path string) conversation {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	conv := conversation{name: strings.TrimSuffix(filepath.Base(path), ".txt")}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		bad := func(why string) { t.Fatalf("%s:%d: %s: %q", path, i+1, why, line) }
		verb, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		s := step{line: i + 1, verb: verb}
		qosTopic := func() string {
			q, r, _ := strings.Cut(rest, " ")
			n, err := strconv.Atoi(q)
			if err != nil || n < 0 || n > 2 {
				bad("want a QoS")
			}
			s.qos = byte(n)
			topic, payload, _ := strings.Cut(strings.TrimSpace(r), " ")
			s.topic = topic
			return strings.TrimSpace(payload)
		}
		switch verb {
		case "dialect":
			conv.dialect = secrets.Dialect(rest)
			continue
		case "connect":
			conv.connect = map[string]string{}
			for _, f := range strings.Fields(rest) {
				k, v, ok := strings.Cut(f, "=")
				if !ok {
					bad("want key=value")
				}
				conv.connect[k] = v
			}
			continue
		case "pub", "cloud":
			s.payload = qosTopic()
		case "recv":
			s.topic = rest
		case "rrpc":
			topic, call, _ := strings.Cut(rest, " ")
			req, reply, ok := strings.Cut(call, " => ")
			if !ok {
				bad("want: rrpc <topic> <request> => <reply>")
			}
			s.topic, s.payload, s.reply = topic, strings.TrimSpace(req), strings.TrimSpace(reply)
		case "sub":
			f := strings.Fields(rest)
			if len(f) == 0 || len(f)%2 != 0 {
				bad("want pairs of QoS and filter")
			}
			for j := 0; j < len(f); j += 2 {
				q, err := strconv.Atoi(f[j])
				if err != nil {
					bad("want a QoS")
				}
				s.subs = append(s.subs, packets.Subscription{Qos: byte(q), Filter: f[j+1]})
			}
		case "settle":
		default:
			bad("unknown directive")
		}
		conv.steps = append(conv.steps, s)
	}
	if conv.dialect == "" || conv.connect == nil {
		t.Fatalf("%s: needs a dialect and a connect line", path)
	}
	return conv
}

// credentials fills the CONNECT of a conversation for device d.
func (conv conversation) credentials(t *testing.T, d compatDevice) (packets.ConnectParams, byte) {
	t.Helper()
	sub := strings.NewReplacer("{pk}", d.pk, "{dn}", d.dn)
	c := conv.connect
	cid := sub.Replace(c["clientid"])
	bare, params, ok := strings.Cut(cid, "|")
	if !ok {
		t.Fatalf("%s: clientid %q has no |…| block", conv.name, cid)
	}
	p := secrets.SignParams{Dialect: conv.dialect, ProductKey: d.pk, DeviceName: d.dn, ClientID: bare}
	for _, kv := range strings.Split(strings.TrimSuffix(params, "|"), ",") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "timestamp":
			p.Timestamp = v
		case "signmethod":
			p.SignMethod = secrets.SignMethod(v)
		case "securemode":
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s: securemode %q", conv.name, v)
			}
			p.SecureMode = n
		}
	}
	cred, err := secrets.Sign(p, d.secret)
	if err != nil {
		t.Fatalf("%s: sign: %v", conv.name, err)
	}
	pass := cred.Password.Reveal()
	switch c["password"] {
	case "upper":
		pass = strings.ToUpper(pass)
	case "lower":
		pass = strings.ToLower(pass)
	default:
		t.Fatalf("%s: password=%q, want upper or lower", conv.name, c["password"])
	}
	keepalive, err1 := strconv.Atoi(c["keepalive"])
	level, err2 := strconv.Atoi(c["level"])
	if err1 != nil || err2 != nil || (c["clean"] != "0" && c["clean"] != "1") {
		t.Fatalf("%s: connect needs keepalive, clean and level", conv.name)
	}
	return packets.ConnectParams{ClientIdentifier: cid, Clean: c["clean"] == "1", Keepalive: uint16(keepalive),
		UsernameFlag: true, Username: []byte(sub.Replace(c["username"])), PasswordFlag: true, Password: []byte(pass)}, byte(level)
}

type sentMsg struct{ topic, payload string }

func cmpSent(a, b sentMsg) int {
	return strings.Compare(a.topic+"\x00"+a.payload, b.topic+"\x00"+b.payload)
}

// ordinaryUplinks drops the time-critical uplinks, which bypass the
// device's queue.
func ordinaryUplinks(ms []sentMsg) []sentMsg {
	return slices.DeleteFunc(slices.Clone(ms), func(m sentMsg) bool { return uplink.Classify(m.topic) != uplink.ClassNormal })
}

// TestFirmwareConversations replays every recorded SDK conversation
// against a gateway and the cloud simulator, and checks what firmware
// relies on: CONNACK 0, every SUBACK granted, every uplink in the cloud
// once and in order (time-critical ones, such as service replies, may
// overtake the others: docs/architecture.md §3.6), every downlink at the
// device, nothing echoed, one connection for the whole conversation.
func TestFirmwareConversations(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "firmware", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no conversations in testdata/firmware: %v", err)
	}
	for _, f := range files {
		conv := loadConversation(t, f)
		t.Run(conv.name, func(t *testing.T) { replay(t, conv) })
	}
}

func replay(t *testing.T, conv conversation) {
	d := compatDevice{dialect: conv.dialect, pk: "a1FwProd01", dn: "fw-" + strings.ReplaceAll(conv.name, ".", "-"),
		secret: secrets.NewSecret("fw-secret-0123456789abcdef")}
	if conv.dialect == secrets.EnOS {
		d.pk = "FwProd01"
	}
	if len(d.dn) > 32 {
		d.dn = d.dn[:32]
	}
	cp, level := conv.credentials(t, d)
	if conv.dialect == secrets.Aliyun {
		// The product is configured for this firmware: its cloud session
		// carries the firmware's _ss/ext from the start, so the device's
		// login does not make it reconnect (one connection on each side).
		_, block, _ := strings.Cut(cp.ClientIdentifier, "|")
		var presented []secrets.Param
		for _, kv := range strings.Split(strings.TrimSuffix(block, "|"), ",") {
			k, v, _ := strings.Cut(kv, "=")
			presented = append(presented, secrets.Param{Key: k, Value: v})
		}
		d.connectParams, _ = secrets.FilterConnectParams(presented)
	}
	r := newCompatRig(t, d, nil)
	sub := strings.NewReplacer("{pk}", d.pk, "{dn}", d.dn)
	c, ack := dialFirmware(t, r.local, cp, level)
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %d for clientId %q, want 0", ack.ReasonCode, cp.ClientIdentifier)
	}

	var sent []sentMsg
	var subscribed []string
	fail := func(s step, format string, args ...any) {
		t.Helper()
		t.Fatalf("%s line %d (%s %s): %s", conv.name, s.line, s.verb, sub.Replace(s.topic), fmt.Sprintf(format, args...))
	}
	for _, s := range conv.steps {
		topic, payload := sub.Replace(s.topic), sub.Replace(s.payload)
		switch s.verb {
		case "sub":
			subs := slices.Clone(s.subs)
			for i := range subs {
				subs[i].Filter = sub.Replace(subs[i].Filter)
			}
			codes, err := c.subscribe(subs)
			if err != nil {
				fail(s, "%v", err)
			}
			for i, code := range codes {
				if code > 1 {
					fail(s, "SUBACK %#x for %q, want it granted", code, subs[i].Filter)
				}
				subscribed = append(subscribed, subs[i].Filter)
			}
		case "settle":
			id := secrets.DeviceID{ProductKey: d.pk, DeviceName: d.dn}
			var missing []string
			err := waitUntil(10*time.Second, func() bool {
				have := r.sim.Subscriptions(d.pk, d.dn)
				missing = nil
				for _, f := range subscribed {
					if own, _ := id.OwnFilter(conv.dialect, f); !slices.Contains(have, own) {
						missing = append(missing, own)
					}
				}
				return len(missing) == 0
			})
			if err != nil {
				fail(s, "the cloud session lacks %v", missing)
			}
		case "pub":
			if err := c.publish(s.qos, topic, []byte(payload)); err != nil {
				fail(s, "%v", err)
			}
			sent = append(sent, sentMsg{topic, payload})
		case "recv":
			if _, err := c.waitPublish("device receives "+topic, func(got string) bool { return got == topic }); err != nil {
				fail(s, "%v", err)
			}
		case "cloud":
			var last error
			if err := waitUntil(10*time.Second, func() bool {
				last = r.sim.Publish(d.pk, d.dn, topic, []byte(payload), s.qos)
				return last == nil
			}); err != nil {
				fail(s, "the cloud cannot send it: %v", last)
			}
			got, err := c.waitPublish("device receives "+topic, func(got string) bool { return got == topic })
			if err != nil {
				fail(s, "%v", err)
			}
			if string(got.Payload) != payload {
				fail(s, "device got payload %q, want %q", got.Payload, payload)
			}
		case "rrpc":
			sent = append(sent, rrpcStep(t, r, c, d, s, topic, payload, sub.Replace(s.reply), fail))
		}
	}

	// Every uplink reached the cloud, in order, once.
	var arrived []sentMsg
	want := map[sentMsg]bool{}
	for _, m := range sent {
		want[m] = true
	}
	if err := waitUntil(20*time.Second, func() bool {
		arrived = arrived[:0]
		for _, rec := range r.sim.MessagesFor(d.pk, d.dn) {
			if m := (sentMsg{rec.Topic, string(rec.Payload)}); want[m] {
				arrived = append(arrived, m)
			}
		}
		return len(arrived) >= len(sent)
	}); err != nil {
		t.Errorf("%d of %d uplinks reached the cloud: %v", len(arrived), len(sent), arrived)
	}
	if len(arrived) >= len(sent) && (!slices.Equal(ordinaryUplinks(arrived), ordinaryUplinks(sent)) ||
		!slices.Equal(slices.SortedFunc(slices.Values(arrived), cmpSent), slices.SortedFunc(slices.Values(sent), cmpSent))) {
		t.Errorf("uplinks in the cloud:\n%v\nwant each once, the ordinary ones in this order:\n%v", arrived, sent)
	}
	// Nothing the device published came back to it.
	c.mu.Lock()
	for _, p := range c.pubs {
		if want[sentMsg{p.TopicName, string(p.Payload)}] {
			t.Errorf("the device got its own publish back: %s %s", p.TopicName, p.Payload)
		}
	}
	c.mu.Unlock()
	// One connection for the whole conversation, on both sides.
	if err := c.ping(); err != nil {
		t.Errorf("the device's connection did not survive the conversation: %v", err)
	}
	if n := r.metric("edgegw_broker_connects_total"); n != 1 {
		t.Errorf("local broker accepted %v connections, want 1 (a reconnect loop?)", n)
	}
	if n := r.metric("edgegw_broker_connects_refused_total"); n != 0 {
		t.Errorf("local broker refused %v CONNECTs, want 0", n)
	}
	if st := r.sim.Stats(); st.ConnectsAccepted != 1 || st.PermissionRefused != 0 || st.ProtocolErrors != 0 {
		t.Errorf("cloud: %d connects (want 1), %d refused topics, %d protocol errors (want 0)",
			st.ConnectsAccepted, st.PermissionRefused, st.ProtocolErrors)
	}
}

// rrpcStep makes a synchronous call and answers it as the SDKs do: the
// system RRPC on …/rrpc/response/{id} at QoS 0, the /ext/rrpc forms on the
// request's own topic. It returns the device's reply.
func rrpcStep(t *testing.T, r *rig, c *fwConn, d compatDevice, s step, topic, req, reply string, fail func(step, string, ...any)) sentMsg {
	t.Helper()
	type result struct {
		rep cloudsim.RRPCReply
		err error
	}
	done := make(chan result, 1)
	call := func() {
		rep, err := r.sim.RRPC(context.Background(), d.pk, d.dn, topic, []byte(req), cloudsim.MaxRRPCTimeout)
		done <- result{rep, err}
	}
	sysReq := "/sys/" + d.pk + "/" + d.dn + "/rrpc/request"
	prefix := "/ext/rrpc/"
	if topic == sysReq {
		prefix = sysReq + "/"
	}
	type request struct {
		pk  packets.Packet
		err error
	}
	reqCh := make(chan request, 1)
	go func() {
		got, err := c.waitPublish("device receives the RRPC request", func(got string) bool {
			return strings.HasPrefix(got, prefix) && (topic == sysReq || strings.HasSuffix(got, topic))
		})
		reqCh <- request{got, err}
	}()
	// The call needs the cloud session to receive the request topic; a
	// mirrored subscription may still be on its way (Sim.RRPC returns
	// ErrNotSubscribed at once then, without sending anything).
	deadline := time.Now().Add(10 * time.Second)
	var got packets.Packet
	var res result
	for got.TopicName == "" {
		go call()
		select {
		case res = <-done:
			if errors.Is(res.err, cloudsim.ErrNotSubscribed) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			fail(s, "the call ended before the device got the request: %v", res.err)
		case q := <-reqCh:
			if q.err != nil {
				fail(s, "%v", q.err)
			}
			got = q.pk
		}
	}
	if string(got.Payload) != req {
		fail(s, "request payload %q, want %q", got.Payload, req)
	}
	replyTopic := got.TopicName
	if topic == sysReq {
		replyTopic = "/sys/" + d.pk + "/" + d.dn + "/rrpc/response/" + strings.TrimPrefix(got.TopicName, prefix)
	}
	if err := c.publish(0, replyTopic, []byte(reply)); err != nil {
		fail(s, "%v", err)
	}
	select {
	case res = <-done:
	case <-time.After(cloudsim.MaxRRPCTimeout + 5*time.Second):
		fail(s, "Sim.RRPC did not return")
	}
	if res.err != nil {
		fail(s, "the caller got %v", res.err)
	}
	if string(res.rep.Payload) != reply {
		fail(s, "the caller got %q, want %q", res.rep.Payload, reply)
	}
	return sentMsg{replyTopic, reply}
}

// waitUntil polls cond (every 20 ms) until it is true or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
