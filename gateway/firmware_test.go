package gateway_test

import (
	"slices"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/internal/testutil"
)

// Firmware built on the Link SDK subscribes with '+' in the identity
// positions (/sys/+/+/thing/service/+). The gateway mirrors such a filter
// on the device's cloud session narrowed to the device's own identity, and
// the device receives its own service calls through it.
func TestIdentityWildcardSubscriptionMirrored(t *testing.T) {
	r := newRig(t, 1, 1, nil)
	d := r.devices[0]
	got := make(chan mqtt.Message, 4)
	o := mqtt.NewClientOptions().AddBroker("tcp://" + r.local).SetClientID("fw").
		SetUsername(d.DeviceName + "&" + d.ProductKey).SetPassword("pw-" + d.DeviceName).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	tok := c.Subscribe("/sys/+/+/thing/service/+", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	if code := tok.(*mqtt.SubscribeToken).Result()["/sys/+/+/thing/service/+"]; code != 1 {
		t.Fatalf("SUBACK %#x, want QoS 1 granted", code)
	}
	own := "/sys/" + d.ProductKey + "/" + d.DeviceName + "/thing/service/+"
	testutil.Eventually(t, 20*time.Second, func() bool {
		return slices.Contains(r.sim.Subscriptions(d.ProductKey, d.DeviceName), own)
	}, "cloud session subscribed to %s", own)
	if subs := r.sim.Subscriptions(d.ProductKey, d.DeviceName); slices.Contains(subs, "/sys/+/+/thing/service/+") {
		t.Errorf("the identity wildcard reached the cloud as is: %v", subs)
	}
	call := "/sys/" + d.ProductKey + "/" + d.DeviceName + "/thing/service/reboot"
	if err := r.sim.Publish(d.ProductKey, d.DeviceName, call, []byte(`{"id":"9","method":"thing.service.reboot"}`), 1); err != nil {
		t.Fatalf("cloud publish: %v", err)
	}
	select {
	case m := <-got:
		if m.Topic() != call {
			t.Errorf("device got %q, want %q", m.Topic(), call)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("service call not delivered")
	}
}
