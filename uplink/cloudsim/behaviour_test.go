package cloudsim_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

func aliTCP(t *testing.T, sim *cloudsim.Sim, dn, secret string) *client {
	t.Helper()
	return mustConnect(t, urlFor(sim, cloudsim.TCP), sign(t, secrets.Aliyun, aliPK, dn, secret, 3, ""), withKeepAlive(secondsDuration(300)))
}

func userTopic(dn, name string) string { return "/" + aliPK + "/" + dn + "/user/" + name }

// TestRateLimit uses an injected clock, so the bucket refills only when
// the test says so: the result is exact.
func TestRateLimit(t *testing.T) {
	t.Run("aliyun default 30/s per device", func(t *testing.T) {
		clock := newFakeClock()
		sim, _ := aliyunSim(t, func(c *cloudsim.Config) { c.Now = clock.Now })
		c1 := aliTCP(t, sim, aliDN, aliSecret)
		c2 := aliTCP(t, sim, aliDN2, aliSecret2)
		for i := range 40 {
			mustPublish(t, c1, userTopic(aliDN, "data"), 1, fmt.Sprint(i)) // every one is PUBACKed
		}
		if st := sim.Stats(); st.Messages != 30 || st.RateDropped != 10 {
			t.Fatalf("after 40 in one instant: accepted %d dropped %d, want 30 and 10", st.Messages, st.RateDropped)
		}
		recs := sim.MessagesFor(aliPK, aliDN)
		if string(recs[0].Payload) != "0" || string(recs[29].Payload) != "29" {
			t.Errorf("accepted %q…%q, want the first 30 (0…29)", recs[0].Payload, recs[29].Payload)
		}
		// The other device has its own bucket.
		for i := range 30 {
			mustPublish(t, c2, userTopic(aliDN2, "data"), 0, fmt.Sprint(i))
		}
		mustPublish(t, c2, userTopic(aliDN2, "data"), 1, "sync")
		if st := sim.Stats(); st.Messages != 60 || st.RateDropped != 11 {
			t.Fatalf("second device: accepted %d dropped %d, want 60 and 11", st.Messages, st.RateDropped)
		}
		// Half a second refills 15 tokens.
		clock.Advance(500 * time.Millisecond)
		for i := range 20 {
			mustPublish(t, c1, userTopic(aliDN, "data"), 1, fmt.Sprint("late", i))
		}
		if n := len(sim.MessagesFor(aliPK, aliDN)); n != 45 {
			t.Errorf("after refill: %d accepted, want 45", n)
		}
		// Ten seconds refill only a full bucket (30), not 300.
		clock.Advance(10 * time.Second)
		for i := range 31 {
			mustPublish(t, c1, userTopic(aliDN, "data"), 1, fmt.Sprint("burst", i))
		}
		if n := len(sim.MessagesFor(aliPK, aliDN)); n != 75 {
			t.Errorf("after a long pause: %d accepted, want 75", n)
		}
	})
	for _, tc := range []struct {
		name    string
		dialect secrets.Dialect
		rate    float64
		want    int
	}{
		{"configured 5/s", secrets.Aliyun, 5, 5},
		{"unlimited", secrets.Aliyun, cloudsim.RateUnlimited, 50},
		{"enos default unlimited", secrets.EnOS, 0, 50},
		{"enos configured 2/s", secrets.EnOS, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			mod := func(c *cloudsim.Config) { c.Now, c.DeviceRate = clock.Now, tc.rate }
			var c *client
			var sim *cloudsim.Sim
			topic := ""
			if tc.dialect == secrets.EnOS {
				sim, _ = enosSim(t, mod)
				c = mustConnect(t, urlFor(sim, cloudsim.TCP), sign(t, secrets.EnOS, enosPK, enosDK, enosSecret, 2, ""))
				topic = "/sys/" + enosPK + "/" + enosDK + "/thing/measurepoint/post"
			} else {
				sim, _ = aliyunSim(t, mod)
				c = aliTCP(t, sim, aliDN, aliSecret)
				topic = userTopic(aliDN, "data")
			}
			for i := range 50 {
				mustPublish(t, c, topic, 1, fmt.Sprint(i))
			}
			if st := sim.Stats(); st.Messages != int64(tc.want) || st.RateDropped != int64(50-tc.want) {
				t.Errorf("accepted %d dropped %d, want %d and %d", st.Messages, st.RateDropped, tc.want, 50-tc.want)
			}
		})
	}
}

func TestTakeover(t *testing.T) {
	sim, _ := aliyunSim(t)
	url := urlFor(sim, cloudsim.TCP)
	signWith := func(cid string) secrets.Credentials {
		cr, err := secrets.Sign(secrets.SignParams{Dialect: secrets.Aliyun, ProductKey: aliPK, DeviceName: aliDN,
			ClientID: cid, Timestamp: fixedTS, SecureMode: 3}, secrets.NewSecret(aliSecret))
		if err != nil {
			t.Fatal(err)
		}
		return cr
	}
	down := userTopic(aliDN, "get")
	first := mustConnect(t, url, signWith("gateway-a"), withKeepAlive(secondsDuration(300)))
	mustSubscribe(t, first, down, 1)
	other := aliTCP(t, sim, aliDN2, aliSecret2) // another device is not affected

	// Same device, different clientId: the first session is kicked.
	second := mustConnect(t, url, signWith("gateway-b"), withKeepAlive(secondsDuration(300)))
	waitLost(t, first)
	waitStats(t, sim, "one takeover", func(s cloudsim.Stats) bool { return s.Takeovers == 1 })
	if !sim.Connected(aliPK, aliDN) {
		t.Fatal("device not connected after takeover")
	}
	// The new session works: its subscriptions and publishes.
	mustSubscribe(t, second, down, 1)
	if err := sim.Publish(aliPK, aliDN, down, []byte("cmd"), 1); err != nil {
		t.Fatalf("downlink after takeover: %v", err)
	}
	if m := nextMsg(t, second); m.Topic() != down || string(m.Payload()) != "cmd" {
		t.Errorf("got %q %q", m.Topic(), m.Payload())
	}
	mustPublish(t, second, userTopic(aliDN, "data"), 1, "from b")
	recs := waitRecords(t, sim, 1)
	if recs[0].ClientID != signWith("gateway-b").ClientID {
		t.Errorf("record clientId %q, want the new session's", recs[0].ClientID)
	}

	// Same clientId again (a reconnecting gateway): kicked the same way.
	third := mustConnect(t, url, signWith("gateway-b"), withKeepAlive(secondsDuration(300)))
	waitLost(t, second)
	waitStats(t, sim, "two takeovers", func(s cloudsim.Stats) bool { return s.Takeovers == 2 })
	mustPublish(t, third, userTopic(aliDN, "data"), 1, "from b again")
	mustPublish(t, other, userTopic(aliDN2, "data"), 1, "unaffected")
	waitRecords(t, sim, 3)
	if st := sim.Stats(); st.Connected != 2 || st.ConnectsAccepted != 4 {
		t.Errorf("connected %d accepted %d, want 2 and 4", st.Connected, st.ConnectsAccepted)
	}
}

func TestPermissions(t *testing.T) {
	sim, _ := aliyunSim(t)
	t.Run("subscribe", func(t *testing.T) {
		c := aliTCP(t, sim, aliDN, aliSecret)
		for _, tc := range []struct {
			filter string
			qos    byte
			want   byte
		}{
			{"#", 0, 0x80},
			{"/sys/#", 1, 0x80},
			// '+' in the identity is granted; only the device's own
			// topics are ever delivered through it (TestIdentityWildcards).
			{"/sys/" + aliPK + "/+/thing/service/#", 1, 1},
			{"/+/+/user/#", 1, 0x80},
			{userTopic(aliDN2, "get"), 1, 0x80},
			{"/sys/" + aliPK + "/" + aliDN + "/thing/service/#", 1, 1},
			{userTopic(aliDN, "get"), 2, 1}, // QoS 2 is granted as 1
			{"/broadcast/" + aliPK + "/news", 0, 0},
		} {
			if got := mustSubscribe(t, c, tc.filter, tc.qos); got != tc.want {
				t.Errorf("subscribe %q QoS %d: granted %#x, want %#x", tc.filter, tc.qos, got, tc.want)
			}
		}
		if st := sim.Stats(); st.PermissionRefused != 4 {
			t.Errorf("Stats.PermissionRefused = %d, want 4", st.PermissionRefused)
		}
	})
	for _, tc := range []struct {
		name  string
		topic string
		qos   byte
	}{
		{"qos0 to another device", userTopic(aliDN2, "data"), 0},
		{"qos1 to another device", "/sys/" + aliPK + "/" + aliDN2 + "/thing/event/property/post", 1},
		{"qos0 to a system topic", "$SYS/broker/clients", 0},
		{"qos1 to a foreign product", "/zzzzzzzzzzz/" + aliDN + "/user/data", 1},
	} {
		t.Run("publish "+tc.name, func(t *testing.T) {
			before := sim.Stats().PermissionRefused
			c := aliTCP(t, sim, aliDN, aliSecret)
			c.Publish(tc.topic, tc.qos, false, "x")
			waitLost(t, c)
			if got := sim.Stats().PermissionRefused; got != before+1 {
				t.Errorf("PermissionRefused %d → %d, want +1", before, got)
			}
		})
	}
	t.Run("publish qos2", func(t *testing.T) {
		c := aliTCP(t, sim, aliDN, aliSecret)
		c.Publish(userTopic(aliDN, "data"), 2, false, "x")
		waitLost(t, c)
		if st := sim.Stats(); st.ProtocolErrors != 1 {
			t.Errorf("ProtocolErrors = %d, want 1", st.ProtocolErrors)
		}
	})
	if n := len(sim.Messages()); n != 0 {
		t.Errorf("%d refused messages were recorded", n)
	}
}

func TestRetainIgnored(t *testing.T) {
	sim, _ := aliyunSim(t)
	c := aliTCP(t, sim, aliDN, aliSecret)
	topic := userTopic(aliDN, "data")
	// mochi delivers a message after its PUBACK; wait for the delivery to
	// an existing subscriber before the late subscriber arrives.
	early := mustObserve(t, sim, "#")
	tok := c.Publish(topic, 1, true, "retained?")
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("retained publish: %v", tok.Error())
	}
	if m := nextMsg(t, early); string(m.Payload()) != "retained?" {
		t.Fatalf("early observer got %q", m.Payload())
	}
	obs := mustObserve(t, sim, topic)
	mustPublish(t, c, topic, 1, "live")
	if m := nextMsg(t, obs); string(m.Payload()) != "live" || m.Retained() {
		t.Errorf("observer first got %q (retained %v), want the live message: nothing may be retained", m.Payload(), m.Retained())
	}
	if n := len(sim.Messages()); n != 2 {
		t.Errorf("%d records, want 2 (a retained publish is still a message)", n)
	}
}

func TestObserver(t *testing.T) {
	sim, _ := aliyunSim(t)
	obs := mustObserve(t, sim, "#")
	dev := aliTCP(t, sim, aliDN, aliSecret)
	down := userTopic(aliDN, "get")
	mustSubscribe(t, dev, down, 1)

	mustPublish(t, dev, userTopic(aliDN, "data"), 1, "hello cloud")
	if m := nextMsg(t, obs); m.Topic() != userTopic(aliDN, "data") || string(m.Payload()) != "hello cloud" {
		t.Errorf("observer got %q %q", m.Topic(), m.Payload())
	}
	// Downlink by the observer.
	mustPublish(t, obs, down, 1, "set 42")
	if m := nextMsg(t, dev); m.Topic() != down || string(m.Payload()) != "set 42" {
		t.Errorf("device got %q %q", m.Topic(), m.Payload())
	}
	if m := nextMsg(t, obs); m.Topic() != down {
		t.Errorf("observer did not see its own downlink, got %q", m.Topic())
	}
	// The observer's traffic is not device traffic.
	if n := len(sim.Messages()); n != 1 {
		t.Errorf("%d records, want 1 (observer messages are not recorded)", n)
	}
	st := sim.Stats()
	if st.ObserverConnects != 1 || st.ConnectsAccepted != 1 {
		t.Errorf("observer connects %d device connects %d, want 1 and 1", st.ObserverConnects, st.ConnectsAccepted)
	}
	if _, code, _ := connect(t, urlFor(sim, cloudsim.TCP), "obs-2", observerUser, "wrong"); code != 4 {
		t.Errorf("observer with a wrong password: code %d, want 4", code)
	}
}

func TestDownlinkPublish(t *testing.T) {
	t.Run("aliyun", func(t *testing.T) {
		sim, _ := aliyunSim(t)
		down := "/sys/" + aliPK + "/" + aliDN + "/thing/service/property/set"
		if err := sim.Publish(aliPK, aliDN, down, []byte("x"), 1); !errors.Is(err, cloudsim.ErrDeviceOffline) {
			t.Errorf("offline device: %v, want ErrDeviceOffline", err)
		}
		c := aliTCP(t, sim, aliDN, aliSecret)
		if err := sim.Publish(aliPK, aliDN, down, []byte("x"), 1); !errors.Is(err, cloudsim.ErrNotSubscribed) {
			t.Errorf("unsubscribed topic: %v, want ErrNotSubscribed", err)
		}
		if err := sim.Publish(aliPK, aliDN, userTopic(aliDN2, "get"), []byte("x"), 1); err == nil {
			t.Error("published to another device's topic")
		}
		if err := sim.Publish(aliPK, aliDN, down, []byte("x"), 2); err == nil {
			t.Error("published at QoS 2")
		}
		mustSubscribe(t, c, "/sys/"+aliPK+"/"+aliDN+"/thing/service/#", 1)
		if err := sim.Publish(aliPK, aliDN, down, []byte(`{"id":"1"}`), 1); err != nil {
			t.Fatal(err)
		}
		if m := nextMsg(t, c); m.Topic() != down || m.Qos() != 1 {
			t.Errorf("got %q QoS %d", m.Topic(), m.Qos())
		}
	})
	t.Run("enos pushes downstream topics without SUBSCRIBE", func(t *testing.T) {
		sim, _ := enosSim(t)
		c := mustConnect(t, urlFor(sim, cloudsim.TCP), sign(t, secrets.EnOS, enosPK, enosDK, enosSecret, 2, ""))
		base := "/sys/" + enosPK + "/" + enosDK + "/"
		set := base + "thing/service/measurepoint/set"
		if err := sim.Publish(enosPK, enosDK, set, []byte(`{"id":"1"}`), 1); err != nil {
			t.Fatal(err)
		}
		if m := nextMsg(t, c); m.Topic() != set {
			t.Fatalf("got %q", m.Topic())
		}
		// The device's own reply under thing/service/ is not echoed back.
		mustPublish(t, c, set+"_reply", 1, `{"id":"1","code":200}`)
		rrpc := base + "rrpc/request/99"
		if err := sim.Publish(enosPK, enosDK, rrpc, []byte(`{}`), 0); err != nil {
			t.Fatal(err)
		}
		if m := nextMsg(t, c); m.Topic() != rrpc {
			t.Errorf("got %q, want the RRPC request (no echo of the device's reply)", m.Topic())
		}
		// Post replies are not pushed.
		if err := sim.Publish(enosPK, enosDK, base+"thing/measurepoint/post_reply", []byte(`{}`), 0); !errors.Is(err, cloudsim.ErrNotSubscribed) {
			t.Errorf("post reply without subscription: %v, want ErrNotSubscribed", err)
		}
	})
}

func TestDeviceManagement(t *testing.T) {
	sim, _ := aliyunSim(t)
	c := aliTCP(t, sim, aliDN, aliSecret)
	if err := sim.RemoveDevice(aliPK, aliDN); err != nil {
		t.Fatal(err)
	}
	waitLost(t, c)
	cr := sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 3, "")
	if _, code, _ := connect(t, urlFor(sim, cloudsim.TCP), cr.ClientID, cr.Username, cr.Password.Reveal(), withKeepAlive(secondsDuration(300))); code != 5 {
		t.Errorf("removed device: code %d, want 5", code)
	}
	if err := sim.RemoveDevice(aliPK, aliDN); !errors.Is(err, cloudsim.ErrUnknownDevice) {
		t.Errorf("second remove: %v", err)
	}
	if err := sim.AddDevice(aliPK, aliDN, secrets.NewSecret(aliSecret)); err != nil {
		t.Fatal(err)
	}
	aliTCP(t, sim, aliDN, aliSecret)
	for _, tc := range []struct{ pk, dn, secret string }{
		{"a-b", aliDN, aliSecret},        // Alibaba product keys are alphanumeric
		{aliPK, "ab", aliSecret},         // device names need 4 characters
		{aliPK, "dev/0001", aliSecret},   // '/' would break topics
		{aliPK, "dev&0001", aliSecret},   // '&' would break the username
		{aliPK, "dev00001", "has space"}, // secrets are printable ASCII without spaces
	} {
		if err := sim.AddDevice(tc.pk, tc.dn, secrets.NewSecret(tc.secret)); err == nil {
			t.Errorf("AddDevice(%q, %q) accepted", tc.pk, tc.dn)
		} else if strings.Contains(err.Error(), tc.secret) && tc.secret != aliSecret {
			t.Errorf("error shows the secret: %v", err)
		}
	}
	if err := sim.AddProduct(aliPK, secrets.Secret{}); err == nil {
		t.Error("AddProduct without a secret accepted")
	}

	// Batch loading at runtime.
	n, err := sim.LoadDevices(strings.NewReader("ProductKey,DeviceName,DeviceSecret\r\n"+aliPK+",late0001,lateSecret01\r\n"+aliPK+",late0002,\r\n"), "more.csv")
	if err != nil || n != 2 {
		t.Fatalf("LoadDevices: %d, %v", n, err)
	}
	aliTCP(t, sim, "late0001", "lateSecret01")
	if _, err := sim.LoadDevices(strings.NewReader("ProductKey,DeviceName,DeviceSecret\n"+aliPK+",late0003,s\n"+aliPK+",x,s\n"), "bad.csv"); err == nil ||
		!strings.Contains(err.Error(), "bad.csv:3:") {
		t.Errorf("LoadDevices error %v, want one naming bad.csv:3", err)
	}
	for _, d := range sim.Devices() {
		if d.DeviceName == "late0003" {
			t.Error("a failed load registered a device")
		}
	}
	if n, err := sim.LoadProducts(strings.NewReader("ProductKey,ProductSecret\n"+aliPK+",newProductSecret\n"), "p.csv"); err != nil || n != 1 {
		t.Errorf("LoadProducts: %d, %v", n, err)
	}
	cid, user, pass := registerCreds(t, "late0002", "newProductSecret", "5")
	if _, code, err := connect(t, urlFor(sim, cloudsim.TLS), cid, user, pass, withTLS(pkiOf(t, sim).ClientTLS())); err != nil {
		t.Errorf("registration with the reloaded productSecret: code %d: %v", code, err)
	}
}
