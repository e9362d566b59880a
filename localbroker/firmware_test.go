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
