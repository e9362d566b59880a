package gateway_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/testutil"
)

// TestClientStringsClippedInLog: a client that sends a 65 KB clientId,
// username, topic, filter or admin request field makes no log line longer
// than 1 KiB, whichever part logs it (mochi, the local broker, the
// authenticator, the admin API), at debug level.
func TestClientStringsClippedInLog(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK, Dialect: "aliyun"}, nil)
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, "pump-long1"),
		DeviceSecret: "0123456789abcdef0123456789abcdef", LocalPassword: "local-pw-0001"}, nil)
	long := strings.Repeat("A", 65_000) + "\n\x1b[2Jtail"

	connect := func(url, cid, user, pw string) (mqtt.Client, error) {
		o := mqtt.NewClientOptions().AddBroker(url).SetClientID(cid).SetUsername(user).SetPassword(pw).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			t.Fatalf("connect %.20q: no CONNACK", cid)
		}
		return c, tok.Error()
	}
	// Refused logins: a long username, a long admin-looking one, a long
	// signed clientId.
	for _, login := range [][2]string{{long, long}, {long, long + "&" + admPK}, {long + "|securemode=3,signmethod=hmacsha1,timestamp=1|", "pump-long1&" + admPK}} {
		if _, err := connect("tcp://"+r.tcp, login[0], login[1], "x"); err == nil {
			t.Fatal("a bad login was accepted")
		}
	}
	// A device with a long clientId: a publish and a subscription outside
	// its namespace, then a QoS 2 publish (refused, disconnected).
	d, err := connect("tcp://"+r.tcp, long, "pump-long1&"+admPK, "local-pw-0001")
	if err != nil {
		t.Fatalf("device with a long clientId: %v", err)
	}
	d.Publish("/x/"+long, 1, false, "x").WaitTimeout(10 * time.Second)
	d.Subscribe("/x/"+long+"/#", 1, nil).WaitTimeout(10 * time.Second)
	d.Publish("/sys/"+admPK+"/pump-long1/"+long, 2, false, "x").WaitTimeout(10 * time.Second)
	// An admin with a long clientId sends requests with long fields.
	adm, err := connect("unix://"+r.sock, "adm-"+long, "", "")
	if err != nil {
		t.Fatalf("admin with a long clientId: %v", err)
	}
	for _, req := range []map[string]any{
		{"id": "long-1", "method": long},
		{"id": "long-2", "method": "device.get", "params": map[string]any{"productKey": long, "deviceName": long}},
		{"id": "long-3", "method": "device.add", "params": map[string]any{long: 1}},
	} {
		p, _ := json.Marshal(req)
		adm.Publish(adminapi.RequestTopic, 1, false, p).WaitTimeout(10 * time.Second)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		s := r.log.String()
		return strings.Contains(s, "QoS 2 publish refused") && strings.Count(s, `msg="admin request"`) >= 3 &&
			strings.Contains(s, `msg="client disconnected" part=broker device=`+admPK+"/pump-long1")
	}, "the log lines of the long requests")
	adm.Disconnect(0)

	n := 0
	for _, line := range strings.Split(r.log.String(), "\n") {
		if len(line) > 1024 {
			n++
			if n <= 5 {
				t.Errorf("a %d-byte log line: %.300s…", len(line), line)
			}
		}
	}
	if n > 0 {
		t.Errorf("%d log lines over 1 KiB", n)
	}
}
