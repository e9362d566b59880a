package gateway

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/localbroker"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// downRig is a simulated cloud of one dialect and a gateway with its
// metrics server and a captured log, for the downlink delivery rules
// (docs/architecture.md §4.1). Its devices log in locally with the password
// "pw-<deviceName>".
type downRig struct {
	t     *testing.T
	pk    string
	sim   *cloudsim.Sim
	gw    *Gateway
	local string
	log   *testutil.SyncBuffer
}

func newDownRig(t *testing.T, d secrets.Dialect, names ...string) *downRig {
	t.Helper()
	r := &downRig{t: t, pk: "a1DownProd1", log: &testutil.SyncBuffer{}}
	if d == secrets.EnOS {
		r.pk = "DownEnosPK"
	}
	var simDevs []cloudsim.Device
	var regDevs []secrets.Device
	for i, dn := range names {
		sec := secrets.NewSecret(fmt.Sprintf("downsecret-%03d-0123456789abcdef", i))
		simDevs = append(simDevs, cloudsim.Device{ProductKey: r.pk, DeviceName: dn, Secret: sec})
		regDevs = append(regDevs, secrets.Device{ProductKey: r.pk, DeviceName: dn, DeviceSecret: sec})
	}
	sim, err := cloudsim.New(cloudsim.Config{Dialect: d, Listen: "127.0.0.1:0", Devices: simDevs, DeviceRate: cloudsim.RateUnlimited})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	r.sim = sim

	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0"}
	cfg.Cloud.Dialect = d
	cfg.Cloud.Endpoint = "tcp://" + sim.Addr(cloudsim.TCP)
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Shutdown.Timeout = config.Duration(15 * time.Second) // roomy: under -race on a loaded CI box a part can take seconds to stop
	metSeedRegistryDialect(t, cfg, d, regDevs)

	logger := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	gw, err := New(cfg, Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	cancel, done := runReady(t, gw)
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(40 * time.Second):
			t.Error("gateway did not stop within 40 s")
		}
	})
	r.gw = gw
	for id, a := range gw.Addrs() {
		if strings.HasPrefix(id, "tcp://") {
			r.local = a.String()
		}
	}
	for _, dn := range names {
		testutil.Eventually(t, 20*time.Second, func() bool { return sim.Connected(r.pk, dn) }, "cloud session of %s", dn)
	}
	return r
}

// metSeedRegistryDialect registers devs under one product of dialect d,
// each with the local password "pw-<deviceName>".
func metSeedRegistryDialect(t *testing.T, cfg *config.Config, d secrets.Dialect, devs []secrets.Device) {
	t.Helper()
	reg := openTestRegistry(t, cfg)
	defer reg.Close()
	if _, err := reg.PutProduct(secrets.Product{ProductKey: devs[0].ProductKey, Dialect: d}); err != nil {
		t.Fatal(err)
	}
	for _, dev := range devs {
		if err := reg.AddDevice(dev); err != nil {
			t.Fatal(err)
		}
		if err := reg.SetLocalPassword(dev.ProductKey, dev.DeviceName, secrets.NewSecret("pw-"+dev.DeviceName)); err != nil {
			t.Fatal(err)
		}
	}
}

// received is what a device client got, in arrival order.
type received struct {
	mu   sync.Mutex
	msgs []mqtt.Message
}

func (r *received) add(_ mqtt.Client, m mqtt.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
}

func (r *received) all() []mqtt.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]mqtt.Message(nil), r.msgs...)
}

// connect logs a device in with its local password, sending no SUBSCRIBE;
// every message goes to got.
func (r *downRig) connect(dn, clientID string, clean bool, got *received) mqtt.Client {
	r.t.Helper()
	o := mqtt.NewClientOptions().AddBroker("tcp://" + r.local).SetClientID(clientID).
		SetUsername(dn + "&" + r.pk).SetPassword("pw-" + dn).SetProtocolVersion(4).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(got.add)
	c := mqtt.NewClient(o)
	before := r.metric("edgegw_broker_connects_total")
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		r.t.Fatalf("connect %s: %v", dn, tok.Error())
	}
	r.t.Cleanup(func() { c.Disconnect(0) })
	// The broker counts the connection once Deliver can reach it.
	testutil.Eventually(r.t, 10*time.Second, func() bool { return r.metric("edgegw_broker_connects_total") > before },
		"connection of %s established", clientID)
	return c
}

func (r *downRig) metric(name string, labels ...string) float64 {
	r.t.Helper()
	code, body, err := get("http://" + r.gw.MetricsAddr().String() + "/metrics")
	if err != nil || code != http.StatusOK {
		r.t.Fatalf("GET /metrics: %d %v", code, err)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		r.t.Fatalf("parse /metrics: %v", err)
	}
	v, ok := scrape{raw: body, mfs: mfs}.value(name, labels...)
	if !ok {
		r.t.Fatalf("series %s%v missing from /metrics:\n%s", name, labels, body)
	}
	return v
}

// dropLines returns the log lines about dropped downlinks.
func (r *downRig) dropLines() []string {
	var out []string
	for line := range strings.Lines(r.log.String()) {
		if strings.Contains(line, "downlink dropped") {
			out = append(out, line)
		}
	}
	return out
}

// TestDownlinkDroppedNotSubscribed: an Alibaba device without _ss=1 that
// has not subscribed gets nothing; each drop is counted under its reason,
// and one warning names device, topic and reason (at most one per device
// and minute). The cloud session calls gateway.downlink for every message
// it receives; the test calls it the same way, because the simulated
// cloud, like Alibaba, only sends such a session topics it subscribed.
func TestDownlinkDroppedNotSubscribed(t *testing.T) {
	r := newDownRig(t, secrets.Aliyun, "plc-1", "plc-2")
	var got received
	r.connect("plc-1", "plc-1", true, &got)
	id := secrets.DeviceID{ProductKey: r.pk, DeviceName: "plc-1"}
	topic := "/sys/" + r.pk + "/plc-1/thing/service/property/set"
	for i := range 3 {
		r.gw.downlink(id, topic, fmt.Appendf(nil, `{"id":"%d"}`, i), 1)
	}
	// The other device has no local session at all.
	r.gw.downlink(secrets.DeviceID{ProductKey: r.pk, DeviceName: "plc-2"}, "/sys/"+r.pk+"/plc-2/thing/service/property/set", []byte(`{}`), 1)

	if n := r.metric("edgegw_downlink_dropped_total", "reason", "not_subscribed"); n != 3 {
		t.Errorf("dropped{reason=not_subscribed} = %v, want 3", n)
	}
	if n := r.metric("edgegw_downlink_dropped_total", "reason", "not_connected"); n != 1 {
		t.Errorf("dropped{reason=not_connected} = %v, want 1", n)
	}
	for _, reason := range []string{"inflight_full", "topic_not_allowed", "not_running"} {
		if n := r.metric("edgegw_downlink_dropped_total", "reason", reason); n != 0 {
			t.Errorf("dropped{reason=%s} = %v, want 0", reason, n)
		}
	}
	lines := r.dropLines()
	var plc1 []string
	for _, l := range lines {
		if strings.Contains(l, "device="+r.pk+"/plc-1 ") {
			plc1 = append(plc1, l)
		}
	}
	if len(plc1) != 1 || len(lines) != 2 {
		t.Fatalf("drop lines = %q, want one per device", lines)
	}
	for _, want := range []string{"level=WARN", "reason=not_subscribed", "topic=" + topic, "qos=1", "_ss=1"} {
		if !strings.Contains(plc1[0], want) {
			t.Errorf("drop line %q does not contain %q", plc1[0], want)
		}
	}
	if msgs := got.all(); len(msgs) != 0 {
		t.Errorf("unsubscribed device received %d messages", len(msgs))
	}
}

// TestDownlinkServerSubscribedAtCloudQoS: EnOS pushes commands without a
// SUBSCRIBE (issue #15: the Node SDK's service invoke, measure-point set
// and down_raw were all dropped); a device that never subscribed gets each
// one, at the QoS the cloud used, and nothing is counted as dropped.
func TestDownlinkServerSubscribedAtCloudQoS(t *testing.T) {
	r := newDownRig(t, secrets.EnOS, "meter-1")
	var got received
	r.connect("meter-1", "meter-1", true, &got)
	sys := "/sys/" + r.pk + "/meter-1/"
	sent := []struct {
		topic string
		qos   byte
	}{
		{sys + "thing/service/restart", 1},
		{sys + "thing/service/measurepoint/set", 0},
		{sys + "thing/model/down_raw", 1},
	}
	for i, s := range sent {
		testutil.Eventually(t, 10*time.Second, func() bool {
			return r.sim.Publish(r.pk, "meter-1", s.topic, fmt.Appendf(nil, `{"id":"%d"}`, i), s.qos) == nil
		}, "cloud publish on %s", s.topic)
		testutil.Eventually(t, 10*time.Second, func() bool { return len(got.all()) > i }, "delivery on %s", s.topic)
	}
	msgs := got.all()
	if len(msgs) != len(sent) {
		t.Fatalf("received %d messages, want %d", len(msgs), len(sent))
	}
	for i, m := range msgs {
		if m.Topic() != sent[i].topic || m.Qos() != sent[i].qos {
			t.Errorf("message %d: %s at QoS %d, want %s at QoS %d", i, m.Topic(), m.Qos(), sent[i].topic, sent[i].qos)
		}
	}
	for _, reason := range downlinkDropReasons {
		if n := r.metric("edgegw_downlink_dropped_total", "reason", reason.label); n != 0 {
			t.Errorf("dropped{reason=%s} = %v, want 0", reason.label, n)
		}
	}
	if lines := r.dropLines(); len(lines) != 0 {
		t.Errorf("drop lines: %q", lines)
	}
}

// TestDownlinkQueuedForOfflinePersistentSession: a device offline with a
// persistent session gets the cloud's QoS 1 messages queued, up to the
// broker's inflight bound, and delivered when it resumes; what exceeds
// the bound, and QoS 0, is dropped and counted with its reason.
func TestDownlinkQueuedForOfflinePersistentSession(t *testing.T) {
	r := newDownRig(t, secrets.EnOS, "meter-1")
	var first received
	c := r.connect("meter-1", "meter-1-fw", false, &first)
	c.Disconnect(0)
	testutil.Eventually(t, 10*time.Second, func() bool {
		return r.metric("edgegw_broker_clients") == 0
	}, "local connection closed")

	topic := "/sys/" + r.pk + "/meter-1/thing/service/measurepoint/set"
	bound := int(localbroker.DefaultMaxInflight)
	for i := range bound + 2 {
		testutil.Eventually(t, 10*time.Second, func() bool {
			return r.sim.Publish(r.pk, "meter-1", topic, fmt.Appendf(nil, `{"id":"%d"}`, i), 1) == nil
		}, "cloud publish %d", i)
	}
	if err := r.sim.Publish(r.pk, "meter-1", topic, []byte(`{"id":"qos0"}`), 0); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		return r.metric("edgegw_downlink_dropped_total", "reason", "inflight_full") == 2 &&
			r.metric("edgegw_downlink_dropped_total", "reason", "not_connected") == 1
	}, "2 drops at the inflight bound and the QoS 0 message dropped as not_connected")

	var resumed received
	r.connect("meter-1", "meter-1-fw", false, &resumed)
	testutil.Eventually(t, 20*time.Second, func() bool { return len(resumed.all()) >= bound }, "queued messages delivered on resume")
	seen := map[string]bool{}
	for _, m := range resumed.all() {
		if m.Topic() != topic || m.Qos() != 1 {
			t.Errorf("resumed session got %s at QoS %d", m.Topic(), m.Qos())
		}
		seen[string(m.Payload())] = true
	}
	if len(seen) != bound || seen[`{"id":"qos0"}`] {
		t.Errorf("resumed session got %d distinct messages (QoS 0 among them: %v), want the %d queued", len(seen), seen[`{"id":"qos0"}`], bound)
	}
	if lines := r.dropLines(); len(lines) != 1 {
		t.Errorf("drop lines = %q, want one for the device", lines)
	}
}
