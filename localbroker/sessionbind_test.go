package localbroker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/internal/testutil"
)

// Issue #13: a device that logs in with its own credentials but another
// device's usual clientId and clean=false used to hold that clientId for
// the life of its persistent session, and the owner got CONNACK 2 on every
// attempt. Sessions now belong to the identity that made them: two
// identities using one clientId get two separate sessions, and neither
// sees, takes over or locks out the other's.
func TestClientIDSquatting(t *testing.T) {
	h := startBroker(t, nil)
	addr := strings.TrimPrefix(h.url(t, "tcp"), "tcp://")
	const usual = "devB-usual" // B's usual clientId

	// A squats B's clientId with a persistent session and leaves.
	a, _ := dialRaw(t, addr, usual, dnA, passA, false)
	a.subscribe(topicA("down/#"), 1)
	a.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ClientsConnected == 0 }, "A offline")

	// B still connects (dialRaw fails on a CONNACK other than 0), with a
	// session of its own.
	b, ack := dialRaw(t, addr, usual, dnB, passB, false)
	if ack.SessionPresent {
		t.Fatal("B was given A's session")
	}
	b.subscribe(topicB("down/#"), 1)

	// A comes back while B is online: A resumes its own session, B is not
	// kicked.
	a, ack = dialRaw(t, addr, usual, dnA, passA, false)
	if !ack.SessionPresent {
		t.Error("A's own persistent session was lost")
	}
	if err := h.b.Deliver(idB.DeviceID, topicB("down/live"), []byte("live"), 1); err != nil {
		t.Fatalf("Deliver to B: %v", err)
	}
	if pk := b.read(); pk.TopicName != topicB("down/live") {
		t.Fatalf("B got %q, want its downlink", pk.TopicName)
	} else {
		b.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}

	// B goes offline; its downlink is queued in its session, and A never
	// sees it.
	b.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	testutil.Eventually(t, 10*time.Second, func() bool { return h.b.Stats().ClientsConnected == 1 }, "B offline")
	if err := h.b.Deliver(idB.DeviceID, topicB("down/queued"), []byte("for B"), 1); err != nil {
		t.Fatalf("Deliver to B's offline session: %v", err)
	}
	if err := h.b.Deliver(idA.DeviceID, topicA("down/a"), []byte("for A"), 1); err != nil {
		t.Fatalf("Deliver to A: %v", err)
	}
	if pk := a.read(); pk.TopicName != topicA("down/a") {
		t.Fatalf("A got %q %q, want only its own downlink", pk.TopicName, pk.Payload)
	}
	if n := h.b.Stats().Sessions; n != 2 {
		t.Errorf("Sessions = %d, want 2 (one per identity)", n)
	}

	// B resumes and gets what was queued for it.
	b, ack = dialRaw(t, addr, usual, dnB, passB, false)
	if !ack.SessionPresent {
		t.Fatal("B's session was not resumed")
	}
	if pk := b.read(); pk.TopicName != topicB("down/queued") || string(pk.Payload) != "for B" {
		t.Fatalf("B resumed and got %q %q", pk.TopicName, pk.Payload)
	}
}

// subscribe sends one SUBSCRIBE and returns the SUBACK's codes.
func (c *rawClient) subscribe(filter string, qos byte) {
	c.t.Helper()
	if codes := c.subscribeMany(1, qos, filter); codes[0] != qos {
		c.t.Fatalf("subscribe %q: code 0x%02x", filter, codes[0])
	}
}

func (c *rawClient) subscribeMany(id uint16, qos byte, filters ...string) []byte {
	c.t.Helper()
	subs := make(packets.Subscriptions, len(filters))
	for i, f := range filters {
		subs[i] = packets.Subscription{Filter: f, Qos: qos}
	}
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: id, Filters: subs})
	ack := c.read()
	if ack.FixedHeader.Type != packets.Suback || ack.PacketID != id || len(ack.ReasonCodes) != len(filters) {
		c.t.Fatalf("want a SUBACK for id %d with %d codes, got type %d id %d codes %v",
			id, len(filters), ack.FixedHeader.Type, ack.PacketID, ack.ReasonCodes)
	}
	return ack.ReasonCodes
}

func (c *rawClient) unsubscribe(id uint16, filters ...string) {
	c.t.Helper()
	subs := make(packets.Subscriptions, len(filters))
	for i, f := range filters {
		subs[i] = packets.Subscription{Filter: f}
	}
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: id, Filters: subs})
	if ack := c.read(); ack.FixedHeader.Type != packets.Unsuback {
		c.t.Fatalf("want UNSUBACK, got type %d", ack.FixedHeader.Type)
	}
}
