package gateway_test

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// An NTP request and an RRPC reply are only useful fresh
// (docs/protocol.md §7.4): behind a backlog of a device's normal
// messages (a slow cloud: 100 ms per PUBACK, 80 messages = 8 s) the NTP
// answer must still come within 2 s and an RRPC caller (3 s timeout) must
// still get the reply.
func TestTimeCriticalAheadOfBacklog(t *testing.T) {
	d := compatDevice{dialect: secrets.Aliyun, pk: "a1FwBackLg1", dn: "c-sdk-3-dev", secret: secrets.NewSecret("backlog-secret-0123456789")}
	r := newCompatRig(t, d, nil)
	conv := loadConversation(t, "testdata/firmware/alibaba-c-sdk-3.0.1.txt")
	cp, level := conv.credentials(t, d)
	c, ack := dialFirmware(t, r.local, cp, level)
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %d", ack.ReasonCode)
	}
	sys := "/sys/" + d.pk + "/" + d.dn + "/"
	ntp := "/ext/ntp/" + d.pk + "/" + d.dn + "/"
	for _, f := range []string{ntp + "response", sys + "rrpc/request/+"} {
		if codes, err := c.subscribe(packets.Subscriptions{{Filter: f}}); err != nil || codes[0] > 1 {
			t.Fatalf("SUBSCRIBE %s: %v %v", f, codes, err)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		have := r.sim.Subscriptions(d.pk, d.dn)
		return slices.Contains(have, ntp+"response") && slices.Contains(have, sys+"rrpc/request/+")
	}, "subscriptions mirrored")

	const backlog = 80
	r.sim.Delay(100 * time.Millisecond)
	t.Cleanup(func() { r.sim.Delay(0) })
	for i := range backlog {
		if err := c.publish(1, sys+"thing/event/property/post", []byte(`{"id":"`+strconv.Itoa(i)+`","params":{"n":`+strconv.Itoa(i)+`}}`)); err != nil {
			t.Fatal(err)
		}
	}

	// Both right behind the backlog: the NTP request, and the RRPC reply
	// to a call made now.
	start := time.Now()
	if err := c.publish(0, ntp+"request", []byte(`{"deviceSendTime":"1700000000000"}`)); err != nil {
		t.Fatal(err)
	}
	type result struct {
		rep cloudsim.RRPCReply
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := r.sim.RRPC(t.Context(), d.pk, d.dn, sys+"rrpc/request", []byte(`{"id":"9","method":"thing.service.Toggle","params":{}}`), 3*time.Second)
		done <- result{rep, err}
	}()
	req, err := c.waitPublish("RRPC request", func(topic string) bool { return strings.HasPrefix(topic, sys+"rrpc/request/") })
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimPrefix(req.TopicName, sys+"rrpc/request/")
	if err := c.publish(0, sys+"rrpc/response/"+id, []byte(`{"id":"9","code":200,"data":{}}`)); err != nil {
		t.Fatal(err)
	}
	if n := len(r.sim.MessagesFor(d.pk, d.dn)); n >= backlog {
		t.Fatalf("the backlog had drained (%d messages in the cloud) before the RRPC reply: the test proves nothing", n)
	}
	if res := <-done; res.err != nil {
		t.Errorf("RRPC reply behind %d messages: %v", backlog, res.err)
	}
	if _, err := c.waitPublish("NTP response", func(topic string) bool { return topic == ntp+"response" }); err != nil {
		t.Errorf("NTP request behind %d messages: %v", backlog, err)
	} else if took := time.Since(start); took > 2*time.Second {
		t.Errorf("NTP response after %v behind %d messages, want within 2 s (the device clock would be off by ~%v)", took.Round(time.Millisecond), backlog, (took / 2).Round(time.Millisecond))
	}
}
