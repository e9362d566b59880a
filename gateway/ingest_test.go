package gateway_test

// Pipelined ingest (issue #16 item 3): a device's QoS 1 publishes go to the
// spool without its read loop waiting for each commit, so that all it has
// in flight share one group commit; its PUBACKs still follow durability,
// in the order it published.

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// ingestRig is a gateway whose spool commits wait at gate while it is
// closed, with its cloud down (so that nothing but the test's publishes
// commits), and one device connected packet by packet with its local
// password.
func ingestRig(t *testing.T, gate *testutil.Gate, mutate func(*config.Config)) (*rig, *fwConn) {
	t.Helper()
	r := newRigWith(t, rigOptions{devices: 1, passwords: 1, simRate: cloudsim.RateUnlimited, mutate: mutate,
		opts: gateway.Options{BeforeSpoolCommit: gate.Pass}})
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	d := r.devices[0]
	c, ack := dialFirmware(t, r.local, packets.ConnectParams{ClientIdentifier: "fw-" + d.DeviceName, Clean: true, Keepalive: 60,
		UsernameFlag: true, Username: []byte(d.DeviceName + "&" + d.ProductKey),
		PasswordFlag: true, Password: []byte("pw-" + d.DeviceName)}, 4)
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %d", ack.ReasonCode)
	}
	return r, c
}

// pub is a QoS 1 PUBLISH.
func pub(id uint16, topic string, payload string) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id,
		TopicName: topic, Payload: []byte(payload)}
}

// pubackIDs returns the ids of the PUBACKs received so far, in order.
func (c *fwConn) pubackIDs() []uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []uint16
	for _, a := range c.acks {
		if a.FixedHeader.Type == packets.Puback {
			ids = append(ids, a.PacketID)
		}
	}
	return ids
}

// waitPubacks waits until n PUBACKs arrived and checks that their ids are
// 1..n, in that order.
func (c *fwConn) waitPubacks(n int) {
	c.t.Helper()
	if err := c.wait(fmt.Sprintf("%d PUBACKs", n), func() bool {
		k := 0
		for _, a := range c.acks {
			if a.FixedHeader.Type == packets.Puback {
				k++
			}
		}
		return k >= n
	}); err != nil {
		c.t.Fatalf("%v; got PUBACKs %v", err, c.pubackIDs())
	}
	ids := c.pubackIDs()
	for i, id := range ids {
		if id != uint16(i+1) {
			c.t.Fatalf("PUBACK ids %v, want 1..%d in the order published", ids, n)
		}
	}
	if len(ids) != n {
		c.t.Fatalf("PUBACK ids %v, want 1..%d", ids, n)
	}
}

// One device with 16 QoS 1 publishes in flight: all 16 reach the spool
// while a commit is held, none is acknowledged before it is durable, and
// they take one commit together, acknowledged in the order published.
// Before, the device's read loop waited for each commit, so its 16
// publishes needed 16 commits (and the PINGREQ behind them waited too).
func TestIngestPipelinedGroupCommit(t *testing.T) {
	var gate testutil.Gate
	r, c := ingestRig(t, &gate, nil)
	d := r.devices[0]

	// The first publish is taken into a commit that the gate holds.
	gate.Close()
	c.write(pub(1, d.UplinkTopic(), "blocker"))
	gate.WaitEntered(t, 10*time.Second)
	const inFlight = 16
	for i := range inFlight {
		c.write(pub(uint16(i+2), d.UplinkTopic(), fmt.Sprint(i)))
	}
	// The broker read past all 16 (they are with the spool) and answers
	// the ping, while nothing is on disk: no PUBACK yet.
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	if _, err := c.waitAck(packets.Pingresp, 0); err != nil {
		t.Fatalf("the broker did not read past publishes waiting for a commit: %v", err)
	}
	if ids := c.pubackIDs(); len(ids) != 0 {
		t.Fatalf("PUBACKs %v before any commit finished", ids)
	}
	before := r.gw.Snapshot().Spool.Commits
	gate.Open()
	c.waitPubacks(inFlight + 1)
	if got := r.gw.Snapshot().Spool.Commits - before; got != 2 {
		t.Errorf("%d commits for the held one and 16 publishes in flight, want 2 (16 in one)", got)
	}
	if got := r.gw.Snapshot().Spool.Depth; got != inFlight+1 {
		t.Errorf("spool depth %d, want %d", got, inFlight+1)
	}
}

// A time-critical publish (the express lane, appended before the PUBACK
// on the read loop itself) sent behind normal ones still waiting for
// their commit is acknowledged after them, in the order published, and
// rides in the same commit.
func TestIngestExpressLaneAckedInOrder(t *testing.T) {
	var gate testutil.Gate
	r, c := ingestRig(t, &gate, nil)
	d := r.devices[0]
	reply := "/sys/" + d.ProductKey + "/" + d.DeviceName + "/thing/service/property/set_reply"

	gate.Close()
	c.write(pub(1, d.UplinkTopic(), "blocker"))
	gate.WaitEntered(t, 10*time.Second)
	c.write(pub(2, d.UplinkTopic(), "2"))
	c.write(pub(3, d.UplinkTopic(), "3"))
	c.write(pub(4, reply, `{"id":"9","code":200,"data":{}}`))
	c.write(pub(5, d.UplinkTopic(), "5"))
	before := r.gw.Snapshot().Spool.Commits
	gate.Open()
	c.waitPubacks(5)
	// The held one; 2, 3 and the reply; 5 (read once the reply's append
	// returned).
	if got := r.gw.Snapshot().Spool.Commits - before; got != 3 {
		t.Errorf("%d commits, want 3", got)
	}
}

// A publish the spool refuses (reject-new: the device's budget is full)
// towards an MQTT 3.1.1 device: the PUBACKs before it are sent, then the
// connection is dropped without its PUBACK or any after it, so that the
// device resends after reconnecting.
func TestIngestWithheldPubackDropsConnection(t *testing.T) {
	var gate testutil.Gate
	r, c := ingestRig(t, &gate, func(cfg *config.Config) {
		cfg.Spool.Overflow = config.OverflowRejectNew
		cfg.Spool.DeviceBudget, cfg.Broker.MaxPacketSize = 4<<10, 4<<10
	})
	d := r.devices[0]
	gate.Close()
	c.write(pub(1, d.UplinkTopic(), "blocker"))
	gate.WaitEntered(t, 10*time.Second)
	c.write(pub(2, d.UplinkTopic(), strings.Repeat("2", 2500)))
	c.write(pub(3, d.UplinkTopic(), strings.Repeat("3", 2500))) // over the budget
	c.write(pub(4, d.UplinkTopic(), "4"))
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	if _, err := c.waitAck(packets.Pingresp, 0); err != nil {
		t.Fatal(err)
	}
	gate.Open()
	err := c.wait("the connection dropped", func() bool { return c.readErr != nil })
	if err != nil {
		t.Fatal(err)
	}
	if ids := c.pubackIDs(); len(ids) != 2 || ids[0] != 1 || ids[1] != 2 {
		t.Errorf("PUBACKs %v, want [1 2]", ids)
	}
	c.mu.Lock()
	readErr := c.readErr
	c.mu.Unlock()
	if !errors.Is(readErr, io.EOF) && !errors.Is(readErr, syscall.ECONNRESET) {
		t.Errorf("connection ended with %v, want it closed by the gateway", readErr)
	}
}
