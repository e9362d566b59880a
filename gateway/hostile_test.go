package gateway_test

// The fault suite's short form (issue #13): each hostile or damaged-state
// case through a whole gateway — local broker, spool, registry, cloud
// sessions against cloudsim — in a few seconds. Bounded subscriptions
// (item 3) are TestSubscriptionsBoundedAndMirrored (subsbound_test.go).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/spool"
)

// startLogged restarts the rig's gateway with its log captured.
func (r *rig) startLogged() *testutil.SyncBuffer {
	r.t.Helper()
	log := &testutil.SyncBuffer{}
	r.startWith(gateway.Options{Clock: r.clock, Logger: slog.New(slog.NewTextHandler(log, nil))})
	return log
}

// logInt returns the integer value of key=N in the first log line that
// contains msg.
func logInt(t *testing.T, log, msg, key string) int {
	t.Helper()
	m := regexp.MustCompile(regexp.QuoteMeta(msg) + `.*\b` + key + `=(\d+)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no log line %q with %s=: %s", msg, key, log)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// Item 6, the registry: a damaged registry.db used to be refused at Open,
// and every device stayed offline. Now the gateway moves it aside, keeps
// the devices whose records still decrypt, and says how many are lost.
func TestFaultRegistryDamagedStillServes(t *testing.T) {
	const n = 40
	r := newRig(t, n, 0, func(c *config.Config) { c.Metrics.Listen = "127.0.0.1:0" })
	r.stop()
	path := r.cfg.RegistryPath()
	key, _, err := secrets.LoadOrCreateKey(r.cfg.EffectiveKeyFile(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Zero one page of device records the tree still uses (a zeroed page
	// on the free list would not be damage).
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const ps = 4096
	damaged := false
	for p := len(data)/ps - 1; p >= 2 && !damaged; p-- {
		page := data[p*ps : (p+1)*ps]
		if page[8] != 0x02 || !bytes.Contains(page, []byte(testPK+"/dev-")) {
			continue // not a leaf page of device records
		}
		saved := bytes.Clone(page)
		clear(page)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		reg, err := secrets.OpenRegistry(path, key, nil)
		if err == nil {
			reg.Close()
		}
		if damaged = errors.Is(err, secrets.ErrCorrupt); !damaged {
			copy(page, saved)
		}
	}
	if !damaged {
		t.Fatal("found no page of device records whose loss the registry notices")
	}

	log := r.startLogged()
	const msg = "registry file is corrupt: moved aside"
	lost := logInt(t, log.String(), msg, "unreadable")
	devs, err := r.gw.Registry().Devices(secrets.DeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d of %d devices recovered, %d known lost", len(devs), n, lost)
	if len(devs) == 0 || len(devs) >= n || lost == 0 || len(devs)+lost > n {
		t.Errorf("%d devices recovered, %d counted lost, of %d", len(devs), lost, n)
	}
	if v := r.metric("edgegw_registry_records_lost"); v != float64(lost) {
		t.Errorf("edgegw_registry_records_lost = %v, want %d", v, lost)
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if len(aside) != 1 || !bytes.Contains([]byte(log.String()), []byte(aside[0])) {
		t.Errorf("moved-aside files %v; the log must name the one", aside)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		return r.gw.Snapshot().Sessions[uplink.StateConnected] == len(devs)
	}, "a cloud session for each of the %d recovered devices", len(devs))
	for _, d := range devs {
		if !r.sim.Connected(d.ProductKey, d.DeviceName) {
			t.Errorf("%s: no cloud session", d.ID())
		}
	}
}

// Item 1, fair overflow: a quiet device's acknowledged messages survive
// its neighbours' flood while the cloud is down and the spool is full.
func TestFaultFairOverflow(t *testing.T) {
	const budget = 32 << 10
	r := newRig(t, 4, 0, func(c *config.Config) {
		c.Spool.Budget, c.Spool.DeviceBudget, c.Broker.MaxPacketSize = budget, budget, 4<<10
	})
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	quiet, flooders := r.devices[:1], r.devices[1:]
	const count = 10
	acks := newAckLog()
	q := r.fleet(devsim.Config{Devices: quiet, QoS: 1, Count: count, OnAck: acks.add})
	testutil.Eventually(t, 10*time.Second, func() bool { return q.Stats().Acked >= count }, "the quiet device's posts acknowledged")
	f := r.fleet(devsim.Config{Devices: flooders, QoS: 1, Window: 8})
	// Flood until the spool has dropped several budgets' worth.
	testutil.Eventually(t, 30*time.Second, func() bool {
		return r.gw.Snapshot().Spool.Dropped[spool.ReasonOverflow] > 3*budget/200
	}, "the flood overflowed the spool")
	f.Close()
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.seqs(quiet[0])) >= count }, "the quiet device's backlog delivered")
	reconcile(t, quiet[0].DeviceName, r.seqs(quiet[0]), acks.of(quiet[0].DeviceName))
}

// Item 2, clientId squatting through the gateway: device A logs in with
// device B's usual clientId and a persistent session, and leaves; B still
// logs in, and its downlinks reach B only.
func TestFaultClientIDSquatting(t *testing.T) {
	r := newRig(t, 2, 2, nil)
	a, b := r.devices[0], r.devices[1]
	usual := b.ProductKey + "." + b.DeviceName
	type inbox struct {
		mu  sync.Mutex
		got []string
	}
	connect := func(d devsim.Device, box *inbox) mqtt.Client {
		t.Helper()
		o := mqtt.NewClientOptions().AddBroker("tcp://" + r.local).SetClientID(usual).
			SetUsername(d.DeviceName + "&" + d.ProductKey).SetPassword("pw-" + d.DeviceName).
			SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
			SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
				box.mu.Lock()
				defer box.mu.Unlock()
				box.got = append(box.got, string(m.Payload()))
			})
		c := mqtt.NewClient(o)
		testutil.WaitToken(t, c.Connect(), 10*time.Second, "CONNECT of "+d.DeviceName)
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}
	has := func(box *inbox, s string) bool {
		box.mu.Lock()
		defer box.mu.Unlock()
		for _, g := range box.got {
			if g == s {
				return true
			}
		}
		return false
	}
	var boxA, boxB inbox
	ca := connect(a, &boxA)
	testutil.WaitToken(t, ca.Subscribe(a.DownlinkTopic(), 1, nil), 10*time.Second, "SUBSCRIBE of A")
	ca.Disconnect(100)

	cb := connect(b, &boxB) // CONNACK 0, or WaitToken fails
	testutil.WaitToken(t, cb.Subscribe(b.DownlinkTopic(), 1, nil), 10*time.Second, "SUBSCRIBE of B")
	const forB, forA = `{"id":"1","params":{"for":"B"}}`, `{"id":"2","params":{"for":"A"}}`
	testutil.Eventually(t, 20*time.Second, func() bool {
		return r.sim.Publish(b.ProductKey, b.DeviceName, b.DownlinkTopic(), []byte(forB), 1) == nil
	}, "B's downlink subscription mirrored to the cloud")
	testutil.Eventually(t, 10*time.Second, func() bool { return has(&boxB, forB) }, "B got its downlink")

	// B leaves; a downlink for it waits in its persistent session. A
	// returns with the same clientId to its own session: its own downlink
	// arrives, B's does not — B gets it when it comes back.
	cb.Disconnect(100)
	const forB2 = `{"id":"3","params":{"for":"B, queued"}}`
	if err := r.sim.Publish(b.ProductKey, b.DeviceName, b.DownlinkTopic(), []byte(forB2), 1); err != nil {
		t.Fatal(err)
	}
	ca = connect(a, &boxA)
	// The cloud sends again until A has it: a downlink that arrives in the
	// moment between a resumed session's CONNACK and the broker indexing
	// it can go to the taken-over session (a known gap, see the note in
	// localbroker's OnSessionEstablished); what this test checks is that
	// it never reaches B.
	testutil.Eventually(t, 20*time.Second, func() bool {
		if has(&boxA, forA) {
			return true
		}
		_ = r.sim.Publish(a.ProductKey, a.DeviceName, a.DownlinkTopic(), []byte(forA), 1)
		return false
	}, "A got its downlink")
	ca.Disconnect(100)
	connect(b, &boxB)
	testutil.Eventually(t, 10*time.Second, func() bool { return has(&boxB, forB2) }, "B got the downlink queued in its session")
	if has(&boxA, forB) || has(&boxA, forB2) {
		t.Error("A received B's downlink")
	}
	if has(&boxB, forA) {
		t.Error("B received A's downlink")
	}
}

// Item 6, the spool: a spool file truncated while the gateway is stopped;
// after the restart what can be read reaches the cloud in order, and what
// is lost is counted as spool_dropped_total{reason="corrupt"}.
func TestFaultSpoolTruncated(t *testing.T) {
	r := newRig(t, 2, 0, func(c *config.Config) { c.Metrics.Listen = "127.0.0.1:0" })
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	const count = 300
	acks := newAckLog()
	// One post in flight per device: with more, a device's posts share
	// commits (pipelined ingest), the file is written in fewer, larger
	// commits, and its root page more often ends up above every live page,
	// where no truncation that keeps it damages anything
	// (truncateKeepingRoot).
	f := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Window: 1, Count: count, OnAck: acks.add})
	testutil.Eventually(t, 30*time.Second, func() bool { return f.Stats().Acked >= 2*count }, "all posts acknowledged while the cloud is down")
	f.Close()
	r.stop()
	truncateKeepingRoot(t, r.cfg.EffectiveSpoolPath())
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	log := r.startLogged()
	t.Cleanup(func() {
		if t.Failed() {
			for _, d := range r.devices {
				t.Logf("%s: cloud %v", d.DeviceName, r.seqs(d))
			}
			t.Log(log.String())
		}
	})
	corrupt := fmt.Sprintf(`edgegw_spool_dropped_total{reason=%q}`, "corrupt")
	lost := int(r.metric(corrupt))
	if lost == 0 || lost > 2*count {
		t.Fatalf("%s = %d of %d", corrupt, lost, 2*count)
	}
	// Every acknowledged message is either in the cloud, in order, or
	// counted lost (exactly: nothing had been delivered).
	arrived := func() int {
		n := 0
		for _, d := range r.devices {
			seen := map[int64]bool{}
			for _, s := range r.seqs(d) {
				seen[s] = true
			}
			n += len(seen)
		}
		return n
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return arrived()+lost >= 2*count }, "the recovered messages delivered")
	t.Logf("%d recovered and delivered, %d lost", arrived(), lost)
	if got := arrived() + lost; got != 2*count {
		t.Errorf("%d delivered + %d lost = %d, want %d", arrived(), lost, got, 2*count)
	}
	for _, d := range r.devices {
		var prev int64
		for _, s := range r.seqs(d) {
			if s <= prev {
				t.Errorf("%s: seq %d after %d", d.DeviceName, s, prev)
			}
			prev = s
		}
	}
}

// truncateKeepingRoot cuts a bbolt file to half its size, or just past its
// root page when that lies in the second half: a truncation that takes
// pages of the message log but leaves the page holding the log's header
// (its seq counter), without which the salvage cannot know how many
// messages were lost. It fails the test if the file was not damaged.
func truncateKeepingRoot(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	var root, txid, pages uint64
	ps := int64(ne.Uint32(data[16+8:]))
	for m := range int64(2) {
		meta := data[m*ps+16:]
		if tx := ne.Uint64(meta[48:]); tx >= txid {
			root, pages, txid = ne.Uint64(meta[16:]), ne.Uint64(meta[40:]), tx
		}
	}
	size := max(int64(len(data))/2/ps, int64(root)+1) * ps
	if size >= int64(pages)*ps {
		t.Fatalf("the root page %d is the file's last (%d pages): no truncation keeps it and damages the file", root, pages)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	t.Logf("spool file truncated from %d to %d bytes (root page %d)", len(data), size, root)
}
