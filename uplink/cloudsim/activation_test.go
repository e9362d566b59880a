package cloudsim_test

import (
	"crypto/tls"
	"encoding/json"
	"testing"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// registerCreds builds Alibaba MQTT dynamic-registration credentials
// (docs/protocol.md §6.1) signed with productSecret.
func registerCreds(t testing.TB, dn, productSecret, random string) (cid, user, pass string) {
	t.Helper()
	sig, err := secrets.RegisterSign(secrets.HMACSHA256, aliPK, dn, random, secrets.NewSecret(productSecret))
	if err != nil {
		t.Fatal(err)
	}
	return dn + "." + aliPK + "|random=" + random + ",authType=register,securemode=2,signmethod=hmacsha256|", dn + "&" + aliPK, sig
}

// registerOnce performs one Alibaba dynamic registration and returns the
// deviceSecret the cloud published; it checks that the cloud then closes
// the connection.
func registerOnce(t *testing.T, sim *cloudsim.Sim, url, dn string, cfg *tls.Config) string {
	t.Helper()
	cid, user, pass := registerCreds(t, dn, aliPSecret, "8345")
	// The keepalive is not checked during dynamic registration.
	c, code, err := connect(t, url, cid, user, pass, withTLS(cfg), withKeepAlive(secondsDuration(5)))
	if err != nil {
		t.Fatalf("register: code %d: %v", code, err)
	}
	m := nextMsg(t, c)
	if m.Topic() != "/ext/register" {
		t.Fatalf("registration reply on %q, want /ext/register", m.Topic())
	}
	var body map[string]string
	if err := json.Unmarshal(m.Payload(), &body); err != nil {
		t.Fatalf("registration payload: %v", err)
	}
	if body["productKey"] != aliPK || body["deviceName"] != dn || len(body["deviceSecret"]) != 32 || len(body) != 3 {
		t.Fatalf("registration payload has fields %v", keys(body))
	}
	waitLost(t, c)
	return body["deviceSecret"]
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestAliyunDynamicRegistration(t *testing.T) {
	sim, _ := aliyunSim(t)
	pki := pkiOf(t, sim)
	tlsURL := urlFor(sim, cloudsim.TLS)

	first := registerOnce(t, sim, tlsURL, aliNewDN, pki.ClientTLS())
	second := registerOnce(t, sim, urlFor(sim, cloudsim.WSS), aliNewDN, pki.ClientTLS())
	if first == second {
		t.Fatal("re-registration returned the same secret")
	}
	issued := sim.Issued(aliPK, aliNewDN)
	if len(issued) != 2 || issued[0].Reveal() != first || issued[1].Reveal() != second {
		t.Fatalf("Issued has %d secrets, want the 2 published ones in order", len(issued))
	}
	if st := sim.Stats(); st.Activations != 2 {
		t.Errorf("Stats.Activations = %d, want 2", st.Activations)
	}

	// Latest wins: the first secret no longer logs in.
	old := sign(t, secrets.Aliyun, aliPK, aliNewDN, first, 2, "")
	if _, code, _ := connect(t, tlsURL, old.ClientID, old.Username, old.Password.Reveal(), withTLS(pki.ClientTLS()), withKeepAlive(secondsDuration(300))); code != 5 {
		t.Errorf("login with a superseded secret: code %d, want 5", code)
	}
	// A normal login with the issued secret activates the device …
	cur := sign(t, secrets.Aliyun, aliPK, aliNewDN, second, 2, "")
	c := mustConnect(t, tlsURL, cur, withTLS(pki.ClientTLS()), withKeepAlive(secondsDuration(300)))
	c.Disconnect(20)
	// … after which registration is refused.
	cid, user, pass := registerCreds(t, aliNewDN, aliPSecret, "77")
	if _, code, _ := connect(t, tlsURL, cid, user, pass, withTLS(pki.ClientTLS())); code != 5 {
		t.Errorf("registration of an activated device: code %d, want 5", code)
	}

	t.Run("refusals", func(t *testing.T) {
		sim, _ := aliyunSim(t, func(c *cloudsim.Config) {
			c.Devices = append(c.Devices, cloudsim.Device{ProductKey: "b1B2c3D4e5F", DeviceName: "orphan01"})
		})
		pki := pkiOf(t, sim)
		good := func() (string, string, string) { return registerCreds(t, aliNewDN, aliPSecret, "1") }
		cid, user, pass := good()
		if _, code, _ := connect(t, urlFor(sim, cloudsim.TCP), cid, user, pass); code != 3 {
			t.Errorf("registration over plain TCP: code %d, want 3", code)
		}
		if _, code, _ := connect(t, urlFor(sim, cloudsim.WS), cid, user, pass); code != 3 {
			t.Errorf("registration over ws: code %d, want 3", code)
		}
		cid, user, pass = registerCreds(t, aliNewDN, "wrongProductSecret", "1")
		if _, code, _ := connect(t, urlFor(sim, cloudsim.TLS), cid, user, pass, withTLS(pki.ClientTLS())); code != 5 {
			t.Errorf("registration with a wrong productSecret: code %d, want 5", code)
		}
		cid, user, pass = registerCreds(t, "ghost001", aliPSecret, "1")
		if _, code, _ := connect(t, urlFor(sim, cloudsim.TLS), cid, user, pass, withTLS(pki.ClientTLS())); code != 5 {
			t.Errorf("registration of an unknown device: code %d, want 5", code)
		}
		sig, _ := secrets.RegisterSign(secrets.HMACSHA256, "b1B2c3D4e5F", "orphan01", "1", secrets.NewSecret(aliPSecret))
		if _, code, _ := connect(t, urlFor(sim, cloudsim.TLS), "orphan01|random=1,authType=register,securemode=2,signmethod=hmacsha256|",
			"orphan01&b1B2c3D4e5F", sig, withTLS(pki.ClientTLS())); code != 5 {
			t.Errorf("registration in a product without productSecret: code %d, want 5", code)
		}
		if n := len(sim.Issued(aliPK, aliNewDN)); n != 0 {
			t.Errorf("refused registrations issued %d secrets", n)
		}
	})
}

func TestEnOSDynamicActivation(t *testing.T) {
	sim, _ := enosSim(t)
	url := urlFor(sim, cloudsim.TCP)
	cr := sign(t, secrets.EnOS, enosPK, enosNewDK, enosPSecret, 3, "")
	c := mustConnect(t, url, cr)

	m := nextMsg(t, c)
	wantTopic := "/ext/session/" + enosPK + "/" + enosNewDK + "/thing/activate/info"
	if m.Topic() != wantTopic {
		t.Fatalf("activation on %q, want %q", m.Topic(), wantTopic)
	}
	var info struct {
		ID      string `json:"id"`
		Version string `json:"version"`
		Method  string `json:"method"`
		Params  struct {
			AssetID      string `json:"assetId"`
			ProductKey   string `json:"productKey"`
			DeviceKey    string `json:"deviceKey"`
			DeviceSecret string `json:"deviceSecret"`
		} `json:"params"`
	}
	if err := json.Unmarshal(m.Payload(), &info); err != nil {
		t.Fatalf("activation payload: %v", err)
	}
	if info.ID == "" || info.Version != "1.0" || info.Method != "thing.activate.info" || info.Params.AssetID == "" ||
		info.Params.ProductKey != enosPK || info.Params.DeviceKey != enosNewDK || info.Params.DeviceSecret == "" {
		t.Fatalf("activation payload fields: id=%q version=%q method=%q asset=%q pk=%q dk=%q secret %d bytes",
			info.ID, info.Version, info.Method, info.Params.AssetID, info.Params.ProductKey, info.Params.DeviceKey, len(info.Params.DeviceSecret))
	}
	issued := sim.Issued(enosPK, enosNewDK)
	if len(issued) != 1 || issued[0].Reveal() != info.Params.DeviceSecret {
		t.Fatalf("Issued has %d secrets, want the published one", len(issued))
	}
	// The Java SDK replies; the reply is an ordinary device message.
	replyTopic := wantTopic + "_reply"
	mustPublish(t, c, replyTopic, 1, `{"id":"`+info.ID+`","code":200,"data":null,"message":"ok"}`)
	recs := waitRecords(t, sim, 1)
	if recs[0].Topic != replyTopic {
		t.Errorf("recorded %q, want the activation reply", recs[0].Topic)
	}
	c.Disconnect(20)

	// The device is activated: the issued secret logs in …
	mustConnect(t, url, sign(t, secrets.EnOS, enosPK, enosNewDK, info.Params.DeviceSecret, 2, "")).Disconnect(20)
	// … and activation works only once.
	if _, code, _ := connect(t, url, cr.ClientID, cr.Username, cr.Password.Reveal()); code != 5 {
		t.Errorf("second activation: code %d, want 5", code)
	}
	// A wrong productSecret never activates.
	bad := sign(t, secrets.EnOS, enosPK, enosNewDK, "wrongProductSecret", 3, "")
	if _, code, _ := connect(t, url, bad.ClientID, bad.Username, bad.Password.Reveal()); code != 5 {
		t.Errorf("activation with a wrong productSecret: code %d, want 5", code)
	}
	st := sim.Stats()
	if st.Activations != 1 || st.ConnectsRefused[5] != 2 {
		t.Errorf("stats: activations %d refused(5) %d, want 1 and 2", st.Activations, st.ConnectsRefused[5])
	}
	devs := sim.Devices()
	for _, d := range devs {
		if d.DeviceName == enosNewDK && (!d.Activated || !d.HasSecret || d.Issued != 1) {
			t.Errorf("device status %+v, want activated with 1 issued secret", d)
		}
	}
}
