package cloudsim_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

type controlClient struct {
	t    *testing.T
	base string
}

func (c controlClient) do(method, path, body string, wantStatus int) []byte {
	c.t.Helper()
	req, err := http.NewRequestWithContext(c.t.Context(), method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		c.t.Fatalf("%s %s %s: status %d, want %d: %s", method, path, body, resp.StatusCode, wantStatus, out)
	}
	if ct := resp.Header.Get("Content-Type"); wantStatus != http.StatusMethodNotAllowed && wantStatus != http.StatusNotFound && ct != "application/json" {
		c.t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	return out
}

func TestControlAPI(t *testing.T) {
	sim, _ := aliyunSim(t)
	srv := httptest.NewServer(sim.ControlHandler())
	t.Cleanup(srv.Close)
	api := controlClient{t, srv.URL}
	cr := sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, 3, "")
	rc := fromCreds(cr, 300)

	// refuse / accept
	api.do("POST", "/refuse", `{"code":4}`, 200)
	if got := rawConnackCode(t, sim.Addr(cloudsim.TCP), nil, rc); got != 4 {
		t.Errorf("after /refuse 4: code %d", got)
	}
	api.do("POST", "/accept", "", 200)

	// stall and delay change the knobs
	var k cloudsim.Knobs
	json.Unmarshal(api.do("POST", "/stall", `{"on":true}`, 200), &k)
	if !k.Stall {
		t.Error("/stall did not stall")
	}
	json.Unmarshal(api.do("POST", "/stall", `{"on":false}`, 200), &k)
	json.Unmarshal(api.do("POST", "/delay", `{"ms":25}`, 200), &k)
	if k.Stall || k.DelayMS != 25 || sim.Knobs().Delay != 25*time.Millisecond {
		t.Errorf("knobs after /stall false, /delay 25: %+v", k)
	}
	api.do("POST", "/delay", `{"ms":0}`, 200)

	// messages and publish
	c := aliTCP(t, sim, aliDN, aliSecret)
	down := userTopic(aliDN, "get")
	mustSubscribe(t, c, down, 1)
	mustPublish(t, c, userTopic(aliDN, "data"), 1, "one")
	mustPublish(t, c, userTopic(aliDN, "data"), 1, string([]byte{0xff, 0x00}))
	var msgs []map[string]any
	json.Unmarshal(api.do("GET", "/messages", "", 200), &msgs)
	if len(msgs) != 2 || msgs[0]["payload"] != "one" || msgs[1]["payloadBase64"] != "/wA=" || msgs[0]["deviceName"] != aliDN {
		t.Errorf("/messages: %v", msgs)
	}
	json.Unmarshal(api.do("GET", "/messages?since=1", "", 200), &msgs)
	if len(msgs) != 1 {
		t.Errorf("/messages?since=1: %d messages", len(msgs))
	}
	json.Unmarshal(api.do("GET", "/messages?deviceName="+aliDN2, "", 200), &msgs)
	if len(msgs) != 0 {
		t.Errorf("/messages for another device: %d messages", len(msgs))
	}
	api.do("POST", "/publish", `{"productKey":"`+aliPK+`","deviceName":"`+aliDN+`","topic":"`+down+`","payload":"go","qos":1}`, 200)
	if m := nextMsg(t, c); string(m.Payload()) != "go" {
		t.Errorf("device got %q", m.Payload())
	}
	api.do("POST", "/publish", `{"productKey":"`+aliPK+`","deviceName":"`+aliDN2+`","topic":"`+userTopic(aliDN2, "get")+`","payload":"go"}`, 409)

	// stats and devices
	var st struct {
		cloudsim.Stats
		Knobs cloudsim.Knobs `json:"knobs"`
	}
	json.Unmarshal(api.do("GET", "/stats", "", 200), &st)
	if st.Messages != 2 || st.ConnectsRefused[4] != 1 || st.Connected != 1 || !st.Knobs.Started {
		t.Errorf("/stats: %+v", st)
	}
	devs := string(api.do("GET", "/devices", "", 200))
	if !strings.Contains(devs, `"deviceName": "`+aliDN+`"`) || strings.Contains(devs, aliSecret) {
		t.Errorf("/devices: %s", devs)
	}

	// drop, down, up
	var dropped map[string]int
	json.Unmarshal(api.do("POST", "/drop", "{}", 200), &dropped)
	if dropped["dropped"] != 1 {
		t.Errorf("/drop: %v", dropped)
	}
	waitLost(t, c)
	api.do("POST", "/down", "", 200)
	if nc, err := net.DialTimeout("tcp", sim.Addr(cloudsim.TCP), time.Second); err == nil {
		nc.Close()
		t.Error("listening after /down")
	}
	api.do("POST", "/up", "", 200)
	aliTCP(t, sim, aliDN, aliSecret)

	// bad requests
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/refuse", `{"code":0}`, 400},
		{"POST", "/refuse", `{"code":6}`, 400},
		{"POST", "/refuse", `{}`, 400},
		{"POST", "/refuse", `{"code":3,"extra":1}`, 400},
		{"POST", "/refuse", `{"code":3}{"code":4}`, 400},
		{"POST", "/refuse", `not json`, 400},
		{"POST", "/stall", `{}`, 400},
		{"POST", "/delay", `{"ms":-1}`, 400},
		{"POST", "/drop", `{"now":true}`, 400},
		{"POST", "/publish", `{"productKey":"` + aliPK + `","deviceName":"` + aliDN + `","topic":"#"}`, 400},
		{"GET", "/messages?since=x", "", 400},
		{"GET", "/refuse", "", 405},
		{"POST", "/stats", "", 405},
		{"GET", "/nothing", "", 404},
	} {
		api.do(tc.method, tc.path, tc.body, tc.status)
	}
	if k := sim.Knobs(); k.Refuse != 0 {
		t.Errorf("a bad request changed the knobs: %+v", k)
	}
}
