package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

// TestAdminMethodsMQTT311 drives every method over MQTT 3.1.1 (paho, unix
// socket) and checks that each change takes effect at once: sessions start,
// reconnect with a rotated secret, stop on disable and removal.
func TestAdminMethodsMQTT311(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")

	var st adminapi.Status
	a.must(adminapi.MethodGatewayStatus, nil, &st)
	if st.Version == "" || st.Devices.Total != 0 || st.Cloud.Endpoint == "" || st.Spool.Budget == 0 || st.Sessions == nil {
		t.Fatalf("status: %+v", st)
	}

	// Products.
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK, Dialect: "aliyun"}, nil)
	a.expect(409, "already exists", adminapi.MethodProductAdd, map[string]any{"productKey": admPK})
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPKDyn, ProductSecret: "PrOdSeCrEt-77aa"}, nil)
	var ps []adminapi.Product
	a.must(adminapi.MethodProductList, nil, &ps)
	// Sorted by key: admPKDyn ("a1AdmD…") first.
	if len(ps) != 2 || ps[1].ProductKey != admPK || ps[1].HasProductSecret || !ps[0].HasProductSecret || ps[0].Dialect != "aliyun" {
		t.Fatalf("products: %+v", ps)
	}

	// device.add starts the cloud session at once.
	const dn = "pump-0001"
	sec1 := "DeViCeSeCrEt-one-0001"
	if err := r.sim.AddDevice(admPK, dn, secrets.NewSecret(sec1)); err != nil {
		t.Fatal(err)
	}
	var added adminapi.Device
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, dn), DeviceSecret: sec1, LocalPassword: "local-pw-0001"}, &added)
	if !added.HasDeviceSecret || !added.HasLocalPassword || added.State != "ready" || added.Disabled {
		t.Fatalf("added: %+v", added)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return r.sim.Connected(admPK, dn) }, "the cloud to see the new device")
	a.expect(409, "already exists", adminapi.MethodDeviceAdd, dev(admPK, dn, "deviceSecret", sec1))

	// A device added with no secret under a product with a productSecret
	// awaits activation; added disabled, it gets no session.
	var dyn adminapi.Device
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPKDyn, "valve-0001"), Disabled: true}, &dyn)
	if dyn.State != "awaiting-activation" || dyn.HasDeviceSecret || dyn.Session != "none" || !dyn.Disabled {
		t.Fatalf("dynamic device: %+v", dyn)
	}

	// device.get: record, session, queue; booleans only for secrets.
	var det adminapi.DeviceDetail
	testutil.Eventually(t, 10*time.Second, func() bool {
		a.must(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: did(admPK, dn)}, &det)
		return det.Session != nil && det.Session.State == "connected"
	}, "device.get to report the session connected")
	if det.Device.Dialect != "aliyun" || det.Queue.Device != admPK+"/"+dn || det.Session.Connects != 1 {
		t.Fatalf("device.get: %+v / %+v", det.Device, det.Session)
	}

	// device.list with filters and paging.
	var list adminapi.DeviceList
	a.must(adminapi.MethodDeviceList, nil, &list)
	if len(list.Devices) != 2 || list.Next != "" {
		t.Fatalf("list: %+v", list)
	}
	a.must(adminapi.MethodDeviceList, adminapi.DeviceListParams{Limit: 1}, &list)
	if len(list.Devices) != 1 || list.Next != admPKDyn+"/valve-0001" {
		t.Fatalf("page 1: %+v", list)
	}
	a.must(adminapi.MethodDeviceList, adminapi.DeviceListParams{Limit: 1, After: list.Next}, &list)
	if len(list.Devices) != 1 || list.Devices[0].DeviceName != dn || list.Next != "" {
		t.Fatalf("page 2: %+v", list)
	}
	for _, tc := range []struct {
		params adminapi.DeviceListParams
		want   []string
	}{
		{adminapi.DeviceListParams{ProductKey: admPKDyn}, []string{"valve-0001"}},
		{adminapi.DeviceListParams{State: "ready"}, []string{dn}},
		{adminapi.DeviceListParams{State: "awaiting-activation"}, []string{"valve-0001"}},
		{adminapi.DeviceListParams{State: "connected"}, []string{dn}},
		{adminapi.DeviceListParams{State: "none"}, []string{"valve-0001"}},
		{adminapi.DeviceListParams{State: "disabled"}, []string{"valve-0001"}},
		{adminapi.DeviceListParams{State: "enabled", ProductKey: admPK}, []string{dn}},
	} {
		a.must(adminapi.MethodDeviceList, tc.params, &list)
		var got []string
		for _, d := range list.Devices {
			got = append(got, d.DeviceName)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("device.list %v: got %v, want %v", tc.params, got, tc.want)
		}
	}

	// A local device logs in with its local password.
	local, err := r.connectDevice(admPK, dn, "local-pw-0001")
	if err != nil {
		t.Fatalf("local login: %v", err)
	}

	// Rotation: the cloud now only accepts the new secret; the session
	// reconnects with it.
	sec2 := "DeViCeSeCrEt-two-0002"
	if err := r.sim.AddDevice(admPK, dn, secrets.NewSecret(sec2)); err != nil {
		t.Fatal(err)
	}
	var upd adminapi.Device
	rep := a.must(adminapi.MethodDeviceUpdate, adminapi.DeviceUpdateParams{DeviceID: did(admPK, dn), DeviceSecret: sec2}, &upd)
	if !strings.Contains(rep.Message, "deviceSecret rotated") {
		t.Fatalf("rotate: %s", rep.Message)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		a.must(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: did(admPK, dn)}, &det)
		return det.Session != nil && det.Session.State == "connected" && det.Session.Connects >= 2
	}, "the session to reconnect with the rotated secret")
	// The same secret again is no change.
	rep = a.must(adminapi.MethodDeviceUpdate, adminapi.DeviceUpdateParams{DeviceID: did(admPK, dn), DeviceSecret: sec2}, nil)
	if !strings.Contains(rep.Message, "unchanged") {
		t.Fatalf("same secret: %s", rep.Message)
	}

	// Disable: session stops, the local connection is closed, logins are
	// refused.
	a.must(adminapi.MethodDeviceUpdate, adminapi.DeviceUpdateParams{DeviceID: did(admPK, dn), Disabled: new(true)}, &upd)
	if !upd.Disabled || upd.Session != "none" {
		t.Fatalf("disabled: %+v", upd)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return !r.sim.Connected(admPK, dn) }, "the cloud session to end")
	select {
	case <-local.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the disabled device's local connection was not closed")
	}
	if _, err := r.connectDevice(admPK, dn, "local-pw-0001"); err == nil {
		t.Fatal("a disabled device logged in")
	}
	a.must(adminapi.MethodDeviceUpdate, adminapi.DeviceUpdateParams{DeviceID: did(admPK, dn), Disabled: new(false)}, &upd)
	testutil.Eventually(t, 10*time.Second, func() bool { return r.sim.Connected(admPK, dn) }, "the re-enabled device's session")

	// Local password: remove it, then the device can no longer log in.
	a.must(adminapi.MethodDeviceUpdate, adminapi.DeviceUpdateParams{DeviceID: did(admPK, dn), LocalPassword: adminapi.Optional{Clear: true}}, &upd)
	if upd.HasLocalPassword {
		t.Fatalf("password not removed: %+v", upd)
	}
	if _, err := r.connectDevice(admPK, dn, "local-pw-0001"); err == nil {
		t.Fatal("logged in with a removed local password")
	}
	a.must(adminapi.MethodDeviceUpdate, adminapi.DeviceUpdateParams{DeviceID: did(admPK, dn), LocalPassword: adminapi.Optional{Value: "local-pw-0002"}, ClientID: adminapi.Optional{Value: "pump1.cloud"}}, &upd)
	if !upd.HasLocalPassword || upd.ClientID != "pump1.cloud" {
		t.Fatalf("update: %+v", upd)
	}
	if _, err := r.connectDevice(admPK, dn, "local-pw-0002"); err != nil {
		t.Fatalf("new local password: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		a.must(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: did(admPK, dn)}, &det)
		return det.Session != nil && det.Session.State == "connected" && strings.HasPrefix(det.Session.ClientID, "pump1.cloud|")
	}, "the session with the new clientId")

	// Queues.
	var qs adminapi.QueueStats
	a.must(adminapi.MethodQueueStats, nil, &qs)
	if qs.Totals == nil || qs.Device != nil {
		t.Fatalf("queue totals: %+v", qs)
	}
	a.must(adminapi.MethodQueueStats, adminapi.QueueStatsParams{Device: new(did(admPK, dn))}, &qs)
	if qs.Device == nil || qs.Device.Device != admPK+"/"+dn {
		t.Fatalf("queue stats: %+v", qs)
	}
	var purged adminapi.Purged
	a.must(adminapi.MethodQueuePurge, adminapi.QueuePurgeParams{DeviceID: did(admPK, dn)}, &purged)
	a.expect(404, "not found", adminapi.MethodQueuePurge, dev(admPK, "nosuchdev"))

	// product.remove refuses while devices exist.
	a.expect(409, "still has 1 devices", adminapi.MethodProductRemove, map[string]any{"productKey": admPK})

	// Import a small batch: two good rows, one bad.
	var imp adminapi.ImportResult
	a.must(adminapi.MethodDeviceImport, adminapi.DeviceImportParams{Rows: []adminapi.ImportRow{
		{Line: 2, ProductKey: admPK, DeviceName: "imp-0001", DeviceSecret: "ImPoRt-secret-0001"},
		{Line: 3, ProductKey: admPK, DeviceName: "x", DeviceSecret: "ImPoRt-secret-0002"},
		{Line: 4, ProductKey: admPK, DeviceName: "imp-0003", DeviceSecret: "ImPoRt-secret-0003"},
	}}, &imp)
	if imp.Added != 2 || imp.Failed != 1 || len(imp.Errors) != 1 || imp.Errors[0].Line != 3 || imp.Errors[0].Code != 400 ||
		!strings.Contains(imp.Errors[0].Message, "deviceName") {
		t.Fatalf("import: %+v", imp)
	}

	// Removal with discard ends the session; the device is gone.
	a.expect(400, "params.spool: required", adminapi.MethodDeviceRemove, dev(admPK, dn))
	var rm adminapi.Removed
	a.must(adminapi.MethodDeviceRemove, adminapi.DeviceRemoveParams{DeviceID: did(admPK, dn), Spool: adminapi.SpoolDiscard}, &rm)
	if rm.State != "removed" || rm.Spool != "discard" {
		t.Fatalf("remove: %+v", rm)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return !r.sim.Connected(admPK, dn) }, "the removed device's session to end")
	a.expect(404, "not found", adminapi.MethodDeviceGet, dev(admPK, dn))
	for _, name := range []string{"imp-0001", "imp-0003"} {
		a.must(adminapi.MethodDeviceRemove, adminapi.DeviceRemoveParams{DeviceID: did(admPK, name), Spool: adminapi.SpoolDrain}, nil)
	}
	a.must(adminapi.MethodProductRemove, adminapi.ProductRemoveParams{ProductKey: admPK}, nil)
	a.expect(404, "not found", adminapi.MethodProductRemove, map[string]any{"productKey": admPK})

	// Every change left an audit line naming who and what.
	logs := r.log.String()
	for _, want := range []string{
		`msg="admin change" part=admin admin=unix via=unix`,
		`method=device.add target=` + admPK + `/` + dn + ` change=added`,
		`method=device.update target=` + admPK + `/` + dn + ` change="deviceSecret rotated"`,
		`change=disabled`,
		`method=device.remove target=` + admPK + `/` + dn + ` change=removed spool=discard`,
		`method=product.remove target=` + admPK + ` change="product removed"`,
		`method=device.import target=` + admPK + `/imp-0001 change=added`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("no audit line containing %q", want)
		}
	}
}

// TestAdminBadRequests checks the documented codes and that nothing partial
// is stored.
func TestAdminBadRequests(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK}, nil)
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, "pump-0001"), DeviceSecret: "GoOd-secret-0001"}, nil)

	// Raw envelopes.
	for _, tc := range []struct {
		payload string
		id      string
		want    string
	}{
		{`not json`, "", "request: invalid JSON at byte 2"},
		{`[1,2]`, "", "request: want a JSON object"},
		{`null`, "", "got null"},
		{`{"id":"r1"}`, "r1", "method: required"},
		{`{"id":"r2","method":"device.frobnicate"}`, "r2", `method "device.frobnicate": unknown`},
		{`{"id":"r3","method":7}`, "r3", "method: want a string"},
		{`{"id":"r4","method":"gateway.status","extra":1}`, "r4", `request: unknown field "extra"`},
		{`{"id":{"a":1},"method":"gateway.status"}`, "", "id: want a string or a number"},
		{`{"id":"r5","method":"device.get","params":[1]}`, "r5", "params: want a JSON object"},
		{`{"id":"r6","method":"gateway.status","params":{"verbose":true}}`, "r6", `params."verbose": unknown parameter`},
	} {
		rep := a.raw([]byte(tc.payload), tc.id)
		if rep.Code != 400 || !strings.Contains(rep.Message, tc.want) {
			t.Errorf("%s: got %d %q, want 400 containing %q", tc.payload, rep.Code, rep.Message, tc.want)
		}
	}
	// A numeric id is echoed as a number.
	rep := a.raw([]byte(`{"id":42,"method":"gateway.status"}`), "")
	if rep.Code != 200 || string(rep.ID) != "42" {
		t.Errorf("numeric id: %d %s", rep.Code, rep.ID)
	}

	for _, tc := range []struct {
		name   string
		method string
		params map[string]any
		code   int
		want   string
	}{
		{"missing deviceName", adminapi.MethodDeviceGet, map[string]any{"productKey": admPK}, 400, "params.deviceName: required"},
		{"slash in name", adminapi.MethodDeviceGet, dev(admPK, "a/b"), 400, "params.deviceName"},
		{"wrong type", adminapi.MethodDeviceGet, dev(admPK, "pump-0001", "productKey", 5), 400, "params.productKey: want a string"},
		{"unknown param", adminapi.MethodDeviceGet, dev(admPK, "pump-0001", "devicename", "x"), 400, `params."devicename": unknown parameter`},
		{"unknown device", adminapi.MethodDeviceGet, dev(admPK, "nope-0001"), 404, "device " + admPK + "/nope-0001: not found"},
		{"unknown product", adminapi.MethodDeviceAdd, dev("a1NoSuchPrd", "pump-0002", "deviceSecret", "GoOd-secret-0002"), 404, "product a1NoSuchPrd: not found"},
		{"secret with a space", adminapi.MethodDeviceAdd, dev(admPK, "pump-0002", "deviceSecret", "BaD secret 0002"), 400, "params.deviceSecret: byte 3 is whitespace"},
		{"secret with a newline", adminapi.MethodDeviceAdd, dev(admPK, "pump-0002", "deviceSecret", "BaDsecret0002\n"), 400, "params.deviceSecret: byte 13"},
		{"secret too long", adminapi.MethodDeviceAdd, dev(admPK, "pump-0002", "deviceSecret", strings.Repeat("Z", 513)), 400, "params.deviceSecret: is 513 bytes"},
		{"secret missing", adminapi.MethodDeviceAdd, dev(admPK, "pump-0002"), 400, "params.deviceSecret: required"},
		{"secret not a string", adminapi.MethodDeviceAdd, dev(admPK, "pump-0002", "deviceSecret", 12345), 400, "params.deviceSecret: want a string"},
		{"bad device name", adminapi.MethodDeviceAdd, dev(admPK, "ab", "deviceSecret", "GoOd-secret-0002"), 400, `params.deviceName "ab": must be 4-32 characters`},
		{"bad clientId", adminapi.MethodDeviceAdd, dev(admPK, "pump-0002", "deviceSecret", "GoOd-secret-0002", "clientId", "a|b"), 400, "params.clientId"},
		{"bad local password", adminapi.MethodDeviceAdd, dev(admPK, "pump-0002", "deviceSecret", "GoOd-secret-0002", "localPassword", "pw\x01x"), 400, "params.localPassword: byte 2 is a control character"},
		{"disabled not bool", adminapi.MethodDeviceAdd, dev(admPK, "pump-0002", "deviceSecret", "GoOd-secret-0002", "disabled", "yes"), 400, "params.disabled: want true or false"},
		{"duplicate device", adminapi.MethodDeviceAdd, dev(admPK, "pump-0001", "deviceSecret", "GoOd-secret-0001"), 409, "already exists"},
		{"update nothing", adminapi.MethodDeviceUpdate, dev(admPK, "pump-0001"), 400, "params: nothing to change"},
		{"clear secret", adminapi.MethodDeviceUpdate, dev(admPK, "pump-0001", "deviceSecret", nil), 400, "params.deviceSecret: cannot be cleared"},
		{"update unknown", adminapi.MethodDeviceUpdate, dev(admPK, "nope-0001", "disabled", true), 404, "not found"},
		{"update bad secret", adminapi.MethodDeviceUpdate, dev(admPK, "pump-0001", "deviceSecret", "x y"), 400, "params.deviceSecret: byte 1"},
		{"remove bad spool", adminapi.MethodDeviceRemove, dev(admPK, "pump-0001", "spool", "maybe"), 400, `params.spool "maybe": want "discard" or "drain"`},
		{"remove timeout with discard", adminapi.MethodDeviceRemove, dev(admPK, "pump-0001", "spool", "discard", "timeout", "5s"), 400, "params.timeout: only with spool"},
		{"remove bad timeout", adminapi.MethodDeviceRemove, dev(admPK, "pump-0001", "spool", "drain", "timeout", "soon"), 400, "params.timeout"},
		{"remove timeout too long", adminapi.MethodDeviceRemove, dev(admPK, "pump-0001", "spool", "drain", "timeout", "5h"), 400, "params.timeout: 5h0m0s is out of range"},
		{"remove unknown", adminapi.MethodDeviceRemove, dev(admPK, "nope-0001", "spool", "discard"), 404, "not found"},
		{"list limit", adminapi.MethodDeviceList, map[string]any{"limit": 0}, 400, "params.limit: 0 is out of range"},
		{"list limit fraction", adminapi.MethodDeviceList, map[string]any{"limit": 1.5}, 400, "params.limit: want a whole number"},
		{"list state", adminapi.MethodDeviceList, map[string]any{"state": "sleepy"}, 400, `params.state "sleepy": unknown`},
		{"product bad key", adminapi.MethodProductAdd, map[string]any{"productKey": "a b"}, 400, "params.productKey"},
		{"product bad dialect", adminapi.MethodProductAdd, map[string]any{"productKey": "a1Other0001", "dialect": "azure"}, 400, `params.dialect "azure"`},
		{"product bad secret", adminapi.MethodProductAdd, map[string]any{"productKey": "a1Other0001", "productSecret": "p s"}, 400, "params.productSecret: byte 1"},
		{"product missing key", adminapi.MethodProductAdd, map[string]any{}, 400, "params.productKey: required"},
		{"product in use", adminapi.MethodProductRemove, map[string]any{"productKey": admPK}, 409, "still has 1 devices"},
		{"product unknown", adminapi.MethodProductRemove, map[string]any{"productKey": "a1NoSuchPrd"}, 404, "not found"},
		{"import no rows", adminapi.MethodDeviceImport, map[string]any{"rows": []any{}}, 400, "params.rows: 0 rows"},
		{"import rows not array", adminapi.MethodDeviceImport, map[string]any{"rows": "x"}, 400, "params.rows: want an array"},
		{"import too many", adminapi.MethodDeviceImport, map[string]any{"rows": make([]adminapi.ImportRow, adminapi.ImportMax+1)}, 400, "1001 rows"},
		{"queue stats half a device", adminapi.MethodQueueStats, map[string]any{"productKey": admPK}, 400, "params.deviceName: required"},
	} {
		rep := a.call(tc.method, tc.params)
		if rep.Code != tc.code || !strings.Contains(rep.Message, tc.want) {
			t.Errorf("%s: got %d %q, want %d containing %q", tc.name, rep.Code, rep.Message, tc.code, tc.want)
		}
	}

	// Nothing partial was stored: the failed adds left no device and no
	// product behind, the untouched device is unchanged.
	var list adminapi.DeviceList
	a.must(adminapi.MethodDeviceList, nil, &list)
	if len(list.Devices) != 1 || list.Devices[0].DeviceName != "pump-0001" || list.Devices[0].Disabled {
		t.Fatalf("devices after bad requests: %+v", list.Devices)
	}
	var ps []adminapi.Product
	a.must(adminapi.MethodProductList, nil, &ps)
	if len(ps) != 1 {
		t.Fatalf("products after bad requests: %+v", ps)
	}
	// Import rows fail one by one; the good ones are stored.
	var imp adminapi.ImportResult
	a.must(adminapi.MethodDeviceImport, map[string]any{"rows": []any{
		map[string]any{"line": 2, "productKey": admPK, "deviceName": "good-0001", "deviceSecret": "GoOd-secret-0003"},
		map[string]any{"line": 3, "productKey": admPK, "deviceName": "bad-0001", "deviceSecret": "BaD secret"},
		map[string]any{"line": 4, "productKey": admPK},
		map[string]any{"line": 5, "productKey": admPK, "deviceName": "bad-0002", "deviceSecret": "x", "color": "red"},
		"not an object",
		map[string]any{"line": 7, "productKey": admPK, "deviceName": "dyn-0001"},
		map[string]any{"line": 8, "productKey": "a b", "deviceName": "bad-0003", "deviceSecret": "GoOd-secret-0004"},
	}}, &imp)
	wantErrs := map[int]string{3: "DeviceSecret: byte 3 is whitespace", 4: "DeviceName: empty", 5: `params.rows[3]."color": unknown parameter`,
		0: "params.rows[4]: want an object", 7: "DeviceSecret: empty, and product " + admPK + " has no productSecret", 8: `productKey "a b"`}
	if imp.Added != 1 || imp.Failed != 6 || len(imp.Errors) != 6 {
		t.Fatalf("import: %+v", imp)
	}
	for _, e := range imp.Errors {
		if want, ok := wantErrs[e.Line]; !ok || e.Code != 400 || !strings.Contains(e.Message, want) {
			t.Errorf("import error %+v: want 400 containing %q", e, want)
		}
	}
	a.must(adminapi.MethodDeviceList, nil, &list)
	if len(list.Devices) != 2 {
		t.Fatalf("devices after import: %+v", list.Devices)
	}
}

// TestAdminRefusesNonAdmins: a device can neither read admin replies nor
// send requests; a wrong admin password is refused; the configured admin
// user works on the TCP listener.
func TestAdminRefusesNonAdmins(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK}, nil)
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, "pump-0001"), DeviceSecret: "GoOd-secret-0001", LocalPassword: "local-pw-0001"}, nil)

	d, err := r.connectDevice(admPK, "pump-0001", "local-pw-0001")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 4)
	tok := d.c.Subscribe(adminapi.ResponseTopic, 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Payload() })
	testutil.WaitToken(t, tok, 10*time.Second, "device subscribe")
	if code := tok.(*mqtt.SubscribeToken).Result()[adminapi.ResponseTopic]; code != 0x80 {
		t.Fatalf("device subscription to the response topic: SUBACK %#x, want 0x80", code)
	}
	before := r.replies.count()
	// Refused like any publish outside the device's namespace: a 3.1.1
	// device gets its PUBACK (so it does not reconnect and resend for
	// ever) and the request goes nowhere.
	testutil.WaitToken(t, d.c.Publish(adminapi.RequestTopic, 1, false, `{"id":"evil","method":"device.remove","params":{"productKey":"`+admPK+`","deviceName":"pump-0001","spool":"discard"}}`),
		10*time.Second, "device's admin request acknowledged and dropped")
	// Nothing was done: the device still exists and nobody got a reply.
	a.must(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: did(admPK, "pump-0001")}, nil)
	testutil.Eventually(t, 10*time.Second, func() bool { return r.replies.count() > before }, "the observer to see the device.get reply")
	if all := r.replies.joined(); strings.Contains(all, `"evil"`) {
		t.Fatalf("the device's request was answered: %s", all)
	}
	select {
	case p := <-got:
		t.Fatalf("device received an admin reply: %s", p)
	default:
	}

	// Network admins: wrong password refused, right one served.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	bad, err := adminapi.Dial(ctx, adminapi.Options{URL: "tcp://" + r.tcp, User: "ops", Password: "wrong", Name: "bad-admin"})
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		if bad != nil {
			bad.Close()
		}
		t.Fatal("admin with a wrong password connected")
	}
	netAdmin := r.dialAdmin("tcp://"+r.tcp, "ops", admAdminPassword)
	var st adminapi.Status
	netAdmin.must(adminapi.MethodGatewayStatus, nil, &st)
	if st.Devices.Total != 1 {
		t.Fatalf("status over TCP: %+v", st.Devices)
	}
	if logs := r.log.String(); strings.Contains(logs, `target=`+admPK+`/pump-0001 change=removed`) {
		t.Fatal("the device's request was executed")
	}
}

// TestAdminDrainAndDiscard: removal with spool "drain" delivers the queue
// first (and reports a drain that cannot finish); "discard" drops it.
func TestAdminDrainAndDiscard(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK}, nil)
	names := []string{"drain-0001", "drop-0001"}
	devs := map[string]*admDevice{}
	for i, dn := range names {
		sec := fmt.Sprintf("DrAiN-secret-%04d", i)
		if err := r.sim.AddDevice(admPK, dn, secrets.NewSecret(sec)); err != nil {
			t.Fatal(err)
		}
		a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, dn), DeviceSecret: sec, LocalPassword: "pw-" + dn}, nil)
		testutil.Eventually(t, 10*time.Second, func() bool { return r.sim.Connected(admPK, dn) }, "%s connected to the cloud", dn)
		d, err := r.connectDevice(admPK, dn, "pw-"+dn)
		if err != nil {
			t.Fatal(err)
		}
		devs[dn] = d
	}

	// The cloud goes away; each device publishes 5 messages, which wait in
	// the spool.
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	for _, dn := range names {
		for i := range 5 {
			testutil.WaitToken(t, devs[dn].c.Publish(propertyTopic(admPK, dn), 1, false, fmt.Sprintf(`{"id":"%d","params":{"n":%d}}`, i, i)), 10*time.Second, "publish")
		}
	}
	var qs adminapi.QueueStats
	for _, dn := range names {
		a.must(adminapi.MethodQueueStats, adminapi.QueueStatsParams{Device: new(did(admPK, dn))}, &qs)
		if qs.Device.Depth != 5 {
			t.Fatalf("%s queued %d, want 5", dn, qs.Device.Depth)
		}
	}

	// Drain while the cloud is down: it times out; the device is kept
	// disabled with its queue and without a session.
	start := time.Now()
	rep := a.expect(409, "not removed: 5 messages still queued after 1s", adminapi.MethodDeviceRemove, dev(admPK, "drain-0001", "spool", "drain", "timeout", "1s"))
	if took := time.Since(start); took < time.Second {
		t.Fatalf("drain reply after %s, before its timeout", took)
	}
	var rm adminapi.Removed
	if err := json.Unmarshal(rep.Data, &rm); err != nil || rm.State != "disabled" || rm.Queued != 5 {
		t.Fatalf("timed-out drain: %v %+v", err, rm)
	}
	select {
	case <-devs["drain-0001"].lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the device being removed kept its local connection")
	}
	var det adminapi.DeviceDetail
	a.must(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: did(admPK, "drain-0001")}, &det)
	if !det.Device.Disabled || det.Session != nil || det.Queue.Depth != 5 || det.Device.Removing {
		t.Fatalf("after a timed-out drain: %+v session %+v", det.Device, det.Session)
	}

	// A drain that cannot progress (the cloud is down) is cancelled by a
	// discard: the device is removed with its queue, the drain request is
	// answered 409. Meanwhile the device cannot be changed or drained twice.
	drainReply := make(chan adminapi.Reply, 1)
	go func() {
		drainReply <- a.raw([]byte(`{"id":"`+a.name+`-drop","method":"device.remove","params":{"productKey":"`+admPK+
			`","deviceName":"drop-0001","spool":"drain","timeout":"1m"}}`), a.name+"-drop")
	}()
	testutil.Eventually(t, 10*time.Second, func() bool {
		var det adminapi.DeviceDetail
		a.must(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: did(admPK, "drop-0001")}, &det)
		return det.Device.Removing && det.Device.Disabled
	}, "drop-0001 to be draining")
	a.expect(409, "being removed", adminapi.MethodDeviceUpdate, dev(admPK, "drop-0001", "disabled", false))
	a.expect(409, "already being removed", adminapi.MethodDeviceRemove, dev(admPK, "drop-0001", "spool", "drain"))
	a.must(adminapi.MethodDeviceRemove, adminapi.DeviceRemoveParams{DeviceID: did(admPK, "drop-0001"), Spool: adminapi.SpoolDiscard}, &rm)
	if rm.State != "removed" || rm.Discarded != 5 {
		t.Fatalf("discard: %+v, want 5 discarded", rm)
	}
	select {
	case rep := <-drainReply:
		if rep.Code != 409 || !strings.Contains(rep.Message, "drain cancelled") {
			t.Fatalf("cancelled drain: %d %s", rep.Code, rep.Message)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancelled drain got no reply")
	}
	a.expect(404, "not found", adminapi.MethodQueueStats, dev(admPK, "drop-0001"))

	// The cloud comes back; a second drain delivers everything, in order,
	// then removes the device.
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	rep = a.must(adminapi.MethodDeviceRemove, adminapi.DeviceRemoveParams{DeviceID: did(admPK, "drain-0001"), Spool: adminapi.SpoolDrain, Timeout: new(30 * time.Second)}, &rm)
	if rm.State != "removed" || rm.Discarded != 0 {
		t.Fatalf("drain: %s %+v", rep.Message, rm)
	}
	recs := r.sim.MessagesFor(admPK, "drain-0001")
	var got []string
	for _, m := range recs {
		if !m.Dup {
			got = append(got, string(m.Payload))
		}
	}
	if len(got) != 5 || !strings.Contains(got[0], `"n":0`) || !strings.Contains(got[4], `"n":4`) {
		t.Fatalf("cloud received %d messages from the drained device: %q", len(got), got)
	}
	a.expect(404, "not found", adminapi.MethodDeviceGet, dev(admPK, "drain-0001"))
	testutil.Eventually(t, 10*time.Second, func() bool { return !r.sim.Connected(admPK, "drain-0001") }, "the drained device's session to end")

	if recs := r.sim.MessagesFor(admPK, "drop-0001"); len(recs) != 0 {
		t.Fatalf("the cloud received %d discarded messages", len(recs))
	}

	// Drain of a device with an empty queue removes it at once.
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, "empty-0001"), DeviceSecret: "EmPtY-secret-0001"}, nil)
	a.must(adminapi.MethodDeviceRemove, adminapi.DeviceRemoveParams{DeviceID: did(admPK, "empty-0001"), Spool: adminapi.SpoolDrain}, &rm)
	if rm.State != "removed" {
		t.Fatalf("drain of an empty queue: %+v", rm)
	}
}

// TestAdminChangesSurviveRestart: what the API stored is there after a
// restart, and sessions start from it.
func TestAdminChangesSurviveRestart(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK}, nil)
	if err := r.sim.AddDevice(admPK, "keep-0001", secrets.NewSecret("KeEp-secret-0001")); err != nil {
		t.Fatal(err)
	}
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, "keep-0001"), DeviceSecret: "KeEp-secret-0001"}, nil)
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, "off-0001"), DeviceSecret: "OfF-secret-0001", Disabled: true}, nil)
	testutil.Eventually(t, 10*time.Second, func() bool { return r.sim.Connected(admPK, "keep-0001") }, "session")
	r.stop()
	testutil.Eventually(t, 10*time.Second, func() bool { return !r.sim.Connected(admPK, "keep-0001") }, "session to end with the gateway")

	r.start()
	a = r.dialAdmin("unix://"+r.sock, "", "")
	var list adminapi.DeviceList
	a.must(adminapi.MethodDeviceList, nil, &list)
	if len(list.Devices) != 2 || list.Devices[0].DeviceName != "keep-0001" || !list.Devices[1].Disabled {
		t.Fatalf("after restart: %+v", list.Devices)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return r.sim.Connected(admPK, "keep-0001") }, "session after restart")
}

// TestAdminNoSecretInRepliesOrLogs runs every kind of request carrying
// secrets — good and malformed — and checks that no reply and no log line
// (the audit lines included) contains any of them.
func TestAdminNoSecretInRepliesOrLogs(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")
	ops := r.dialAdmin("tcp://"+r.tcp, "ops", admAdminPassword)
	secretsUsed := []string{admAdminPassword}
	s := func(tag string) string {
		v := "LeAk" + tag + fmt.Sprintf("%08x", time.Now().UnixNano()&0xffffffff)
		secretsUsed = append(secretsUsed, v)
		return v
	}
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPKDyn, ProductSecret: s("Prod")}, nil)
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK}, nil)
	sec := s("Dev1")
	if err := r.sim.AddDevice(admPK, "leak-0001", secrets.NewSecret(sec)); err != nil {
		t.Fatal(err)
	}
	pw := s("Pw1")
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, "leak-0001"), DeviceSecret: sec, LocalPassword: pw}, nil)
	testutil.Eventually(t, 10*time.Second, func() bool { return r.sim.Connected(admPK, "leak-0001") }, "session")
	if _, err := r.connectDevice(admPK, "leak-0001", pw); err != nil {
		t.Fatal(err)
	}
	a.expect(409, "already exists", adminapi.MethodDeviceAdd, dev(admPK, "leak-0001", "deviceSecret", s("Dup")))
	ops.must(adminapi.MethodDeviceUpdate, adminapi.DeviceUpdateParams{DeviceID: did(admPK, "leak-0001"), DeviceSecret: s("Rot"),
		LocalPassword: adminapi.Optional{Value: s("Pw2")}}, nil)
	a.must(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: did(admPK, "leak-0001")}, nil)
	a.must(adminapi.MethodDeviceList, nil, nil)
	a.must(adminapi.MethodGatewayStatus, nil, nil)
	// Malformed secrets: their errors must not quote them.
	bad := s("Bad") + " tail"
	secretsUsed = append(secretsUsed, bad)
	a.expect(400, "params.deviceSecret", adminapi.MethodDeviceAdd, dev(admPK, "leak-0002", "deviceSecret", bad))
	a.expect(400, "params.localPassword", adminapi.MethodDeviceAdd, dev(admPK, "leak-0002", "deviceSecret", s("Ok"), "localPassword", s("Ctl")+"\x02"))
	a.expect(400, "params.productSecret", adminapi.MethodProductAdd, map[string]any{"productKey": "a1Leaky0001", "productSecret": bad})
	// Secrets in invalid JSON and in wrongly typed fields.
	a.raw([]byte(`{"method":"device.add","params":{"deviceSecret":`+s("Raw")+`}}`), "")
	a.expect(400, "params.deviceSecret: want a string", adminapi.MethodDeviceAdd, dev(admPK, "leak-0002", "deviceSecret", []string{s("Arr")}))
	var imp adminapi.ImportResult
	a.must(adminapi.MethodDeviceImport, adminapi.DeviceImportParams{Rows: []adminapi.ImportRow{
		{Line: 2, ProductKey: admPK, DeviceName: "leak-0003", DeviceSecret: s("Imp")},
		{Line: 3, ProductKey: admPK, DeviceName: "leak-0001", DeviceSecret: s("ImpRot")},
		{Line: 4, ProductKey: admPK, DeviceName: "leak-0004", DeviceSecret: s("ImpBad") + "\t"},
		{Line: 5, ProductKey: admPK, DeviceName: "l", DeviceSecret: s("ImpName")},
	}}, &imp)
	if imp.Added != 1 || imp.Updated != 1 || imp.Failed != 2 {
		t.Fatalf("import: %+v", imp)
	}
	a.must(adminapi.MethodDeviceRemove, adminapi.DeviceRemoveParams{DeviceID: did(admPK, "leak-0001"), Spool: adminapi.SpoolDiscard}, nil)

	testutil.Eventually(t, 10*time.Second, func() bool {
		return strings.Count(r.replies.joined(), `"code":`) >= 15
	}, "the observer to see every reply")
	replies, logs := r.replies.joined(), r.log.String()
	if !strings.Contains(logs, `msg="admin change"`) {
		t.Fatal("no audit lines captured")
	}
	for _, v := range secretsUsed {
		for _, probe := range []string{v, strings.TrimSpace(strings.Fields(v)[0])} {
			if strings.Contains(replies, probe) {
				t.Errorf("an admin reply contains the secret %q", probe)
			}
			if strings.Contains(logs, probe) {
				t.Errorf("the log contains the secret %q", probe)
			}
		}
	}
}

// TestAdminDrainInterruptedByStop: a drain still waiting when the gateway
// stops ends without removing anything; after the restart the device is
// disabled with its queue intact.
func TestAdminDrainInterruptedByStop(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK}, nil)
	if err := r.sim.AddDevice(admPK, "stop-0001", secrets.NewSecret("StOp-secret-0001")); err != nil {
		t.Fatal(err)
	}
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, "stop-0001"), DeviceSecret: "StOp-secret-0001", LocalPassword: "pw-stop-0001"}, nil)
	testutil.Eventually(t, 10*time.Second, func() bool { return r.sim.Connected(admPK, "stop-0001") }, "session")
	d, err := r.connectDevice(admPK, "stop-0001", "pw-stop-0001")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		testutil.WaitToken(t, d.c.Publish(propertyTopic(admPK, "stop-0001"), 1, false, fmt.Sprintf(`{"n":%d}`, i)), 10*time.Second, "publish")
	}
	// The reply to this request never comes: the gateway stops first, and
	// the call ends with the connection.
	unanswered := make(chan struct{})
	go func() {
		defer close(unanswered)
		_, _ = a.api.DoRaw(t.Context(), []byte(`{"id":"stop","method":"device.remove","params":{"productKey":"`+admPK+
			`","deviceName":"stop-0001","spool":"drain","timeout":"10m"}}`), "stop")
	}()
	testutil.Eventually(t, 10*time.Second, func() bool {
		var det adminapi.DeviceDetail
		a.must(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: did(admPK, "stop-0001")}, &det)
		return det.Device.Removing
	}, "the drain to start")
	start := time.Now()
	r.stop()
	testutil.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(r.log.String(), "not removed: the gateway is stopping; it stays disabled with 3 queued messages")
	}, "the drain to give up")
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("stop took %s with a drain waiting", took)
	}
	select {
	case <-unanswered:
	case <-time.After(10 * time.Second):
	}

	r.start()
	a = r.dialAdmin("unix://"+r.sock, "", "")
	var det adminapi.DeviceDetail
	a.must(adminapi.MethodDeviceGet, adminapi.DeviceGetParams{DeviceID: did(admPK, "stop-0001")}, &det)
	if !det.Device.Disabled || det.Device.Removing || det.Session != nil || det.Queue.Depth != 3 {
		t.Fatalf("after restart: %+v session %+v queue %d", det.Device, det.Session, det.Queue.Depth)
	}
}
