package gateway_test

import (
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// connectLinkSDK logs a device in the way Link SDK 4.1.0 does (docs/protocol.md
// §9): its extension parameters in the signed clientId, the fixed 2050
// timestamp, and no SUBSCRIBE at all. Downlinks go to got.
func connectLinkSDK(t *testing.T, local string, d devsim.Device, got chan<- string) mqtt.Client {
	t.Helper()
	cr, err := secrets.Sign(secrets.SignParams{Dialect: secrets.Aliyun, ProductKey: d.ProductKey, DeviceName: d.DeviceName,
		ClientID: d.ProductKey + "." + d.DeviceName, Timestamp: "2524608000000", SecureMode: 3,
		Extra: []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "_v", Value: "sdk-c-4.1.0"}, {Key: "ext", Value: "3"}, {Key: "_conn", Value: "tls_1"}},
	}, d.Secret)
	if err != nil {
		t.Fatal(err)
	}
	o := mqtt.NewClientOptions().AddBroker("tcp://" + local).SetClientID(cr.ClientID).SetUsername(cr.Username).
		SetPassword(cr.Password.Reveal()).SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).
		SetConnectTimeout(10 * time.Second).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() + " " + string(m.Payload()) })
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("Link SDK device login: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// sessionParams returns the |…| block of the clientId the cloud sees on
// the device's session, without edgegw's own timestamp, or "" when the
// device has no session.
func sessionParams(sim *cloudsim.Sim, d devsim.Device) string {
	cid, ok := sim.SessionClientID(d.ProductKey, d.DeviceName)
	if !ok {
		return ""
	}
	_, block, _ := strings.Cut(cid, "|")
	var keep []string
	for _, kv := range strings.Split(strings.TrimSuffix(block, "|"), ",") {
		if !strings.HasPrefix(kv, "timestamp=") {
			keep = append(keep, kv)
		}
	}
	return strings.Join(keep, ",")
}

// Issue #15: firmware relying on server-side subscription (Link SDK 4.x,
// _ss=1) gets its downlinks through the gateway because the device's cloud
// session carries the params the device presented; before any login the
// product's default applies, and the device's own params survive a
// restart.
func TestCloudSessionCarriesConnectParams(t *testing.T) {
	r := newRig(t, 2, 2, nil)
	linkDev, pwDev := r.devices[0], r.devices[1]
	testutil.Eventually(t, 20*time.Second, func() bool {
		return sessionParams(r.sim, linkDev) == "securemode=3,signmethod=hmacsha256" &&
			sessionParams(r.sim, pwDev) == "securemode=3,signmethod=hmacsha256"
	}, "sessions without extension params (%q, %q)", sessionParams(r.sim, linkDev), sessionParams(r.sim, pwDev))

	// The product's firmware is known: its default applies to devices not
	// seen yet, from the next start.
	r.stop()
	reg := openRegistry(t, r)
	if _, err := reg.PutProduct(secrets.Product{ProductKey: testPK, Dialect: secrets.Aliyun,
		DefaultConnectParams: []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "ext", Value: "1"}}}); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	r.start()
	const withDefault = "securemode=3,signmethod=hmacsha256,_ss=1,ext=1"
	testutil.Eventually(t, 20*time.Second, func() bool {
		return sessionParams(r.sim, linkDev) == withDefault && sessionParams(r.sim, pwDev) == withDefault
	}, "sessions with the product default (%q, %q)", sessionParams(r.sim, linkDev), sessionParams(r.sim, pwDev))

	// The Link SDK device logs in: its session reconnects once with the
	// device's own params (not its transport hint, not its timestamp).
	got := make(chan string, 16)
	connectLinkSDK(t, r.local, linkDev, got)
	const linkSDK = "securemode=3,signmethod=hmacsha256,_ss=1,_v=sdk-c-4.1.0,ext=3"
	testutil.Eventually(t, 20*time.Second, func() bool { return sessionParams(r.sim, linkDev) == linkSDK },
		"session with the device's params (%q)", sessionParams(r.sim, linkDev))
	if cid, _ := r.sim.SessionClientID(linkDev.ProductKey, linkDev.DeviceName); strings.Contains(cid, "2524608000000") {
		t.Errorf("cloud session clientId %q carries the device's timestamp", cid)
	}
	// A device logging in with a local password presents no params: its
	// session keeps the product default.
	pw := devsimLogin(t, r.local, pwDev)
	pw.Disconnect(50)
	if p := sessionParams(r.sim, pwDev); p != withDefault {
		t.Errorf("password device's session params %q, want the default %q", p, withDefault)
	}

	// The cloud pushes a property set to the server-subscribed session, and
	// the device, which never subscribed, receives it.
	body := `{"id":"15","version":"1.0","method":"thing.service.property.set","params":{"on":1}}`
	testutil.Eventually(t, 20*time.Second, func() bool {
		return r.sim.Publish(linkDev.ProductKey, linkDev.DeviceName, linkDev.DownlinkTopic(), []byte(body), 1) == nil
	}, "cloud pushes the property set without a SUBSCRIBE")
	select {
	case m := <-got:
		if m != linkDev.DownlinkTopic()+" "+body {
			t.Errorf("device received %q", m)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the Link SDK device received no downlink")
	}

	// The device's params are stored: after a restart its session carries
	// them before the device logs in again.
	r.stop()
	r.start()
	testutil.Eventually(t, 20*time.Second, func() bool {
		return sessionParams(r.sim, linkDev) == linkSDK && sessionParams(r.sim, pwDev) == withDefault
	}, "params after a restart (%q, %q)", sessionParams(r.sim, linkDev), sessionParams(r.sim, pwDev))
}

// openRegistry opens the stopped rig's registry.
func openRegistry(t *testing.T, r *rig) *secrets.Registry {
	t.Helper()
	key, _, err := secrets.LoadOrCreateKey(r.cfg.EffectiveKeyFile(), nil)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := secrets.OpenRegistry(r.cfg.RegistryPath(), key, &secrets.RegistryOptions{PasswordIterations: secrets.MinPasswordIterations})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// devsimLogin logs a device in with its local password "pw-<deviceName>".
func devsimLogin(t *testing.T, local string, d devsim.Device) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker("tcp://" + local).SetClientID("pw-" + d.DeviceName).
		SetUsername(d.DeviceName + "&" + d.ProductKey).SetPassword("pw-" + d.DeviceName).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("password login of %s: %v", d.DeviceName, tok.Error())
	}
	return c
}
