package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

const testPK = "a1TestProd1"

// rig is a cloud simulator and a gateway in this process, on loopback, for
// tests and benchmarks.
type rig struct {
	t       testing.TB
	sim     *cloudsim.Sim
	cfg     *config.Config
	run     *gwtest.Running
	gw      *gateway.Gateway
	local   string // tcp host:port of the local broker
	devices []devsim.Device
	clock   uplink.Clock
}

// rigOptions shape a rig; the zero value of each field is a sensible default.
type rigOptions struct {
	devices int
	// passwords: the first this many devices also get the local password
	// "pw-<deviceName>".
	passwords int
	// simRate is cloudsim.Config.DeviceRate: 0 is the dialect's default
	// (Alibaba 30/s), cloudsim.RateUnlimited turns the limit off.
	simRate    float64
	maxRecords int
	nameFormat string // device names, default "dev-%03d"
	mutate     func(*config.Config)
	clock      uplink.Clock // the gateway's clock (default: the system's)
	opts       gateway.Options
}

// newRig starts a cloud simulator without rate limit with n devices and a
// gateway whose registry holds the same devices; the first `passwords`
// devices also get a local password "pw-<deviceName>".
func newRig(t *testing.T, n, passwords int, mutate func(*config.Config)) *rig {
	t.Helper()
	return newRigWith(t, rigOptions{devices: n, passwords: passwords, simRate: cloudsim.RateUnlimited, mutate: mutate})
}

func newRigWith(tb testing.TB, o rigOptions) *rig {
	tb.Helper()
	r := &rig{t: tb, clock: o.clock}
	if o.nameFormat == "" {
		o.nameFormat = "dev-%03d"
	}
	simDevs := make([]cloudsim.Device, o.devices)
	for i := range o.devices {
		sec := secrets.NewSecret(fmt.Sprintf("secret-%04d-0123456789abcdef", i))
		d := devsim.Device{Dialect: secrets.Aliyun, ProductKey: testPK, DeviceName: fmt.Sprintf(o.nameFormat, i), Secret: sec}
		r.devices = append(r.devices, d)
		simDevs[i] = cloudsim.Device{ProductKey: d.ProductKey, DeviceName: d.DeviceName, Secret: sec}
	}
	sim := gwtest.StartCloud(tb, cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", Devices: simDevs,
		DeviceRate: o.simRate, MaxRecords: o.maxRecords})
	r.sim = sim

	cfg := gwtest.Config(tb, sim)
	cfg.Cloud.BackoffMax = config.Duration(200 * time.Millisecond)
	if o.mutate != nil {
		o.mutate(cfg)
	}
	r.cfg = cfg
	seedRegistry(tb, cfg, r.devices, o.passwords)
	o.opts.Clock = o.clock
	r.startWith(o.opts)
	return r
}

func seedRegistry(tb testing.TB, cfg *config.Config, devs []devsim.Device, passwords int) {
	tb.Helper()
	reg := gwtest.OpenRegistry(tb, cfg)
	defer reg.Close()
	if _, err := reg.PutProduct(secrets.Product{ProductKey: testPK, Dialect: secrets.Aliyun}); err != nil {
		tb.Fatal(err)
	}
	for i, d := range devs {
		if err := reg.AddDevice(secrets.Device{ProductKey: d.ProductKey, DeviceName: d.DeviceName, DeviceSecret: d.Secret}); err != nil {
			tb.Fatal(err)
		}
		if i < passwords {
			if err := reg.SetLocalPassword(d.ProductKey, d.DeviceName, secrets.NewSecret("pw-"+d.DeviceName)); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

// start runs the gateway until the test ends (or stop is called).
func (r *rig) start() {
	r.t.Helper()
	r.startWith(gateway.Options{Clock: r.clock})
}

// startWith is start with the gateway's options given.
func (r *rig) startWith(opts gateway.Options) {
	r.t.Helper()
	r.run = gwtest.Start(r.t, r.cfg, opts)
	r.gw, r.local = r.run.Gateway, r.run.Addr("tcp")
}

// stop stops the gateway (a failure of its Run fails the test); start
// runs a new one on the same configuration and state.
func (r *rig) stop() { r.run.Stop() }

// fleet starts simulated devices against the local broker.
func (r *rig) fleet(cfg devsim.Config) *devsim.Fleet {
	r.t.Helper()
	cfg.Broker = "tcp://" + r.local
	f, err := devsim.Start(r.t.Context(), cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(f.Close)
	return f
}

// seqs returns the sequence numbers the cloud recorded for a device, in
// arrival order.
func (r *rig) seqs(d devsim.Device) []int64 {
	var out []int64
	for _, rec := range r.sim.MessagesFor(d.ProductKey, d.DeviceName) {
		if s := devsim.SeqOf(rec.Payload); s >= 0 {
			out = append(out, s)
		}
	}
	return out
}

// reconcile checks a device's arrivals against what the gateway
// acknowledged: every acknowledged seq arrived (lost = 0), new seqs arrive
// in increasing order (reordered = 0); repeats are duplicates.
func reconcile(t *testing.T, dev string, arrived []int64, acked map[int64]bool) (dups int) {
	t.Helper()
	seen := map[int64]bool{}
	var maxSeen int64
	for _, s := range arrived {
		if seen[s] {
			dups++
			continue
		}
		if s < maxSeen {
			t.Errorf("%s: seq %d arrived after %d (reordered)", dev, s, maxSeen)
		}
		seen[s] = true
		maxSeen = max(maxSeen, s)
	}
	var lost []int64
	for s := range acked {
		if !seen[s] {
			lost = append(lost, s)
		}
	}
	sort.Slice(lost, func(i, j int) bool { return lost[i] < lost[j] })
	if len(lost) > 0 {
		t.Errorf("%s: %d acknowledged messages never reached the cloud: %v", dev, len(lost), lost[:min(len(lost), 20)])
	}
	return dups
}

// ackLog records which posts the gateway acknowledged, per device.
type ackLog struct {
	mu    sync.Mutex
	acked map[string]map[int64]bool
}

// reconcileAll waits up to timeout for every message acks holds to be in
// the cloud, then reconciles each device (lost and reordered fail the
// test, duplicates are logged): it returns the acknowledged messages and
// the duplicates.
func (r *rig) reconcileAll(t *testing.T, acks *ackLog, timeout time.Duration) (total, dups int) {
	t.Helper()
	for _, d := range r.devices {
		want := acks.of(d.DeviceName)
		total += len(want)
		testutil.Eventually(t, timeout, func() bool {
			seen := map[int64]bool{}
			for _, s := range r.seqs(d) {
				seen[s] = true
			}
			for s := range want {
				if !seen[s] {
					return false
				}
			}
			return true
		}, "%s: every acknowledged message in the cloud", d.DeviceName)
		n := reconcile(t, d.DeviceName, r.seqs(d), want)
		if n > 0 {
			t.Logf("%s: %d duplicates", d.DeviceName, n)
		}
		dups += n
	}
	return total, dups
}

func newAckLog() *ackLog { return &ackLog{acked: map[string]map[int64]bool{}} }

func (a *ackLog) add(d devsim.Device, seq int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.acked[d.DeviceName]
	if m == nil {
		m = map[int64]bool{}
		a.acked[d.DeviceName] = m
	}
	m[seq] = true
}

func (a *ackLog) of(dn string) map[int64]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[int64]bool{}
	for k := range a.acked[dn] {
		out[k] = true
	}
	return out
}

// TestEndToEndInOrder: devices logging in with their cloud credentials and
// with local passwords publish through the gateway; every message reaches
// the cloud under the device's own identity, in order.
func TestEndToEndInOrder(t *testing.T) {
	r := newRig(t, 4, 2, nil)
	const count = 50
	devs := []devsim.Device{r.devices[0], r.devices[1], r.devices[2], r.devices[3]}
	devs[0].LocalPassword = secrets.NewSecret("pw-" + devs[0].DeviceName) // password login
	devs[1].LocalPassword = secrets.NewSecret("pw-" + devs[1].DeviceName)
	acks := newAckLog()
	r.fleet(devsim.Config{Devices: devs, QoS: 1, Window: 8, Count: count, OnAck: acks.add})
	for _, d := range devs {
		testutil.Eventually(t, 30*time.Second, func() bool { return len(r.seqs(d)) >= count }, "%s messages in the cloud", d.DeviceName)
	}
	for _, d := range devs {
		arrived := r.seqs(d)
		if dups := reconcile(t, d.DeviceName, arrived, acks.of(d.DeviceName)); dups != 0 {
			t.Errorf("%s: %d duplicates without any fault", d.DeviceName, dups)
		}
		for _, rec := range r.sim.MessagesFor(d.ProductKey, d.DeviceName) {
			if rec.Topic != d.UplinkTopic() {
				t.Errorf("%s: topic %q", d.DeviceName, rec.Topic)
			}
			if !strings.HasPrefix(rec.ClientID, d.DeviceName+"|") {
				t.Errorf("%s: cloud session clientId %q is not the device's own", d.DeviceName, rec.ClientID)
			}
		}
	}
}

// TestDownlinkReachesOnlyItsDevice: a property set the cloud sends to one
// device reaches that device and no other.
func TestDownlinkReachesOnlyItsDevice(t *testing.T) {
	r := newRig(t, 3, 0, nil)
	var mu sync.Mutex
	got := map[string][]string{}
	r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Count: 1, OnDownlink: func(d devsim.Device, topic string, payload []byte) {
		mu.Lock()
		defer mu.Unlock()
		got[d.DeviceName] = append(got[d.DeviceName], string(payload))
	}})
	target := r.devices[1]
	body := []byte(`{"id":"77","version":"1.0","method":"thing.service.property.set","params":{"setpoint":42}}`)
	// The device's local subscription is mirrored on its cloud session
	// asynchronously: the cloud can deliver once it is there.
	testutil.Eventually(t, 20*time.Second, func() bool {
		return r.sim.Publish(target.ProductKey, target.DeviceName, target.DownlinkTopic(), body, 1) == nil
	}, "downlink subscription mirrored to the cloud")
	testutil.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got[target.DeviceName]) > 0
	}, "downlink delivered")
	mu.Lock()
	defer mu.Unlock()
	if got[target.DeviceName][0] != string(body) {
		t.Errorf("payload %q", got[target.DeviceName][0])
	}
	for _, d := range r.devices {
		if d.DeviceName != target.DeviceName && len(got[d.DeviceName]) > 0 {
			t.Errorf("%s received another device's downlink: %v", d.DeviceName, got[d.DeviceName])
		}
	}
}

// TestLocalAuthAndNamespace: wrong credentials are refused with the right
// CONNACK code; a device cannot publish or subscribe outside its namespace.
func TestLocalAuthAndNamespace(t *testing.T) {
	r := newRig(t, 2, 2, nil)
	d0, d1 := r.devices[0], r.devices[1]
	connect := func(cid, user, pw string) (mqtt.Client, error) {
		o := mqtt.NewClientOptions().AddBroker("tcp://" + r.local).SetClientID(cid).SetUsername(user).SetPassword(pw).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return nil, errors.New("connect timed out")
		}
		if tok.Error() != nil {
			return nil, tok.Error()
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c, nil
	}
	signed, err := secrets.Sign(secrets.SignParams{Dialect: secrets.Aliyun, ProductKey: testPK, DeviceName: d0.DeviceName, Timestamp: "1", SecureMode: 3},
		secrets.NewSecret("not-the-secret"))
	if err != nil {
		t.Fatal(err)
	}
	refusals := []struct {
		name, cid, user, pw, want string
	}{
		{"wrong local password", "c1", d0.DeviceName + "&" + testPK, "wrong", "not Authorized"},
		{"unknown device", "c2", "nobody&" + testPK, "pw", "not Authorized"},
		{"malformed username", "c3", "just-a-name", "pw", "bad user name or password"},
		{"wrong signature", signed.ClientID, signed.Username, signed.Password.Reveal(), "not Authorized"},
	}
	for _, tt := range refusals {
		if _, err := connect(tt.cid, tt.user, tt.pw); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}

	c, err := connect("d0", d0.DeviceName+"&"+testPK, "pw-"+d0.DeviceName)
	if err != nil {
		t.Fatal(err)
	}
	// Subscribing to another device's topic is refused (0x80).
	tok := c.Subscribe(d1.DownlinkTopic(), 1, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	if codes := tok.(*mqtt.SubscribeToken).Result(); codes[d1.DownlinkTopic()] != 0x80 {
		t.Errorf("subscribe to another device's topic granted: %v", codes)
	}
	// Publishing into another device's namespace is acknowledged and
	// dropped (no reconnect loop for a 3.1.1 device); nothing reaches the
	// cloud. The device's own publish after it does.
	if tok := c.Publish(d1.UplinkTopic(), 1, false, `{"id":"1","params":{"seq":1}}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("forbidden publish not acknowledged: %v", tok.Error())
	}
	if tok := c.Publish(d0.UplinkTopic(), 1, false, `{"id":"2","params":{"seq":2}}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("own publish after the forbidden one: %v", tok.Error())
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.sim.MessagesFor(testPK, d0.DeviceName)) > 0 }, "own publish at the cloud")
	if !c.IsConnectionOpen() {
		t.Error("the forbidden publish closed the connection")
	}
	if n := len(r.sim.MessagesFor(testPK, d1.DeviceName)); n != 0 {
		t.Errorf("cloud received %d messages for %s from another device", n, d1.DeviceName)
	}
}

// TestRestartWhileOfflineDelivers: messages acknowledged while the cloud is
// down survive a gateway restart and are delivered in order afterwards.
func TestRestartWhileOfflineDelivers(t *testing.T) {
	r := newRig(t, 2, 0, nil)
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	const count = 30
	acks := newAckLog()
	f := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Window: 4, Count: count, OnAck: acks.add})
	testutil.Eventually(t, 20*time.Second, func() bool { return f.Stats().Acked >= 2*count }, "all posts acknowledged by the gateway while offline")
	f.Close()
	r.stop()
	if n := len(r.sim.Messages()); n != 0 {
		t.Fatalf("cloud is down but recorded %d messages", n)
	}
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	r.start() // same state directory: the spool is found again
	for _, d := range r.devices {
		testutil.Eventually(t, 30*time.Second, func() bool { return len(r.seqs(d)) >= count }, "%s backlog drained after restart", d.DeviceName)
		reconcile(t, d.DeviceName, r.seqs(d), acks.of(d.DeviceName))
	}
}

// TestMosquittoClientsAsDevices: Debian's mosquitto_pub and mosquitto_sub,
// as third-party device firmware, publish through the gateway and receive a
// downlink.
func TestMosquittoClientsAsDevices(t *testing.T) {
	pub, sub := testutil.Peer(t, "mosquitto_pub"), testutil.Peer(t, "mosquitto_sub")
	r := newRig(t, 2, 2, nil)
	d := r.devices[0]
	host, port, _ := net.SplitHostPort(r.local)
	user, pw := d.DeviceName+"&"+testPK, "pw-"+d.DeviceName

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	subCmd := exec.CommandContext(ctx, sub, "-h", host, "-p", port, "-i", "sub-"+d.DeviceName, "-u", user, "-P", pw,
		"-V", "mqttv311", "-q", "1", "-t", d.DownlinkTopic(), "-C", "1", "-W", "25")
	var subOut strings.Builder
	subCmd.Stdout = &subOut
	if err := subCmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		out, err := exec.CommandContext(ctx, pub, "-h", host, "-p", port, "-i", "pub-"+d.DeviceName, "-u", user, "-P", pw,
			"-V", "mqttv311", "-q", "1", "-t", d.UplinkTopic(), "-m", fmt.Sprintf(`{"id":"%d","params":{"seq":%d}}`, i, i)).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, out)
		}
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.seqs(d)) >= 3 }, "mosquitto_pub messages in the cloud")
	if got := r.seqs(d); fmt.Sprint(got) != "[1 2 3]" {
		t.Errorf("cloud got seqs %v, want [1 2 3]", got)
	}
	body := []byte(`{"id":"9","params":{"setpoint":1}}`)
	testutil.Eventually(t, 20*time.Second, func() bool {
		return r.sim.Publish(d.ProductKey, d.DeviceName, d.DownlinkTopic(), body, 1) == nil
	}, "mosquitto_sub subscription mirrored to the cloud")
	if err := subCmd.Wait(); err != nil {
		t.Fatalf("mosquitto_sub: %v (output %q)", err, subOut.String())
	}
	if strings.TrimSpace(subOut.String()) != string(body) {
		t.Errorf("mosquitto_sub got %q", subOut.String())
	}
	// A wrong password is refused.
	out, err := exec.CommandContext(ctx, pub, "-h", host, "-p", port, "-u", user, "-P", "wrong", "-V", "mqttv311",
		"-t", d.UplinkTopic(), "-m", "x").CombinedOutput()
	if err == nil || !strings.Contains(strings.ToLower(string(out)), "not authori") {
		t.Errorf("mosquitto_pub with a wrong password: err %v, output %q", err, out)
	}
}
