package cloudsim_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

func TestKnobRefuse(t *testing.T) {
	sim, _ := aliyunSim(t)
	cr := sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 3, "")
	rc := fromCreds(cr, 300)
	for _, code := range []byte{1, 2, 3, 4, 5} {
		if err := sim.Refuse(code); err != nil {
			t.Fatal(err)
		}
		if got := rawConnackCode(t, sim.Addr(cloudsim.TCP), nil, rc); got != code {
			t.Errorf("Refuse(%d): client got %d", code, got)
		}
	}
	// Observers are not refused, so a test can keep watching.
	mustObserve(t, sim, "#")
	sim.Accept()
	if got := rawConnackCode(t, sim.Addr(cloudsim.TCP), nil, rc); got != 0 {
		t.Errorf("after Accept: code %d", got)
	}
	for _, bad := range []byte{0, 6, 0x80} {
		if err := sim.Refuse(bad); err == nil {
			t.Errorf("Refuse(%d) accepted", bad)
		}
	}
	if st := sim.Stats(); st.ConnectsRefused[3] != 1 || st.ConnectsRefused[5] != 1 {
		t.Errorf("refused by code %v", st.ConnectsRefused)
	}
}

func TestKnobDrop(t *testing.T) {
	sim, _ := aliyunSim(t)
	obs := mustObserve(t, sim, "#")
	c1 := aliTCP(t, sim, aliDN, aliSecret)
	c2 := aliTCP(t, sim, aliDN2, aliSecret2)
	if n := sim.Drop(); n != 2 {
		t.Errorf("Drop closed %d connections, want 2", n)
	}
	waitLost(t, c1)
	waitLost(t, c2)
	waitStats(t, sim, "no device connected", func(s cloudsim.Stats) bool { return s.Connected == 0 })
	// The observer is still there, and devices may come back.
	c3 := aliTCP(t, sim, aliDN, aliSecret)
	mustPublish(t, c3, userTopic(aliDN, "data"), 1, "back")
	if m := nextMsg(t, obs); string(m.Payload()) != "back" {
		t.Errorf("observer got %q", m.Payload())
	}
	if st := sim.Stats(); st.Takeovers != 0 {
		t.Errorf("a drop counted as a takeover")
	}
}

func TestKnobStall(t *testing.T) {
	sim, _ := aliyunSim(t)
	obs := mustObserve(t, sim, "#")
	c := aliTCP(t, sim, aliDN, aliSecret)
	topic := userTopic(aliDN, "data")
	sim.Stall(true)
	stalled := c.Publish(topic, 1, false, "swallowed")
	waitStats(t, sim, "one stalled message", func(s cloudsim.Stats) bool { return s.Stalled == 1 })
	sim.Stall(false)
	mustPublish(t, c, topic, 1, "acked")
	// PUBACKs go out in order on one connection: had the stalled message
	// been acknowledged, its PUBACK would have arrived first.
	select {
	case <-stalled.Done():
		t.Fatalf("stalled publish completed (err %v)", stalled.Error())
	default:
	}
	if !c.IsConnectionOpen() {
		t.Error("stall closed the connection")
	}
	recs := sim.Messages()
	if len(recs) != 1 || string(recs[0].Payload) != "acked" {
		t.Errorf("records %d, want only the acked message", len(recs))
	}
	if st := sim.StalledMessages(); len(st) != 1 || string(st[0].Payload) != "swallowed" || st[0].Seq >= recs[0].Seq {
		t.Errorf("stalled records %+v", st)
	}
	if m := nextMsg(t, obs); string(m.Payload()) != "acked" {
		t.Errorf("observer first saw %q; a stalled message must not be delivered", m.Payload())
	}
}

func TestKnobDelay(t *testing.T) {
	sim, _ := aliyunSim(t)
	c := aliTCP(t, sim, aliDN, aliSecret)
	const d = 300 * time.Millisecond
	sim.Delay(d)
	if k := sim.Knobs(); k.Delay != d || k.DelayMS != 300 {
		t.Errorf("knobs %+v", k)
	}
	start := time.Now()
	mustPublish(t, c, userTopic(aliDN, "data"), 1, "slow")
	if el := time.Since(start); el < d {
		t.Errorf("PUBACK after %v, want at least %v", el, d)
	}
	sim.Delay(0)
	mustPublish(t, c, userTopic(aliDN, "data"), 1, "fast")
	if n := len(sim.Messages()); n != 2 {
		t.Errorf("%d records, want 2", n)
	}
}

func TestKnobDownUp(t *testing.T) {
	sim, _ := aliyunSim(t)
	pki := pkiOf(t, sim)
	addrs := map[string]string{}
	for _, k := range []string{cloudsim.TCP, cloudsim.TLS, cloudsim.WS, cloudsim.WSS} {
		addrs[k] = sim.Addr(k)
	}
	obs := mustObserve(t, sim, "#")
	c := aliTCP(t, sim, aliDN, aliSecret)
	if err := sim.Down(); err != nil {
		t.Fatal(err)
	}
	waitLost(t, c)
	waitLost(t, obs)
	if sim.Connected(aliPK, aliDN) {
		t.Error("device still connected while down")
	}
	for k, a := range addrs {
		if nc, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			nc.Close()
			t.Errorf("%s %s accepts TCP connections while down", k, a)
		}
	}
	if !sim.Knobs().Down {
		t.Error("Knobs().Down false")
	}
	if err := sim.Down(); err != nil {
		t.Errorf("second Down: %v", err)
	}
	if err := sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	for k, a := range addrs {
		if got := sim.Addr(k); got != a {
			t.Errorf("%s address after Up %s, want %s", k, got, a)
		}
	}
	aliTCP(t, sim, aliDN, aliSecret)
	mustConnect(t, urlFor(sim, cloudsim.WSS), sign(t, secrets.Aliyun, aliPK, aliDN2, aliSecret2, 2, ""), withTLS(pki.ClientTLS()), withKeepAlive(secondsDuration(300)))
	if err := sim.Up(t.Context()); err != nil {
		t.Errorf("second Up: %v", err)
	}
}

func TestLifecycle(t *testing.T) {
	cfg := cloudsim.Config{Dialect: secrets.EnOS, Listen: "127.0.0.1:0", Devices: enosDevices()}
	sim, err := cloudsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Down(); !errors.Is(err, cloudsim.ErrNotStarted) {
		t.Errorf("Down before Start: %v", err)
	}
	if sim.Addr(cloudsim.TCP) != "" {
		t.Error("address before Start")
	}
	if err := sim.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(t.Context()); err == nil {
		t.Error("second Start accepted")
	}
	if sim.Addr(cloudsim.TLS) != "" {
		t.Error("address of an unconfigured transport")
	}
	c := mustConnect(t, urlFor(sim, cloudsim.TCP), sign(t, secrets.EnOS, enosPK, enosDK, enosSecret, 2, ""))
	if err := sim.Close(); err != nil {
		t.Fatal(err)
	}
	waitLost(t, c)
	if err := sim.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := sim.Up(t.Context()); !errors.Is(err, cloudsim.ErrClosed) {
		t.Errorf("Up after Close: %v", err)
	}
	if err := sim.WaitStats(t.Context(), func(s cloudsim.Stats) bool { return s.Connected == 0 }); err != nil {
		t.Error(err)
	}

	// Bad configurations.
	for name, bad := range map[string]cloudsim.Config{
		"no dialect":          {Listen: "127.0.0.1:0"},
		"no listener":         {Dialect: secrets.Aliyun},
		"tls without config":  {Dialect: secrets.Aliyun, TLSListen: "127.0.0.1:0"},
		"observer no pass":    {Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", ObserverUser: "o"},
		"observer with &":     {Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", ObserverUser: "a&b", ObserverPassword: secrets.NewSecret("p")},
		"invalid device name": {Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", Devices: []cloudsim.Device{{ProductKey: aliPK, DeviceName: "x"}}},
	} {
		if _, err := cloudsim.New(bad); err == nil {
			t.Errorf("%s: New accepted", name)
		}
	}

	// Run returns nil on cancellation.
	sim2, err := cloudsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel(t)
	done := make(chan error, 1)
	go func() { done <- sim2.Run(ctx) }()
	if err := sim2.WaitStats(waitCtx(t), func(cloudsim.Stats) bool { return sim2.Addr(cloudsim.TCP) != "" }); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
