package uplink

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

func seqs(n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i + 1)
	}
	return out
}

// A device's window of publishes leaves in fewer write(2) calls than
// packets: paho writes each packet on its own, the connection gathers what
// paho wrote while the previous write was in progress.
func TestDrainCoalescesWrites(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	const n = 400
	r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, n)
	r.add(dev)
	startManager(t, r.m)
	r.waitStatus(dev.ID, "all acknowledged", func(st SessionStatus) bool { return st.Sent == n })
	checkOrder(t, "cloud", cloud.hook.receivedBy(dev.ID), n)
	// n publishes, a CONNECT and the subscriptions; every burst of the
	// window is one write at best.
	if w := r.writes.Load(); w >= n {
		t.Errorf("%d writes to the cloud socket for %d publishes: none coalesced", w, n)
	} else {
		t.Logf("%d writes for %d publishes", w, n)
	}
}

// paho's store keeps nothing: every attempt is a new client with a clean
// session, the spool resends what the cloud did not acknowledge, and
// paho's store only cost a formatted key and map entry per publish.
func TestPahoStoreKeepsNothing(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	stores := make(chan mqtt.Store, 8)
	r.m.newClient = func(o *mqtt.ClientOptions) mqtt.Client {
		stores <- o.Store
		return mqtt.NewClient(o)
	}
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, 3)
	r.add(dev)
	startManager(t, r.m)
	r.waitStatus(dev.ID, "all acknowledged", func(st SessionStatus) bool { return st.Sent == 3 })
	st := <-stores
	if st == nil {
		t.Fatal("no store in paho's options: paho makes a MemoryStore")
	}
	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.Qos, pub.MessageID = 1, 7
	st.Put("o.7", pub)
	if keys := st.All(); len(keys) != 0 || st.Get("o.7") != nil {
		t.Errorf("paho's store kept %v", keys)
	}
}

// With a window of 16 and the cloud closing the connection twice in the
// middle of the stream (before the PUBACK of a message), every message
// arrives in order (duplicates allowed and counted), and the queue is
// acknowledged exactly once per message, in order, and only for messages
// the cloud really PUBACKed.
func TestDrainInOrderAcrossKicks(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	kicked := map[uint64]bool{}
	cloud.hook.set(func(h *cloudHook) {
		h.kick = func(_ secrets.DeviceID, seq uint64) bool {
			if (seq == 150 || seq == 420) && !kicked[seq] {
				kicked[seq] = true
				return true
			}
			return false
		}
	})
	const n = 600
	r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, n)
	r.add(dev)
	startManager(t, r.m)
	st := r.waitStatus(dev.ID, "all acknowledged", func(st SessionStatus) bool { return st.Sent == n })
	if r.q.depth(dev.ID) != 0 {
		t.Fatalf("%d messages left in the queue", r.q.depth(dev.ID))
	}
	got := cloud.hook.receivedBy(dev.ID)
	dups := checkOrder(t, "cloud", got, n)
	if acked := r.q.acked(dev.ID); !slices.Equal(acked, seqs(n)) {
		t.Fatalf("queue acks %v…, want 1..%d once each in order", acked[:min(len(acked), 20)], n)
	}
	for _, s := range r.q.acked(dev.ID) {
		if !cloud.hook.wasPubacked(dev.ID, s) {
			t.Fatalf("seq %d was acknowledged to the queue but never PUBACKed by the cloud", s)
		}
	}
	if st.Connects != 3 || st.Resent == 0 || uint64(dups) > st.Resent {
		t.Fatalf("connects %d, resent %d, duplicates %d: want 3 connects and the kicked messages resent", st.Connects, st.Resent, dups)
	}
	t.Logf("%d messages, window 16, 2 kicks: %d resent, %d duplicates at the cloud", n, st.Resent, dups)
}

// A cloud that stops sending PUBACKs while TCP stays up: the session is
// torn down after StallTimeout and resends on a new connection.
func TestDrainStalledPubacks(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url, func(c *ManagerConfig) { c.StallTimeout = 300 * time.Millisecond })
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	cloud.hook.set(func(h *cloudHook) { h.swallow = true })
	r.add(dev)
	startManager(t, r.m)
	r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
	r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, 5)
	st := r.waitStatus(dev.ID, "reconnect after a stall", func(st SessionStatus) bool {
		return st.Connects >= 2 && strings.Contains(st.LastError, "no PUBACK")
	})
	if len(r.q.acked(dev.ID)) != 0 || st.Sent != 0 {
		t.Fatal("messages were acknowledged although the cloud never PUBACKed")
	}
	cloud.hook.set(func(h *cloudHook) { h.swallow = false })
	r.waitStatus(dev.ID, "all delivered", func(st SessionStatus) bool { return st.Sent == 5 })
	dups := checkOrder(t, "cloud", cloud.hook.receivedBy(dev.ID), 5)
	if !slices.Equal(r.q.acked(dev.ID), seqs(5)) {
		t.Fatalf("acks %v", r.q.acked(dev.ID))
	}
	t.Logf("stall detected after %d connects; %d duplicates", st.Connects, dups)
}

// Messages the cloud would never accept are moved to the queue's dead
// letters; the rest flows in order around them.
func TestDrainDeadLetter(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url, func(c *ManagerConfig) {
		l := c.Limits[secrets.Aliyun]
		l.MaxPayload = 1024
		c.Limits[secrets.Aliyun] = l
	})
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	topic := userTopic(dev.ID)
	big := make([]byte, 1025)
	for i := range big {
		big[i] = '7'
	}
	for _, m := range []spool.Message{
		{Topic: topic, QoS: 1, Payload: []byte("1")},
		{Topic: topic, QoS: 1, Payload: big},
		{Topic: "/otherPK/other/user/data", QoS: 1, Payload: []byte("3")},
		{Topic: topic + "/+", QoS: 1, Payload: []byte("4")},
		{Topic: topic, QoS: 1, Payload: []byte("5")},
	} {
		if _, err := r.q.Append(context.Background(), dev.ID, m); err != nil {
			t.Fatal(err)
		}
	}
	r.add(dev)
	startManager(t, r.m)
	st := r.waitStatus(dev.ID, "queue drained", func(st SessionStatus) bool { return st.Sent == 2 && st.DeadLettered == 3 })
	if got := cloud.hook.receivedBy(dev.ID); !slices.Equal(got, []uint64{1, 5}) {
		t.Fatalf("the cloud received %v, want [1 5]", got)
	}
	dead := r.deadLetters()
	if len(dead) != 3 || dead[0].m.Seq != 2 || dead[1].m.Seq != 3 || dead[2].m.Seq != 4 {
		t.Fatalf("dead letters %+v", dead)
	}
	for i, want := range []string{"exceeds the aliyun limit of 1024", "not a valid topic", "not a valid topic"} {
		if !strings.Contains(dead[i].reason, want) {
			t.Errorf("dead letter %d reason %q, want %q", i, dead[i].reason, want)
		}
	}
	if r.q.depth(dev.ID) != 0 || st.State != StateConnected {
		t.Fatalf("depth %d, state %s", r.q.depth(dev.ID), st.State)
	}
}

// QoS 0 messages are published at QoS 0 and acknowledged once written.
func TestDrainQoS0(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url)
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	r.q.appendN(t, dev.ID, userTopic(dev.ID), 0, 50)
	r.q.appendN(t, dev.ID, userTopic(dev.ID), 2, 50) // QoS 2 is capped at 1
	r.add(dev)
	startManager(t, r.m)
	r.waitStatus(dev.ID, "all written", func(st SessionStatus) bool { return st.Sent == 100 })
	testutil.Eventually(t, 5*time.Second, func() bool { return len(cloud.hook.receivedBy(dev.ID)) == 100 }, "cloud received 100")
	checkOrder(t, "cloud", cloud.hook.receivedBy(dev.ID), 100)
	for s := uint64(51); s <= 100; s++ {
		if !cloud.hook.wasPubacked(dev.ID, s) {
			t.Fatalf("QoS 2 message %d was not sent at QoS 1", s)
		}
	}
}

// The per-device rate paces the drain on the injected clock: one message
// per 100 ms at 10/s, and no faster.
func TestDrainDeviceRate(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	fc := newFakeClock()
	r := newRig(t, cloud.url, withFakeClock(fc), func(c *ManagerConfig) {
		l := c.Limits[secrets.Aliyun]
		l.MessageRate = Rate{PerSecond: 10, Burst: 1}
		c.Limits[secrets.Aliyun] = l
	})
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, 5)
	r.add(dev)
	startManager(t, r.m)
	for k := 1; k <= 5; k++ {
		testutil.Eventually(t, 10*time.Second, func() bool {
			st, _ := r.m.Status(dev.ID)
			want := 1
			if k == 5 {
				want = 0
			}
			return st.Sent == uint64(k) && fc.Armed() == want && fc.ArmedWithin(time.Second) == want
		}, "message delivered, next one waiting for the rate")
		if got := len(cloud.hook.receivedBy(dev.ID)); got != k {
			t.Fatalf("at +%dms the cloud has %d messages, want %d", (k-1)*100, got, k)
		}
		if d, ok := fc.NextDue(); k < 5 && (!ok || d != 100*time.Millisecond) {
			t.Fatalf("next message due in %v, want 100ms", d)
		}
		fc.Advance(100 * time.Millisecond)
	}
}

// A gateway-wide rate is shared round robin by backlogged devices: each
// device that asks again queues behind those already waiting.
func TestDrainGatewayRateFair(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	fc := newFakeClock()
	r := newRig(t, cloud.url, withFakeClock(fc), func(c *ManagerConfig) {
		c.GatewayRate = Rate{PerSecond: 10, Burst: 1}
	})
	devs := []Device{testDevice(1), testDevice(2), testDevice(3)}
	for _, d := range devs {
		cloud.register(d.ID, d.Secret)
		r.add(d)
	}
	startManager(t, r.m)
	for _, d := range devs {
		r.waitStatus(d.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
	}
	// Backlogs arrive one device after the other: device 1 takes the one
	// token of the burst, then each device waits for its turn.
	for i, d := range devs {
		r.q.appendN(t, d.ID, userTopic(d.ID), 1, 4)
		testutil.Eventually(t, 10*time.Second, func() bool {

			return fc.Armed() == i+1 && fc.ArmedWithin(time.Second) == i+1
		}, "device waiting for the gateway rate")
	}
	want := strings.Fields("1 1 2 3 1 2 3 1 2 3 2 3")
	for granted := 2; granted <= len(want); granted++ {
		fc.Advance(100 * time.Millisecond)
		left := map[string]int{"1": 4, "2": 4, "3": 4}
		for _, d := range want[:granted] {
			left[d]--
		}
		waiting := 0
		for _, n := range left {
			if n > 0 {
				waiting++
			}
		}
		testutil.Eventually(t, 10*time.Second, func() bool {
			n := 0
			for _, d := range devs {
				n += len(r.q.acked(d.ID))
			}
			return n == granted && fc.Armed() == waiting
		}, "grant %d through the gateway rate", granted)
	}
	var got []string
	for _, id := range cloud.hook.arrivalOrder() {
		got = append(got, id.DeviceName[len(id.DeviceName)-1:])
	}
	if !slices.Equal(got, want) {
		t.Fatalf("arrival order %v, want %s (round robin after the burst)", got, want)
	}
}

// Queue read errors are retried without dropping the connection.
func TestDrainReadErrorRetried(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	fc := newFakeClock()
	r := newRig(t, cloud.url, withFakeClock(fc))
	dev := testDevice(1)
	cloud.register(dev.ID, dev.Secret)
	r.q.appendN(t, dev.ID, userTopic(dev.ID), 1, 3)
	r.q.mu.Lock()
	r.q.readErr = errTest
	r.q.mu.Unlock()
	r.add(dev)
	startManager(t, r.m)
	r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })
	testutil.Eventually(t, 5*time.Second, func() bool { return fc.Armed() == 1 }, "read retry armed")
	r.q.mu.Lock()
	r.q.readErr = nil
	r.q.mu.Unlock()
	fc.Advance(readRetry)
	st := r.waitStatus(dev.ID, "delivered after the retry", func(st SessionStatus) bool { return st.Sent == 3 })
	if st.Connects != 1 {
		t.Fatalf("%d connects: a queue error must not drop the session", st.Connects)
	}
}
