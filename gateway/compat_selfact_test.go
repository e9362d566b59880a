package gateway_test

// Firmware compatibility scenarios that need slices not on main yet:
// device-initiated EnOS activation and Alibaba registration through the
// gateway, and NTP requests and RRPC replies overtaking a device's backlog.
// (The _ss=1 and custom-RRPC conversations are in testdata/firmware.)

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// connectOK dials the gateway with cp and fails the test unless CONNACK 0.
func connectOK(t *testing.T, addr string, cp packets.ConnectParams, what string) *fwConn {
	t.Helper()
	c, ack := dialFirmware(t, addr, cp, 4)
	if ack.ReasonCode != 0 {
		t.Fatalf("%s: CONNACK %d for clientId %q, want 0", what, ack.ReasonCode, cp.ClientIdentifier)
	}
	return c
}

// arrived waits until the cloud has a message of the device on topic.
func arrived(t *testing.T, r *rig, pk, dn, topic string) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, func() bool {
		return slices.ContainsFunc(r.sim.MessagesFor(pk, dn), func(rec cloudsim.Record) bool { return rec.Topic == topic })
	}, "%s in the cloud", topic)
}

// An EnOS C SDK device that is provisioned with the productSecret only
// activates itself through the gateway (docs/protocol.md §6.2): CONNECT
// with securemode=3 signed with the productSecret, the deviceSecret
// arrives on /ext/session/{pk}/{dk}/thing/activate/info without a
// SUBSCRIBE, then it logs in with securemode=2 and that secret.
func TestEnOSSelfActivation(t *testing.T) {
	known := compatDevice{dialect: secrets.EnOS, pk: "FwActProd1", dn: "known-dev", secret: secrets.NewSecret("known-secret-0123456789"),
		productSecret: secrets.NewSecret("product-secret-0123456789")}
	const dk = "self-act-dev"
	r := newCompatRig(t, known, func(sc *cloudsim.Config, _ *config.Config) {
		sc.Devices = append(sc.Devices, cloudsim.Device{ProductKey: known.pk, DeviceName: dk}) // created in the console, not activated
	})
	sign := func(mode int, secret secrets.Secret) packets.ConnectParams {
		cred, err := secrets.Sign(secrets.SignParams{Dialect: secrets.EnOS, ProductKey: known.pk, DeviceName: dk,
			ClientID: known.pk + "." + dk, Timestamp: "2524608000000", SignMethod: secrets.SHA256, SecureMode: mode}, secret)
		if err != nil {
			t.Fatal(err)
		}
		return packets.ConnectParams{ClientIdentifier: cred.ClientID, Username: []byte(cred.Username), UsernameFlag: true,
			Password: []byte(strings.ToUpper(cred.Password.Reveal())), PasswordFlag: true, Keepalive: 60, Clean: true}
	}
	c := connectOK(t, r.local, sign(3, known.productSecret), "activation login (securemode=3)")
	info := "/ext/session/" + known.pk + "/" + dk + "/thing/activate/info"
	got, err := c.waitPublish("activate/info", func(topic string) bool { return topic == info })
	if err != nil {
		t.Fatal(err)
	}
	var msg struct {
		Params struct {
			DeviceSecret string `json:"deviceSecret"`
		} `json:"params"`
	}
	if err := json.Unmarshal(got.Payload, &msg); err != nil || msg.Params.DeviceSecret == "" {
		t.Fatalf("activate/info payload %q: %v", got.Payload, err)
	}
	if issued := r.sim.Issued(known.pk, dk); len(issued) == 0 || issued[len(issued)-1].Reveal() != msg.Params.DeviceSecret {
		t.Errorf("the device got a deviceSecret the cloud did not issue")
	}
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})

	c = connectOK(t, r.local, sign(2, secrets.NewSecret(msg.Params.DeviceSecret)), "login with the activated deviceSecret")
	post := "/sys/" + known.pk + "/" + dk + "/thing/measurepoint/post"
	if err := c.publish(1, post, []byte(`{"id":"1","version":"1.0","method":"thing.measurepoint.post","params":{"measurepoints":{"temp":1.5}}}`)); err != nil {
		t.Fatal(err)
	}
	arrived(t, r, known.pk, dk, post)
}

// A Link SDK 4.x device of a product with "one product, one secret"
// registers itself through the gateway (docs/protocol.md §6.1):
// CONNECT dn.pk|random=…,authType=register,securemode=2,signmethod=hmacsha256|
// signed with the productSecret, the deviceSecret arrives on /ext/register
// without a SUBSCRIBE and the connection is closed; then it logs in
// normally with that secret.
func TestAliyunSelfRegistration(t *testing.T) {
	pki := testutil.NewPKI(t)
	known := compatDevice{dialect: secrets.Aliyun, pk: "a1FwRegPrd1", dn: "known-dev", secret: secrets.NewSecret("known-secret-0123456789"),
		productSecret: secrets.NewSecret("product-secret-0123456789")}
	const dn = "self-reg-dev"
	r := newCompatRig(t, known, func(sc *cloudsim.Config, gc *config.Config) {
		sc.Devices = append(sc.Devices, cloudsim.Device{ProductKey: known.pk, DeviceName: dn}) // pre-registered, no secret yet
		// The clouds register only over TLS.
		sc.TLSListen, sc.TLSConfig = "127.0.0.1:0", pki.ServerTLS(0)
		gc.Cloud.CAFile = pki.CAFile
		// Firmware registers over TLS to the gateway too.
		gc.Broker.Listeners = append(gc.Broker.Listeners, "tls://127.0.0.1:0")
		gc.Broker.TLSCert, gc.Broker.TLSKey = pki.WriteCert(t, pki.Server, "local")
	})
	var tlsAddr string
	for id, a := range r.gw.Addrs() {
		if strings.HasPrefix(id, "tls://") {
			tlsAddr = a.String()
		}
	}
	random := "2345678901"
	mac := hmac.New(sha256.New, []byte(known.productSecret.Reveal()))
	mac.Write([]byte("deviceName" + dn + "productKey" + known.pk + "random" + random))
	c, ack := dialFirmwareTLS(t, tlsAddr, pki.ClientTLS(), packets.ConnectParams{
		ClientIdentifier: dn + "." + known.pk + "|random=" + random + ",authType=register,securemode=2,signmethod=hmacsha256|",
		Username:         []byte(dn + "&" + known.pk), UsernameFlag: true,
		Password: []byte(strings.ToUpper(hex.EncodeToString(mac.Sum(nil)))), PasswordFlag: true,
		Keepalive: 1200, Clean: true}, 4)
	if ack.ReasonCode != 0 {
		t.Fatalf("registration login (authType=register): CONNACK %d, want 0", ack.ReasonCode)
	}
	got, err := c.waitPublish("/ext/register", func(topic string) bool { return topic == "/ext/register" })
	if err != nil {
		t.Fatal(err)
	}
	var msg struct {
		ProductKey   string `json:"productKey"`
		DeviceName   string `json:"deviceName"`
		DeviceSecret string `json:"deviceSecret"`
	}
	if err := json.Unmarshal(got.Payload, &msg); err != nil || msg.DeviceSecret == "" || msg.DeviceName != dn || msg.ProductKey != known.pk {
		t.Fatalf("/ext/register payload %q: %v", got.Payload, err)
	}
	if issued := r.sim.Issued(known.pk, dn); len(issued) == 0 || issued[len(issued)-1].Reveal() != msg.DeviceSecret {
		t.Errorf("the device got a deviceSecret the cloud did not issue")
	}

	dev := compatDevice{dialect: secrets.Aliyun, pk: known.pk, dn: dn, secret: secrets.NewSecret(msg.DeviceSecret)}
	conv := conversation{name: "link-sdk-after-registration", dialect: secrets.Aliyun, connect: map[string]string{
		"clientid": "{pk}.{dn}|timestamp=2524608000000,_ss=1,_v=sdk-c-4.1.0,securemode=3,signmethod=hmacsha256,ext=3,_conn=tls_1|",
		"username": "{dn}&{pk}", "password": "upper", "keepalive": "1200", "clean": "1", "level": "4"}}
	cp, _ := conv.credentials(t, dev)
	c = connectOK(t, r.local, cp, "login with the registered deviceSecret")
	post := "/sys/" + known.pk + "/" + dn + "/thing/event/property/post"
	if err := c.publish(1, post, []byte(`{"id":"1","version":"1.0","params":{"LightSwitch":1}}`)); err != nil {
		t.Fatal(err)
	}
	arrived(t, r, known.pk, dn, post)
}
