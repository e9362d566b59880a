package localbroker_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/localbroker"
)

// Issue #13: a device subscribed to 100,000 filters in its own namespace.
// Local subscriptions are bounded per device, across all its sessions
// (offline persistent ones included); the filters beyond the bound are
// refused in the SUBACK (0x80; MQTT 5: 0x97 quota exceeded), counted,
// logged once per device and minute, and never reported to the Observer
// (which mirrors subscriptions to the cloud).
func TestSubscriptionQuota(t *testing.T) {
	obs := &recorder{}
	h := startBroker(t, func(c *localbroker.Config) {
		c.MaxSubscriptions = 5
		c.Observer = obs
	})
	addr := strings.TrimPrefix(h.url(t, "tcp"), "tcp://")
	var filters []string
	for i := range 8 {
		filters = append(filters, topicA(fmt.Sprint("q/", i)))
	}
	a1, _ := dialRaw(t, addr, "a1", dnA, passA, false)
	if got, want := a1.subscribeMany(1, 1, filters...), []byte{1, 1, 1, 1, 1, 0x80, 0x80, 0x80}; string(got) != string(want) {
		t.Fatalf("SUBACK codes %v, want %v", got, want)
	}
	// Subscribing again to a filter held replaces it: no new entry.
	if got := a1.subscribeMany(2, 0, filters[0]); got[0] != 0 {
		t.Errorf("re-subscribing a held filter: 0x%02x, want 0", got[0])
	}
	// The quota is the device's, not the connection's; an offline
	// persistent session still counts.
	a1.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ClientsConnected == 0 }, "a1 offline")
	a2, _ := dialRaw(t, addr, "a2", dnA, passA, true)
	if got := a2.subscribeMany(1, 1, topicA("other")); got[0] != 0x80 {
		t.Errorf("a second session beyond the device's quota: 0x%02x, want 0x80", got[0])
	}
	// Unsubscribing frees room.
	a1, _ = dialRaw(t, addr, "a1", dnA, passA, false)
	a1.unsubscribe(3, filters[1], filters[2])
	if got := a2.subscribeMany(2, 1, topicA("other"), topicA("other2"), topicA("other3")); string(got) != string([]byte{1, 1, 0x80}) {
		t.Errorf("after unsubscribing two: codes %v, want [1 1 128]", got)
	}
	// Another device has its own quota.
	b, _ := dialRaw(t, addr, "b", dnB, passB, true)
	for i := range 5 {
		b.subscribe(topicB(fmt.Sprint("q/", i)), 1)
	}

	if n := h.b.Stats().SubscriptionsOverQuota; n != 5 {
		t.Errorf("SubscriptionsOverQuota = %d, want 5", n)
	}
	if n := h.b.Stats().SubscriptionsDenied; n != 0 {
		t.Errorf("SubscriptionsDenied = %d, want 0 (none was outside the namespace)", n)
	}
	if n := strings.Count(h.logs.String(), "subscription refused: the device holds"); n != 1 {
		t.Errorf("%d log lines for 5 refusals of one device, want 1", n)
	}
	for _, ev := range obs.list() {
		for _, f := range append(filters[5:], topicA("other3")) {
			if strings.Contains(ev, f+"]") || strings.Contains(ev, f+" ") {
				t.Errorf("a refused filter reached the observer: %s", ev)
			}
		}
	}
}

// MQTT 5 clients are told why: reason code 0x97 "quota exceeded".
func TestSubscriptionQuotaMQTT5(t *testing.T) {
	h := startBroker(t, func(c *localbroker.Config) { c.MaxSubscriptions = 2 })
	addr := strings.TrimPrefix(h.url(t, "tcp"), "tcp://")
	c := dialRaw5(t, addr, "v5", dnA, passA)
	subs := packets.Subscriptions{{Filter: topicA("1"), Qos: 1}, {Filter: topicA("2"), Qos: 1}, {Filter: topicA("3"), Qos: 1}, {Filter: topicB("x"), Qos: 1}}
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, ProtocolVersion: 5, PacketID: 9, Filters: subs})
	ack := c.read5()
	if ack.FixedHeader.Type != packets.Suback || string(ack.ReasonCodes) != string([]byte{1, 1, 0x97, 0x87}) {
		t.Fatalf("SUBACK type %d codes %#v, want [1 1 0x97 0x87]", ack.FixedHeader.Type, ack.ReasonCodes)
	}
}

func dialRaw5(t *testing.T, addr, clientID, user, pass string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: clientID, Clean: true, Keepalive: 60,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(pass)}})
	if ack := c.read5(); ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: type %d code 0x%02x", ack.FixedHeader.Type, ack.ReasonCode)
	}
	return c
}

// read5 reads a CONNACK, SUBACK, PUBACK or DISCONNECT of an MQTT 5
// connection.
func (c *rawClient) read5() packets.Packet {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	pk := packets.Packet{ProtocolVersion: 5}
	hb, err := c.r.ReadByte()
	if err == nil {
		err = pk.FixedHeader.Decode(hb)
	}
	var n int
	if err == nil {
		n, _, err = packets.DecodeLength(c.r)
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if err == nil {
		_, err = io.ReadFull(c.r, body)
	}
	if err == nil {
		switch pk.FixedHeader.Type {
		case packets.Connack:
			err = pk.ConnackDecode(body)
		case packets.Suback:
			err = pk.SubackDecode(body)
		case packets.Puback:
			err = pk.PubackDecode(body)
		case packets.Disconnect:
			err = pk.DisconnectDecode(body)
		default:
			err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
		}
	}
	if err != nil {
		c.t.Fatalf("read MQTT 5 packet: %v", err)
	}
	return pk
}

// heapInuse returns the live heap after a full collection.
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// The attack: 100,000 filters in the device's own namespace. With
// the default bound only 100 are held, in mochi's topic index and in the
// session; the index is empty again once a clean session ends, and once a
// persistent one expires. The heap is measured and logged (not asserted).
func TestSubscriptionFloodMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 subscription attempts")
	}
	for _, tc := range []struct {
		name  string
		clean bool
	}{{"clean", true}, {"persistent", false}} {
		t.Run(tc.name, func(t *testing.T) {
			h := startBroker(t, func(c *localbroker.Config) { c.SessionExpiry = time.Second })
			addr := strings.TrimPrefix(h.url(t, "tcp"), "tcp://")
			before := heapInuse()
			c, _ := dialRaw(t, addr, "flood", dnA, passA, tc.clean)
			const total, batch = 100_000, 1000
			granted := 0
			start := time.Now()
			for i := 0; i < total; i += batch {
				filters := make([]string, batch)
				for j := range filters {
					filters[j] = topicA(fmt.Sprintf("flood/%06d", i+j))
				}
				for _, code := range c.subscribeMany(uint16(i/batch+1), 1, filters...) {
					if code < 0x80 {
						granted++
					}
				}
			}
			took := time.Since(start)
			during := heapInuse()
			st := h.b.Stats()
			if granted != localbroker.DefaultMaxSubscriptions || st.Subscriptions != int64(granted) {
				t.Errorf("granted %d, broker holds %d subscriptions; want %d", granted, st.Subscriptions, localbroker.DefaultMaxSubscriptions)
			}
			c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
			testutil.Eventually(t, 15*time.Second, func() bool { return h.b.Stats().Subscriptions == 0 },
				"subscriptions released (clean: at disconnect; persistent: at expiry)")
			after := heapInuse()
			t.Logf("%d filters attempted in %v, %d granted; heap in use: before %.1f MiB, connected %.1f MiB, after the session ended %.1f MiB",
				total, took.Round(time.Millisecond), granted, mib(before), mib(during), mib(after))
		})
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
