package gateway_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

// Device-initiated activation (issue #15 item 9): firmware that holds only
// productKey + productSecret + deviceName/deviceKey activates itself
// through the gateway exactly as it would at the cloud (docs/protocol.md
// §6; EnOS dynamic activation, Alibaba MQTT dynamic registration).

// fwClient is a firmware-like MQTT 3.1.1 client on the local broker: it
// records every message the broker pushes without a SUBSCRIBE, when it
// arrived, and when the connection was lost.
type fwClient struct {
	c         mqtt.Client
	connected time.Time // when the CONNACK had been processed
	mu        sync.Mutex
	msgs      []fwMsg
	lost      chan struct{}
}

type fwMsg struct {
	topic   string
	payload []byte
	at      time.Time
}

// fwConnect connects with the given credentials to broker ("tcp://…" or
// "tls://…"; tlsCfg for the latter).
func fwConnect(t *testing.T, broker string, tlsCfg *tls.Config, cid, user, pw string) (*fwClient, error) {
	t.Helper()
	f := &fwClient{lost: make(chan struct{})}
	var lostOnce sync.Once
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID(cid).SetUsername(user).SetPassword(pw).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetKeepAlive(60 * time.Second).SetCleanSession(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			f.mu.Lock()
			f.msgs = append(f.msgs, fwMsg{m.Topic(), append([]byte(nil), m.Payload()...), time.Now()})
			f.mu.Unlock()
		}).
		SetConnectionLostHandler(func(mqtt.Client, error) { lostOnce.Do(func() { close(f.lost) }) })
	if tlsCfg != nil {
		o.SetTLSConfig(tlsCfg)
	}
	f.c = mqtt.NewClient(o)
	tok := f.c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	f.connected = time.Now()
	t.Cleanup(func() { f.c.Disconnect(0) })
	return f, nil
}

// await returns the first pushed message on topic, waiting up to d.
func (f *fwClient) await(t *testing.T, topic string, d time.Duration) fwMsg {
	t.Helper()
	var got fwMsg
	testutil.Eventually(t, d, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, m := range f.msgs {
			if m.topic == topic {
				got = m
				return true
			}
		}
		return false
	}, "a message on %s", topic)
	return got
}

func (f *fwClient) publish(t *testing.T, topic, payload string) {
	t.Helper()
	tok := f.c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish on %s: %v", topic, tok.Error())
	}
}

// startLogged starts the rig's gateway with its log lines in buf.
func startLogged(t *testing.T, r *rig, buf *testutil.SyncBuffer) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.startWith(gateway.Options{Logger: log})
}

// enosCreds signs an EnOS CONNECT the way the C SDK does (clientId pk.dk,
// the constant 2050 timestamp).
func enosCreds(t *testing.T, pk, dk string, secureMode int, secret string) secrets.Credentials {
	t.Helper()
	cr, err := secrets.Sign(secrets.SignParams{Dialect: secrets.EnOS, ProductKey: pk, DeviceName: dk,
		ClientID: pk + "." + dk, Timestamp: "2524608000000", SignMethod: secrets.SHA256, SecureMode: secureMode},
		secrets.NewSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	return cr
}

// activateInfo decodes an EnOS activate/info payload.
func activateInfo(t *testing.T, payload []byte) (id, pk, dk, secret string) {
	t.Helper()
	var m struct {
		ID     string `json:"id"`
		Method string `json:"method"`
		Params struct {
			ProductKey   string `json:"productKey"`
			DeviceKey    string `json:"deviceKey"`
			DeviceSecret string `json:"deviceSecret"`
		} `json:"params"`
	}
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatalf("activate/info payload: %v", err)
	}
	if m.Method != "thing.activate.info" {
		t.Errorf("activate/info method %q", m.Method)
	}
	return m.ID, m.Params.ProductKey, m.Params.DeviceKey, m.Params.DeviceSecret
}

// TestDeviceActivationEnOS: an EnOS device holding only pk, productSecret
// and dk logs in with securemode=3 through the gateway, receives
// activate/info with the deviceSecret the cloud issued within 200 ms of the
// CONNACK (the C SDK's wait), may answer activate/info_reply (dropped), and
// then logs in with securemode=2 and publishes to the cloud. A second
// securemode=3 login (a firmware reset) gets the same secret without a
// second cloud activation; a wrong product signature is refused and
// logged without secrets.
func TestDeviceActivationEnOS(t *testing.T) {
	c := newActCloud(t, secrets.EnOS, false)
	const dk = "fw01"
	c.addAwaiting(t, actProductKey, dk)
	r := &rig{t: t, sim: c.sim, cfg: c.cfg}
	var logs testutil.SyncBuffer
	startLogged(t, r, &logs)
	broker := "tcp://" + r.local
	infoTopic := "/ext/session/" + c.pk + "/" + dk + "/thing/activate/info"

	act := enosCreds(t, c.pk, dk, 3, actProductKey)
	f, err := fwConnect(t, broker, nil, act.ClientID, act.Username, act.Password.Reveal())
	if err != nil {
		t.Fatalf("securemode=3 login refused: %v", err)
	}
	m := f.await(t, infoTopic, 10*time.Second)
	if lag := m.at.Sub(f.connected); lag > 200*time.Millisecond {
		t.Errorf("activate/info arrived %v after the CONNACK, want within 200 ms", lag)
	}
	msgID, pk, gotDK, secret := activateInfo(t, m.payload)
	issued := c.sim.Issued(c.pk, dk)
	if len(issued) != 1 || secret != issued[0].Reveal() || pk != c.pk || gotDK != dk {
		t.Fatalf("activate/info for %s/%s; %d secrets issued by the cloud; pushed secret is the issued one: %t",
			pk, gotDK, len(issued), len(issued) == 1 && secret == issued[0].Reveal())
	}
	stored, err := r.gw.Registry().GetDevice(c.pk, dk)
	if err != nil || !stored.DeviceSecret.Equal(issued[0]) {
		t.Fatalf("registry does not hold the pushed secret (err %v)", err)
	}
	// The Java SDK answers; the reply is accepted and goes nowhere.
	f.publish(t, infoTopic+"_reply", fmt.Sprintf(`{"id":%q,"code":200,"data":null,"message":"ok"}`, msgID))
	// Anything else is refused on an activation connection.
	if tok := f.c.Subscribe("/sys/"+c.pk+"/"+dk+"/thing/service/#", 1, nil); tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		if codes := tok.(*mqtt.SubscribeToken).Result(); codes["/sys/"+c.pk+"/"+dk+"/thing/service/#"] != 0x80 {
			t.Errorf("activation connection got a subscription granted: %v", codes)
		}
	}
	f.publish(t, "/sys/"+c.pk+"/"+dk+"/thing/measurepoint/post", `{"id":"0","params":{"measurepoints":{"seq":0}}}`)
	f.c.Disconnect(100)

	// The normal login with the received secret; data reaches the cloud.
	login := enosCreds(t, c.pk, dk, 2, secret)
	n, err := fwConnect(t, broker, nil, login.ClientID, login.Username, login.Password.Reveal())
	if err != nil {
		t.Fatalf("securemode=2 login with the pushed secret refused: %v", err)
	}
	post := "/sys/" + c.pk + "/" + dk + "/thing/measurepoint/post"
	n.publish(t, post, `{"id":"1","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"seq":1}}}`)
	testutil.Eventually(t, 20*time.Second, func() bool {
		for _, rec := range c.sim.MessagesFor(c.pk, dk) {
			if rec.Topic == post && strings.Contains(string(rec.Payload), `"id":"1"`) {
				return true
			}
		}
		return false
	}, "the device's post at the cloud")
	for _, rec := range c.sim.MessagesFor(c.pk, dk) {
		if strings.Contains(string(rec.Payload), `"seq":0`) || (rec.Topic == infoTopic+"_reply" && strings.Contains(string(rec.Payload), `"ok"`)) {
			t.Errorf("a publish from the activation connection reached the cloud: %s %s", rec.Topic, rec.Payload)
		}
	}
	n.c.Disconnect(100)

	// Firmware reset: it activates again and gets the same secret; the
	// cloud is not asked again (EnOS activates a device once).
	again, err := fwConnect(t, broker, nil, act.ClientID, act.Username, act.Password.Reveal())
	if err != nil {
		t.Fatalf("second securemode=3 login refused: %v", err)
	}
	_, _, _, secret2 := activateInfo(t, again.await(t, infoTopic, 10*time.Second).payload)
	if secret2 != secret {
		t.Error("second activation got a different secret")
	}
	if st := c.sim.Stats(); st.Activations != 1 {
		t.Errorf("cloud activations %d, want 1", st.Activations)
	}

	// A wrong product signature is refused, and logged without secrets.
	bad := enosCreds(t, c.pk, dk, 3, actWrongSecret)
	if _, err := fwConnect(t, broker, nil, bad.ClientID, bad.Username, bad.Password.Reveal()); err == nil ||
		!(strings.Contains(err.Error(), "not Authorized") || strings.Contains(err.Error(), "bad user name or password")) {
		t.Errorf("wrong product signature: err %v, want CONNACK 4 or 5", err)
	}
	logs.WaitFor(t, "wrong signature", 10*time.Second)
	r.stop()
	for _, s := range []string{actProductKey, actWrongSecret, secret, act.Password.Reveal(), bad.Password.Reveal()} {
		if strings.Contains(logs.String(), s) {
			t.Fatalf("a secret is in the gateway log")
		}
	}
}

// TestDeviceActivationCloudDown: while the cloud is unreachable a device
// activating itself is refused with CONNACK 3 (server unavailable: the
// firmware retries later) promptly; once the cloud is back, its next
// login makes the gateway activate it at once, not after the session's
// backoff (EnOS: at least 30 s after a failure).
func TestDeviceActivationCloudDown(t *testing.T) {
	c := newActCloud(t, secrets.EnOS, false)
	c.cfg.Cloud.BackoffMin = config.Duration(50 * time.Millisecond) // the EnOS floor of 30 s stays
	const dk = "fw02"
	c.addAwaiting(t, actProductKey, dk)
	if err := c.sim.Down(); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, sim: c.sim, cfg: c.cfg}
	var logs testutil.SyncBuffer
	startLogged(t, r, &logs)
	broker := "tcp://" + r.local
	act := enosCreds(t, c.pk, dk, 3, actProductKey)

	start := time.Now()
	_, err := fwConnect(t, broker, nil, act.ClientID, act.Username, act.Password.Reveal())
	if err == nil || !strings.Contains(err.Error(), "server Unavailable") {
		t.Fatalf("login while the cloud is down: err %v, want CONNACK 3", err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("refusal took %v", d)
	}
	if err := c.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	f, err := fwConnect(t, broker, nil, act.ClientID, act.Username, act.Password.Reveal())
	if err != nil {
		t.Fatalf("login after the cloud came back: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("activation on the device's login took %v; the session's backoff was not cut short", d)
	}
	_, _, _, secret := activateInfo(t, f.await(t, "/ext/session/"+c.pk+"/"+dk+"/thing/activate/info", 10*time.Second).payload)
	if issued := c.sim.Issued(c.pk, dk); len(issued) != 1 || issued[0].Reveal() != secret {
		t.Fatalf("%d secrets issued; pushed one is the issued one: %t", len(issued), len(issued) == 1 && issued[0].Reveal() == secret)
	}
	r.stop()
	if strings.Contains(logs.String(), secret) || strings.Contains(logs.String(), actProductKey) {
		t.Fatal("a secret is in the gateway log")
	}
}

// TestDeviceRegistrationAliyun: an Alibaba device registering itself
// (authType=register, signed with the productSecret over TLS, as the cloud
// requires) gets /ext/register with its deviceSecret and is disconnected,
// then logs in normally with it and publishes to the cloud. Registration
// over plain TCP is refused with CONNACK 3 like on the cloud, and a wrong
// product signature with CONNACK 5.
func TestDeviceRegistrationAliyun(t *testing.T) {
	c := newActCloud(t, secrets.Aliyun, false)
	local := testutil.NewPKI(t)
	certFile, keyFile := local.WriteCert(t, local.Server, "local")
	c.cfg.Broker.Listeners = append(c.cfg.Broker.Listeners, "tls://127.0.0.1:0")
	c.cfg.Broker.TLSCert, c.cfg.Broker.TLSKey = certFile, keyFile
	const dn = "fw03"
	c.addAwaiting(t, actProductKey, dn)
	r := &rig{t: t, sim: c.sim, cfg: c.cfg}
	var logs testutil.SyncBuffer
	startLogged(t, r, &logs)
	var tlsBroker string
	for id, a := range r.gw.Addrs() {
		if strings.HasPrefix(id, "tls://") {
			tlsBroker = "tls://" + a.String()
		}
	}
	tlsCfg := local.ClientTLS()

	reg := func(secret string) secrets.Credentials {
		pw, err := secrets.RegisterSign(secrets.HMACSHA256, c.pk, dn, "8151", secrets.NewSecret(secret))
		if err != nil {
			t.Fatal(err)
		}
		return secrets.Credentials{
			ClientID: dn + "." + c.pk + "|random=8151,authType=register,securemode=2,signmethod=hmacsha256|",
			Username: dn + "&" + c.pk, Password: secrets.NewSecret(strings.ToUpper(pw)),
		}
	}
	good := reg(actProductKey)
	if _, err := fwConnect(t, "tcp://"+r.local, nil, good.ClientID, good.Username, good.Password.Reveal()); err == nil ||
		!strings.Contains(err.Error(), "server Unavailable") {
		t.Errorf("registration over plain TCP: err %v, want CONNACK 3", err)
	}
	bad := reg(actWrongSecret)
	if _, err := fwConnect(t, tlsBroker, tlsCfg, bad.ClientID, bad.Username, bad.Password.Reveal()); err == nil ||
		!strings.Contains(err.Error(), "not Authorized") {
		t.Errorf("wrong product signature: err %v, want CONNACK 5", err)
	}

	f, err := fwConnect(t, tlsBroker, tlsCfg, good.ClientID, good.Username, good.Password.Reveal())
	if err != nil {
		t.Fatalf("registration refused: %v", err)
	}
	m := f.await(t, "/ext/register", 10*time.Second)
	select {
	case <-f.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the registration connection was not closed after /ext/register")
	}
	var got struct{ ProductKey, DeviceName, DeviceSecret string }
	if err := json.Unmarshal(m.payload, &got); err != nil {
		t.Fatal(err)
	}
	issued := c.sim.Issued(c.pk, dn)
	if len(issued) != 1 || got.DeviceSecret != issued[0].Reveal() || got.ProductKey != c.pk || got.DeviceName != dn {
		t.Fatalf("/ext/register for %s/%s; %d issued; pushed secret is the issued one: %t",
			got.ProductKey, got.DeviceName, len(issued), len(issued) == 1 && got.DeviceSecret == issued[0].Reveal())
	}

	login, err := secrets.Sign(secrets.SignParams{Dialect: secrets.Aliyun, ProductKey: c.pk, DeviceName: dn,
		ClientID: c.pk + "." + dn, Timestamp: "2524608000000", SecureMode: 2}, secrets.NewSecret(got.DeviceSecret))
	if err != nil {
		t.Fatal(err)
	}
	n, err := fwConnect(t, tlsBroker, tlsCfg, login.ClientID, login.Username, login.Password.Reveal())
	if err != nil {
		t.Fatalf("normal login with the registered secret: %v", err)
	}
	post := "/sys/" + c.pk + "/" + dn + "/thing/event/property/post"
	n.publish(t, post, `{"id":"7","version":"1.0","params":{"seq":7},"method":"thing.event.property.post"}`)
	testutil.Eventually(t, 20*time.Second, func() bool {
		for _, rec := range c.sim.MessagesFor(c.pk, dn) {
			if rec.Topic == post {
				return true
			}
		}
		return false
	}, "the device's post at the cloud")
	r.stop()
	for _, s := range []string{actProductKey, actWrongSecret, got.DeviceSecret, good.Password.Reveal()} {
		if strings.Contains(logs.String(), s) {
			t.Fatal("a secret is in the gateway log")
		}
	}
}
