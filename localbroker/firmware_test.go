package localbroker_test

import (
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// A device's own publish goes to the sink only, never back to the device:
// firmware that subscribes to a filter its own replies match (the RRPC demo
// of the vendor's Link SDK subscribes to /ext/rrpc/+/… and answers on
// /ext/rrpc/{id}/…) would otherwise loop on its own messages.
func TestNoLocalEcho(t *testing.T) {
	h := startBroker(t, nil)
	url := h.url(t, "tcp")
	got := make(chan paho.Message, 10)
	a := connect(t, url, "a", dnA, passA)
	subscribe(t, a, topicA("#"), 1, got)

	for _, p := range []string{"first", "second"} {
		wait(t, a.Publish(topicA("echo"), 1, false, p), "publish "+p)
	}
	if m := h.sink.next(t); string(m.Payload) != "first" {
		t.Fatalf("sink got %q first, want \"first\"", m.Payload)
	}
	// Both PUBACKs are in, so any fan-out of the two publishes has been
	// queued to the client before this marker.
	if err := h.b.Deliver(idA.DeviceID, topicA("marker"), []byte("marker"), 1); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if m := recv(t, got, "device A"); m.Topic() != topicA("marker") {
		t.Fatalf("device got its own publish back: %q %q", m.Topic(), m.Payload())
	}
}

// A server-subscribed session (firmware sending _ss=1, every EnOS device)
// gets downlinks without subscribing, live or queued while it is offline
// with a persistent session; a session that is not gets only what it
// subscribed to.
func TestServerSubscribedDelivery(t *testing.T) {
	h := startBroker(t, nil)
	url := h.url(t, "tcp")
	ss := make(chan paho.Message, 10)
	a := connect(t, url, "fw+ss", dnA, passA, withClean(false), withDefaultHandler(ss))
	plain := make(chan paho.Message, 10)
	connect(t, url, "plain", dnA, passA, withDefaultHandler(plain))

	set := "/sys/" + pk1 + "/" + dnA + "/thing/service/property/set"
	if err := h.b.Deliver(idA.DeviceID, set, []byte(`{"id":"1"}`), 1); err != nil {
		t.Fatalf("Deliver to a server-subscribed session: %v", err)
	}
	if m := recv(t, ss, "server-subscribed session"); m.Topic() != set || m.Qos() != 1 {
		t.Fatalf("got %q at QoS %d, want %q at QoS 1", m.Topic(), m.Qos(), set)
	}

	// Offline with a persistent session: queued and sent on resume.
	a.Disconnect(250)
	eventually(t, "session offline", func() bool { return h.b.Stats().ClientsConnected == 1 })
	if err := h.b.Deliver(idA.DeviceID, set, []byte(`{"id":"2"}`), 1); err != nil {
		t.Fatalf("Deliver to an offline server-subscribed session: %v", err)
	}
	connect(t, url, "fw+ss", dnA, passA, withClean(false), withDefaultHandler(ss))
	if m := recv(t, ss, "resumed session"); string(m.Payload()) != `{"id":"2"}` {
		t.Fatalf("resumed session got %q", m.Payload())
	}
	select {
	case m := <-plain:
		t.Fatalf("a session without server-side subscription got %q", m.Topic())
	default:
	}
}
