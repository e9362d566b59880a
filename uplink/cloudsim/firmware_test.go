package cloudsim_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// The clientId extensions of the vendor C SDKs (docs/protocol.md, "What
// real firmware does on the wire").
var (
	sdkC3    = []secrets.Param{{Key: "_v", Value: "sdk-c-3.0.1"}, {Key: "lan", Value: "C"}, {Key: "gw", Value: "0"}, {Key: "ext", Value: "0"}}
	sdkLink4 = []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "_v", Value: "sdk-c-4.1.0"}, {Key: "ext", Value: "3"}, {Key: "_conn", Value: "tls_1"}}
	extOnly  = []secrets.Param{{Key: "ext", Value: "1"}}
)

// firmware connects to an Alibaba sim over TCP as the vendor SDKs do:
// clientId pk.dn, the 2050 timestamp, hmacsha256, securemode=3 and extra
// clientId parameters.
func firmware(t *testing.T, sim *cloudsim.Sim, dn, secret string, extra []secrets.Param) *client {
	t.Helper()
	cr, err := secrets.Sign(secrets.SignParams{
		Dialect: secrets.Aliyun, ProductKey: aliPK, DeviceName: dn, ClientID: aliPK + "." + dn,
		Timestamp: fixedTS, SignMethod: secrets.HMACSHA256, SecureMode: 3, Extra: extra,
	}, secrets.NewSecret(secret))
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return mustConnect(t, urlFor(sim, cloudsim.TCP), cr, withKeepAlive(300*time.Second))
}

func sysT(dn, rest string) string { return "/sys/" + aliPK + "/" + dn + "/" + rest }
func idT(form, dn string) string  { return strings.NewReplacer("{pk}", aliPK, "{dn}", dn).Replace(form) }

// TestFirmwareC3 replays what the C SDK 3.0.1 does right after CONNACK: a
// QoS 1 version report on /ota/device/inform/{pk}/{dn}, then one SUBSCRIBE
// per filter at QoS 0. Before issue #15 the report closed the connection.
func TestFirmwareC3(t *testing.T) {
	sim, _ := aliyunSim(t)
	c := firmware(t, sim, aliDN, aliSecret, sdkC3)
	inform := idT("/ota/device/inform/{pk}/{dn}", aliDN)
	mustPublish(t, c, inform, 1, `{"id":"1","params":{"version":"app-1.0.0"}}`)
	mustPublish(t, c, sysT(aliDN, "thing/deviceinfo/update"), 1, `{"id":"2","params":[]}`)
	for _, f := range []string{
		sysT(aliDN, "thing/event/+/post_reply"), sysT(aliDN, "thing/service/property/set"),
		sysT(aliDN, "thing/service/+"), sysT(aliDN, "thing/deviceinfo/update_reply"),
		sysT(aliDN, "thing/model/down_raw"), sysT(aliDN, "thing/config/push"), sysT(aliDN, "rrpc/request/+"),
		idT("/ext/ntp/{pk}/{dn}/response", aliDN), idT("/ext/error/{pk}/{dn}", aliDN),
		idT("/ota/device/upgrade/{pk}/{dn}", aliDN), idT("/ota/device/request/{pk}/{dn}", aliDN),
	} {
		if got := mustSubscribe(t, c, f, 0); got != 0 {
			t.Errorf("subscribe %q: granted %#x, want 0", f, got)
		}
	}
	recs := waitRecords(t, sim, 2)
	if recs[0].Topic != inform || recs[0].QoS != 1 {
		t.Errorf("first record %q QoS %d, want the version report at QoS 1", recs[0].Topic, recs[0].QoS)
	}
	for _, topic := range []string{idT("/ota/device/upgrade/{pk}/{dn}", aliDN), idT("/ota/device/request/{pk}/{dn}", aliDN)} {
		if err := sim.Publish(aliPK, aliDN, topic, []byte(`{"id":"9"}`), 1); err != nil {
			t.Fatalf("Publish %q: %v", topic, err)
		}
		if m := nextMsg(t, c); m.Topic() != topic {
			t.Errorf("device got %q, want %q", m.Topic(), topic)
		}
	}
	if !c.IsConnectionOpen() || sim.Stats().PermissionRefused != 0 {
		t.Errorf("connection open %v, PermissionRefused %d", c.IsConnectionOpen(), sim.Stats().PermissionRefused)
	}
}

// TestFirmwareTopicDirections: each catalogue form only one way where the
// cloud gives it only one way; Alibaba-only forms are refused on EnOS.
func TestFirmwareTopicDirections(t *testing.T) {
	sim, _ := aliyunSim(t)
	t.Run("subscribe", func(t *testing.T) {
		c := firmware(t, sim, aliDN, aliSecret, sdkC3)
		for _, tc := range []struct {
			filter string
			want   byte
		}{
			{idT("/ota/device/inform/{pk}/{dn}", aliDN), 0x80},
			{idT("/ota/device/progress/{pk}/{dn}", aliDN), 0x80},
			{idT("/ext/ntp/{pk}/{dn}/request", aliDN), 0x80},
			{idT("/shadow/update/{pk}/{dn}", aliDN), 0x80},
			{idT("/ota/device/upgrade/{pk}/{dn}", aliDN2), 0x80},
			{"/ota/device/upgrade/+/+", 1},
			{"/shadow/get/+/+", 1},
			{"/sys/+/+/thing/service/+", 1},
			{"/ext/rrpc/+/sys/+/+/thing/service/+", 1},
			{"/ext/session/+/+/combine/batch_login_reply", 1},
		} {
			if got := mustSubscribe(t, c, tc.filter, 1); got != tc.want {
				t.Errorf("subscribe %q: granted %#x, want %#x", tc.filter, got, tc.want)
			}
		}
	})
	for _, topic := range []string{
		idT("/ota/device/upgrade/{pk}/{dn}", aliDN),
		idT("/ext/ntp/{pk}/{dn}/response", aliDN),
		idT("/shadow/get/{pk}/{dn}", aliDN),
		idT("/ext/error/{pk}/{dn}", aliDN),
		"/broadcast/" + aliPK + "/news",
		idT("/ota/device/inform/{pk}/{dn}", aliDN2),
	} {
		t.Run("publish "+topic, func(t *testing.T) {
			before := sim.Stats().PermissionRefused
			c := firmware(t, sim, aliDN, aliSecret, sdkC3)
			c.Publish(topic, 1, false, "x")
			waitLost(t, c)
			if got := sim.Stats().PermissionRefused; got != before+1 {
				t.Errorf("PermissionRefused %d → %d, want +1", before, got)
			}
		})
	}
	t.Run("enos has no /ota/device form", func(t *testing.T) {
		esim, _ := enosSim(t)
		c := mustConnect(t, urlFor(esim, cloudsim.TCP), sign(t, secrets.EnOS, enosPK, enosDK, enosSecret, 2, ""))
		mustPublish(t, c, "/sys/"+enosPK+"/"+enosDK+"/ota/device/inform", 1, `{"id":"1"}`)
		c.Publish("/ota/device/inform/"+enosPK+"/"+enosDK, 1, false, "x")
		waitLost(t, c)
		if st := esim.Stats(); st.PermissionRefused != 1 || st.Messages != 1 {
			t.Errorf("PermissionRefused %d Messages %d, want 1 and 1", st.PermissionRefused, st.Messages)
		}
	})
}

// TestServerSideSubscription: an Alibaba session with _ss=1 receives its
// downlinks without SUBSCRIBE (the Link SDK 4.x sends none); without _ss
// only what it subscribed to.
func TestServerSideSubscription(t *testing.T) {
	sim, _ := aliyunSim(t)
	t.Run("_ss=1", func(t *testing.T) {
		c := firmware(t, sim, aliDN, aliSecret, sdkLink4)
		for _, topic := range []string{
			sysT(aliDN, "thing/service/property/set"),
			sysT(aliDN, "thing/service/Reboot"),
			sysT(aliDN, "rrpc/request/123"),
			idT("/ota/device/upgrade/{pk}/{dn}", aliDN),
			idT("/shadow/get/{pk}/{dn}", aliDN),
			idT("/ext/error/{pk}/{dn}", aliDN),
		} {
			if err := sim.Publish(aliPK, aliDN, topic, []byte(`{"id":"7"}`), 1); err != nil {
				t.Fatalf("Publish %q: %v", topic, err)
			}
			if m := nextMsg(t, c); m.Topic() != topic {
				t.Errorf("device got %q, want %q", m.Topic(), topic)
			}
		}
		// Replies too, and never an echo of the device's own publish.
		post := sysT(aliDN, "thing/event/property/post")
		mustPublish(t, c, post, 1, `{"id":"1","params":{}}`)
		if m := nextMsg(t, c); m.Topic() != post+"_reply" || !strings.Contains(string(m.Payload()), `"id":"1"`) {
			t.Errorf("device got %q %s, want the post reply", m.Topic(), m.Payload())
		}
		// Custom topics still need a SUBSCRIBE.
		if err := sim.Publish(aliPK, aliDN, userTopic(aliDN, "get"), nil, 1); !errors.Is(err, cloudsim.ErrNotSubscribed) {
			t.Errorf("Publish on a custom topic: %v, want ErrNotSubscribed", err)
		}
	})
	t.Run("without _ss", func(t *testing.T) {
		c := firmware(t, sim, aliDN2, aliSecret2, sdkC3)
		if err := sim.Publish(aliPK, aliDN2, sysT(aliDN2, "thing/service/property/set"), nil, 1); !errors.Is(err, cloudsim.ErrNotSubscribed) {
			t.Errorf("Publish without SUBSCRIBE: %v, want ErrNotSubscribed", err)
		}
		post := sysT(aliDN2, "thing/event/property/post")
		mustPublish(t, c, post, 1, `{"id":"1","params":{}}`) // no reply: not subscribed
		mustSubscribe(t, c, post+"_reply", 1)
		mustPublish(t, c, post, 1, `{"id":"2","params":{}}`)
		if m := nextMsg(t, c); !strings.Contains(string(m.Payload()), `"id":"2"`) {
			t.Errorf("first reply %s, want the one to id 2", m.Payload())
		}
	})
}

// TestIdentityWildcards: a filter with '+' for the identity is granted,
// and the device only ever gets its own topics through it.
func TestIdentityWildcards(t *testing.T) {
	sim, _ := aliyunSim(t)
	obs := mustObserve(t, sim, "/nothing")
	c := firmware(t, sim, aliDN, aliSecret, sdkC3)
	other := firmware(t, sim, aliDN2, aliSecret2, sdkC3)
	mustSubscribe(t, c, "/sys/+/+/thing/service/+", 1)
	mustSubscribe(t, other, "/sys/+/+/thing/service/+", 1)
	mustPublish(t, obs, sysT(aliDN2, "thing/service/Reboot"), 1, "for dn2")
	if m := nextMsg(t, other); string(m.Payload()) != "for dn2" {
		t.Errorf("other device got %s", m.Payload())
	}
	mine := sysT(aliDN, "thing/service/Reboot")
	if err := sim.Publish(aliPK, aliDN, mine, []byte("for dn1"), 1); err != nil {
		t.Fatal(err)
	}
	if m := nextMsg(t, c); m.Topic() != mine || string(m.Payload()) != "for dn1" {
		t.Errorf("device got %q %s first, want its own %q", m.Topic(), m.Payload(), mine)
	}
}

// TestNTP: the answer carries deviceSendTime as sent and the server's
// receive and send times (ms, strings), as Alibaba's NTP service does.
func TestNTP(t *testing.T) {
	clock := newFakeClock() // 2030-01-02T03:04:05Z = 1893553445000 ms
	sim, _ := aliyunSim(t, func(c *cloudsim.Config) { c.Now = clock.Now })
	req, resp := idT("/ext/ntp/{pk}/{dn}/request", aliDN), idT("/ext/ntp/{pk}/{dn}/response", aliDN)
	c := firmware(t, sim, aliDN, aliSecret, sdkLink4) // _ss=1: no SUBSCRIBE
	for _, tc := range []struct{ in, want string }{
		{`{"deviceSendTime":"1571724098000"}`, `{"deviceSendTime":"1571724098000","serverRecvTime":"1893553445000","serverSendTime":"1893553445000"}`},
		{`{"deviceSendTime":1571724098001}`, `{"deviceSendTime":1571724098001,"serverRecvTime":"1893553445000","serverSendTime":"1893553445000"}`},
	} {
		mustPublish(t, c, req, 0, tc.in)
		m := nextMsg(t, c)
		if m.Topic() != resp || string(m.Payload()) != tc.want {
			t.Errorf("NTP %s: got %q %s, want %s", tc.in, m.Topic(), m.Payload(), tc.want)
		}
	}
	// A request without deviceSendTime is not answered; a device without
	// _ss must subscribe to the response topic.
	c2 := firmware(t, sim, aliDN2, aliSecret2, sdkC3)
	mustPublish(t, c2, idT("/ext/ntp/{pk}/{dn}/request", aliDN2), 1, `{"deviceSendTime":"5"}`)
	mustSubscribe(t, c2, idT("/ext/ntp/{pk}/{dn}/response", aliDN2), 0)
	mustPublish(t, c2, idT("/ext/ntp/{pk}/{dn}/request", aliDN2), 1, `{}`)
	mustPublish(t, c2, idT("/ext/ntp/{pk}/{dn}/request", aliDN2), 1, `{"deviceSendTime":"6"}`)
	if m := nextMsg(t, c2); !strings.HasPrefix(string(m.Payload()), `{"deviceSendTime":"6"`) {
		t.Errorf("first NTP answer %s, want the one to 6", m.Payload())
	}
	if n := sim.Stats().NTPResponses; n != 3 {
		t.Errorf("NTPResponses = %d, want 3", n)
	}
}

type rrpcResult struct {
	reply cloudsim.RRPCReply
	err   error
}

func goRRPC(sim *cloudsim.Sim, dn, topic, payload string, timeout time.Duration) chan rrpcResult {
	ch := make(chan rrpcResult, 1)
	go func() {
		r, err := sim.RRPC(context.Background(), aliPK, dn, topic, []byte(payload), timeout)
		ch <- rrpcResult{r, err}
	}()
	return ch
}

func waitRRPC(t *testing.T, ch chan rrpcResult) rrpcResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("RRPC did not return within 10 s")
		return rrpcResult{}
	}
}

// TestRRPC: the cloud's synchronous calls, each answered by the device and
// matched by message id; the device never gets its reply echoed back.
func TestRRPC(t *testing.T) {
	for _, tc := range []struct {
		name    string
		extra   []secrets.Param
		filter  string // the device's SUBSCRIBE, if any
		topic   string // the call (Sim.RRPC)
		reqPfx  string // the request topic starts with it
		replyTo func(req string) string
	}{
		{"sync service, _ss=1", sdkLink4, "", sysT(aliDN, "thing/service/Reboot"), "/ext/rrpc/", same},
		{"sync service, subscribed", sdkC3, "/ext/rrpc/+/sys/+/+/thing/service/+", sysT(aliDN, "thing/service/Reboot"), "/ext/rrpc/", same},
		{"sync raw", sdkLink4, "", sysT(aliDN, "thing/model/down_raw"), "/ext/rrpc/", same},
		{"custom topic, ext=1", extOnly, "/ext/rrpc/+/" + aliPK + "/" + aliDN + "/user/cmd", userTopic(aliDN, "cmd"), "/ext/rrpc/", same},
		{"system rrpc", sdkC3, sysT(aliDN, "rrpc/request/+"), sysT(aliDN, "rrpc/request"), sysT(aliDN, "rrpc/request/"),
			func(req string) string { return strings.Replace(req, "/rrpc/request/", "/rrpc/response/", 1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim, _ := aliyunSim(t)
			c := firmware(t, sim, aliDN, aliSecret, tc.extra)
			if tc.filter != "" {
				mustSubscribe(t, c, tc.filter, 0)
			}
			for i, want := range []string{"pong-1", "pong-2"} {
				ch := goRRPC(sim, aliDN, tc.topic, "ping", 0)
				m := nextMsg(t, c) // an echo of the previous reply would show here
				if !strings.HasPrefix(m.Topic(), tc.reqPfx) || (tc.reqPfx == "/ext/rrpc/" && !strings.HasSuffix(m.Topic(), tc.topic)) || string(m.Payload()) != "ping" {
					t.Fatalf("call %d: device got %q %s", i, m.Topic(), m.Payload())
				}
				mustPublish(t, c, tc.replyTo(m.Topic()), 0, want) // replies are QoS 0
				r := waitRRPC(t, ch)
				if r.err != nil || string(r.reply.Payload) != want || r.reply.RequestTopic != m.Topic() || r.reply.Topic != tc.replyTo(m.Topic()) {
					t.Fatalf("call %d: %+v %v", i, r.reply, r.err)
				}
			}
			if st := sim.Stats(); st.RRPCCalls != 2 || st.RRPCReplies != 2 {
				t.Errorf("RRPCCalls %d RRPCReplies %d, want 2 and 2", st.RRPCCalls, st.RRPCReplies)
			}
		})
	}
	t.Run("refusals", func(t *testing.T) {
		sim, _ := aliyunSim(t)
		c := firmware(t, sim, aliDN, aliSecret, sdkC3) // ext=0
		mustSubscribe(t, c, "/ext/rrpc/+/"+aliPK+"/"+aliDN+"/user/cmd", 0)
		for _, tc := range []struct {
			dn, topic string
			want      error
		}{
			{aliDN, userTopic(aliDN, "cmd"), cloudsim.ErrNoExtRRPC},
			{aliDN, sysT(aliDN, "thing/service/Reboot"), cloudsim.ErrNotSubscribed},
			{aliDN2, sysT(aliDN2, "rrpc/request"), cloudsim.ErrDeviceOffline},
		} {
			if _, err := sim.RRPC(t.Context(), aliPK, tc.dn, tc.topic, nil, 0); !errors.Is(err, tc.want) {
				t.Errorf("RRPC %q: %v, want %v", tc.topic, err, tc.want)
			}
		}
		if _, err := sim.RRPC(t.Context(), aliPK, aliDN, sysT(aliDN, "thing/event/property/post"), nil, 0); err == nil {
			t.Error("RRPC on a non-RRPC topic succeeded")
		}
		// Without ext bit 0 the custom-topic RRPC never reaches the device,
		// not even when someone publishes it.
		obs := mustObserve(t, sim, "/nothing")
		mustPublish(t, obs, "/ext/rrpc/5/"+aliPK+"/"+aliDN+"/user/cmd", 1, "sneaky")
		mustSubscribe(t, c, userTopic(aliDN, "get"), 1)
		if err := sim.Publish(aliPK, aliDN, userTopic(aliDN, "get"), []byte("marker"), 1); err != nil {
			t.Fatal(err)
		}
		if m := nextMsg(t, c); string(m.Payload()) != "marker" {
			t.Errorf("device without ext=1 got %q %s", m.Topic(), m.Payload())
		}
	})
	t.Run("timeout", func(t *testing.T) {
		sim, _ := aliyunSim(t)
		c := firmware(t, sim, aliDN, aliSecret, sdkLink4)
		ch := goRRPC(sim, aliDN, sysT(aliDN, "thing/service/Slow"), "ping", 50*time.Millisecond)
		nextMsg(t, c) // the device never answers
		if r := waitRRPC(t, ch); !errors.Is(r.err, cloudsim.ErrRRPCTimeout) {
			t.Fatalf("RRPC without reply: %v, want ErrRRPCTimeout", r.err)
		}
		if st := sim.Stats(); st.RRPCTimeouts != 1 {
			t.Errorf("RRPCTimeouts = %d", st.RRPCTimeouts)
		}
	})
	t.Run("enos system rrpc", func(t *testing.T) {
		sim, _ := enosSim(t)
		c := mustConnect(t, urlFor(sim, cloudsim.TCP), sign(t, secrets.EnOS, enosPK, enosDK, enosSecret, 2, ""))
		sys := "/sys/" + enosPK + "/" + enosDK + "/"
		if _, err := sim.RRPC(t.Context(), enosPK, enosDK, sys+"thing/service/x", nil, 0); err == nil {
			t.Error("EnOS accepted an /ext/rrpc call (Alibaba only)")
		}
		ch := make(chan rrpcResult, 1)
		go func() {
			r, err := sim.RRPC(context.Background(), enosPK, enosDK, sys+"rrpc/request", []byte("ping"), 0)
			ch <- rrpcResult{r, err}
		}()
		m := nextMsg(t, c) // pushed without SUBSCRIBE
		mustPublish(t, c, strings.Replace(m.Topic(), "/rrpc/request/", "/rrpc/response/", 1), 0, "pong")
		if r := waitRRPC(t, ch); r.err != nil || string(r.reply.Payload) != "pong" {
			t.Fatalf("EnOS RRPC: %+v %v", r.reply, r.err)
		}
	})
}

func same(s string) string { return s }

func TestControlRRPC(t *testing.T) {
	sim, _ := aliyunSim(t)
	srv := httptest.NewServer(sim.ControlHandler())
	t.Cleanup(srv.Close)
	api := controlClient{t, srv.URL}
	c := firmware(t, sim, aliDN, aliSecret, sdkLink4)
	go func() {
		m := <-c.msgs
		c.Publish(m.Topic(), 0, false, "pong")
	}()
	var got struct {
		MessageID, RequestTopic, Topic, Payload string
	}
	body := `{"productKey":"` + aliPK + `","deviceName":"` + aliDN + `","topic":"` + sysT(aliDN, "thing/service/Reboot") + `","payload":"ping"}`
	if err := json.Unmarshal(api.do("POST", "/rrpc", body, 200), &got); err != nil {
		t.Fatal(err)
	}
	if got.Payload != "pong" || got.MessageID == "" || got.Topic != "/ext/rrpc/"+got.MessageID+sysT(aliDN, "thing/service/Reboot") {
		t.Errorf("/rrpc reply %+v", got)
	}
	slow := strings.Replace(body, `"payload":"ping"`, `"payload":"ping","timeoutMs":20`, 1)
	api.do("POST", "/rrpc", slow, 504)
	api.do("POST", "/rrpc", strings.Replace(body, `"payload":"ping"`, `"timeoutMs":9000`, 1), 400)
	api.do("POST", "/rrpc", strings.Replace(body, aliDN, aliDN2, -1), 409)
}
