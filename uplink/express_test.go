package uplink

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/spool"
)

// Payload values of the time-critical messages in these tests (the test
// cloud records payloads as numbers).
const (
	ntpValue   = 900001
	rrpcValue  = 900002
	replyValue = 900003
)

func ntpTopic(id secrets.DeviceID) string {
	return "/ext/ntp/" + id.ProductKey + "/" + id.DeviceName + "/request"
}

func rrpcTopic(id secrets.DeviceID) string {
	return "/sys/" + id.ProductKey + "/" + id.DeviceName + "/rrpc/response/1686000000001"
}

func replyTopic(id secrets.DeviceID) string {
	return "/sys/" + id.ProductKey + "/" + id.DeviceName + "/thing/service/property/set_reply"
}

// expedite hands a message to the manager the way the gateway's sink does.
func expedite(t testing.TB, m *Manager, id secrets.DeviceID, topic string, qos byte, v int, received time.Time) {
	t.Helper()
	ok, err := m.Expedite(context.Background(), id, spool.Message{Topic: topic, QoS: qos, Payload: fmt.Appendf(nil, "%d", v), Received: received})
	if err != nil || !ok {
		t.Fatalf("Expedite(%s): handled %v, err %v", topic, ok, err)
	}
}

// A device has a large backlog (the cloud was down). After the cloud is
// back and the backlog is draining, the device sends an NTP request
// (QoS 1) and an RRPC response (QoS 0): both reach the cloud right away,
// long before the backlog has drained, which still arrives complete and
// in order.
func TestTimeCriticalBypassesBacklog(t *testing.T) {
	cloud := startMochi(t, secrets.Aliyun)
	r := newRig(t, cloud.url, func(c *ManagerConfig) {
		l := c.Limits[secrets.Aliyun]
		l.MessageRate = Rate{PerSecond: 200, Burst: 1}
		c.Limits[secrets.Aliyun] = l
	})
	d := testDevice(1)
	cloud.register(d.ID, d.Secret)
	const backlog = 400
	r.q.appendN(t, d.ID, userTopic(d.ID), 1, backlog)
	r.add(d)
	startManager(t, r.m)

	testutil.Eventually(t, 15*time.Second, func() bool { return len(cloud.hook.receivedBy(d.ID)) > 0 }, "backlog draining")
	atSend := len(cloud.hook.receivedBy(d.ID))
	expedite(t, r.m, d.ID, ntpTopic(d.ID), 1, ntpValue, time.Now())
	expedite(t, r.m, d.ID, rrpcTopic(d.ID), 0, rrpcValue, time.Now())
	expedite(t, r.m, d.ID, replyTopic(d.ID), 1, replyValue, time.Now())

	st := r.waitStatus(d.ID, "everything delivered", func(st SessionStatus) bool { return st.Sent == backlog+3 })
	got := cloud.hook.receivedBy(d.ID)
	var rest []uint64
	for _, v := range got {
		if v <= backlog {
			rest = append(rest, v)
		}
	}
	if dups := checkOrder(t, "backlog", rest, backlog); dups != 0 {
		t.Errorf("%d duplicates without any fault", dups)
	}
	last := slices.Index(got, backlog)
	// Ahead of each can be only what was in flight or holding rate tokens
	// when it was handed over.
	limit := atSend + r.m.cfg.Window + 1
	for _, v := range []uint64{ntpValue, rrpcValue, replyValue} {
		pos := slices.Index(got, v)
		switch {
		case pos < 0:
			t.Errorf("%d never arrived", v)
		case pos > limit || pos > last:
			t.Errorf("%d arrived at position %d (backlog done at %d), want at most %d: it waited behind the backlog", v, pos, last, limit)
		}
	}
	topics := cloud.hook.topicsBy(d.ID)
	for i, want := range map[uint64]string{ntpValue: ntpTopic(d.ID), rrpcValue: rrpcTopic(d.ID), replyValue: replyTopic(d.ID)} {
		if pos := slices.Index(got, i); pos >= 0 && topics[pos] != want {
			t.Errorf("%d arrived on %q, want %q", i, topics[pos], want)
		}
	}
	if st.Expired != (ExpiredCounts{}) {
		t.Errorf("expired %+v, want none", st.Expired)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return r.q.depth(d.ID) == 0 }, "queue empty (the spooled NTP request acknowledged)")
	t.Logf("handed over at position %d: NTP arrived at %d, RRPC at %d, reply at %d; backlog done at %d of %d",
		atSend, slices.Index(got, ntpValue), slices.Index(got, rrpcValue), slices.Index(got, replyValue), last, len(got))
}

// While the cloud is down, a device sends an NTP request (QoS 1: spooled),
// an RRPC response (QoS 0: memory only) and a reply; all outlive their
// TTL before the cloud returns. None is ever sent, each is counted by
// class, and the spooled ones leave the queue. So does a spooled NTP
// request that the express lane never saw (as after a restart): it is
// dropped when the drain reaches it. The device's ordinary message still
// goes out.
func TestTimeCriticalExpiresWhileCloudDown(t *testing.T) {
	fc := newFakeClock()
	cloud := startMochi(t, secrets.Aliyun)
	cloud.hook.set(func(h *cloudHook) { h.drop = 1 << 30 }) // down
	r := newRig(t, cloud.url, withFakeClock(fc))
	d := testDevice(1)
	cloud.register(d.ID, d.Secret)
	r.add(d)
	startManager(t, r.m)
	r.waitStatus(d.ID, "failed attempt", func(st SessionStatus) bool { return st.Attempts > 0 && st.State == StateBackoff })

	// As after a restart: spooled, unknown to the express lane.
	if _, err := r.q.Append(context.Background(), d.ID, spool.Message{Topic: ntpTopic(d.ID), QoS: 1, Payload: []byte("900004"), Received: fc.Now()}); err != nil {
		t.Fatal(err)
	}
	r.q.appendN(t, d.ID, userTopic(d.ID), 1, 1) // payload "2": the ordinary message
	expedite(t, r.m, d.ID, ntpTopic(d.ID), 1, ntpValue, fc.Now())
	expedite(t, r.m, d.ID, rrpcTopic(d.ID), 0, rrpcValue, fc.Now())
	expedite(t, r.m, d.ID, replyTopic(d.ID), 1, replyValue, fc.Now())
	if n := r.q.depth(d.ID); n != 4 {
		t.Fatalf("queue depth %d, want 4 (the QoS 1 ones, not the QoS 0 RRPC response)", n)
	}

	ttl := r.m.cfg.TimeCritical
	fc.Advance(max(ttl.NTP, ttl.RRPC, ttl.Reply) + time.Second)
	r.waitStatus(d.ID, "expiries counted while the cloud is down", func(st SessionStatus) bool {
		return st.Expired == ExpiredCounts{NTP: 1, RRPC: 1, Reply: 1}
	})
	if n := r.q.depth(d.ID); n != 2 {
		t.Errorf("queue depth %d after the expiries, want 2 (the expired ones removed)", n)
	}

	cloud.hook.set(func(h *cloudHook) { h.drop = 0 }) // back
	testutil.Eventually(t, 15*time.Second, func() bool {
		fc.Advance(20 * time.Millisecond) // the backoff runs on the fake clock
		st, _ := r.m.Status(d.ID)
		return st.Sent == 1
	}, "ordinary message delivered after the cloud returned")
	st := r.waitStatus(d.ID, "restart leftover dropped", func(st SessionStatus) bool { return st.Expired.NTP == 2 })
	if got := cloud.hook.receivedBy(d.ID); !slices.Equal(got, []uint64{2}) {
		t.Errorf("cloud received %v, want only [2]: expired messages were sent", got)
	}
	if st.Expired != (ExpiredCounts{NTP: 2, RRPC: 1, Reply: 1}) {
		t.Errorf("expired %+v, want NTP 2, RRPC 1, reply 1", st.Expired)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return r.q.depth(d.ID) == 0 }, "queue empty")
}

// A message that is not time-critical, or whose device the manager does
// not know, is left to the caller's ordinary path.
func TestExpediteDeclines(t *testing.T) {
	r := newRig(t, "tcp://127.0.0.1:1")
	d := testDevice(1)
	r.add(d)
	for _, tt := range []struct {
		name  string
		id    secrets.DeviceID
		topic string
	}{
		{"ordinary topic", d.ID, userTopic(d.ID)},
		{"unknown device", testDevice(2).ID, ntpTopic(testDevice(2).ID)},
		{"another device's topic", d.ID, ntpTopic(testDevice(2).ID)},
	} {
		ok, err := r.m.Expedite(context.Background(), tt.id, spool.Message{Topic: tt.topic, Payload: []byte("1")})
		if ok || err != nil {
			t.Errorf("%s: handled %v, err %v; want declined", tt.name, ok, err)
		}
	}
	if n := r.q.depth(d.ID); n != 0 {
		t.Errorf("queue depth %d, want 0", n)
	}
}
