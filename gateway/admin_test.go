package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// Product keys of the admin tests (Alibaba form: letters and digits).
const (
	admPK    = "a1AdmProd01"
	admPKDyn = "a1AdmDynam1" // has a productSecret
)

// admAdminPassword is the network admin's password (a secret: it must not
// show up anywhere either).
const admAdminPassword = "Adm1nPa55-k7Q9zW"

// admLog collects the gateway's log lines.
type admLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *admLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *admLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// admRig is a cloud simulator and a gateway with a TCP and a unix socket
// listener, and an observer admin client that records every admin reply.
type admRig struct {
	t       *testing.T
	sim     *cloudsim.Sim
	cfg     *config.Config
	gw      *gateway.Gateway
	log     *admLog
	sock    string // the admin unix socket
	tcp     string // host:port of the TCP listener
	stop    func()
	replies *admReplies
}

// admReplies records every payload published under $edgegw/admin/.
type admReplies struct {
	mu  sync.Mutex
	all [][]byte
}

func (r *admReplies) add(p []byte) {
	r.mu.Lock()
	r.all = append(r.all, append([]byte(nil), p...))
	r.mu.Unlock()
}

func (r *admReplies) joined() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(bytes.Join(r.all, []byte("\n")))
}

func (r *admReplies) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.all)
}

func newAdmRig(t *testing.T) *admRig {
	t.Helper()
	sim, err := cloudsim.New(cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", DeviceRate: cloudsim.RateUnlimited})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })

	dir := t.TempDir()
	// Unix socket paths are limited to 108 bytes: keep this one short.
	sockDir, err := os.MkdirTemp("", "egw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	pwFile := filepath.Join(dir, "admin.pw")
	if err := os.WriteFile(pwFile, []byte(admAdminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0", "unix://" + filepath.Join(sockDir, "admin.sock")}
	cfg.Broker.Admin = []config.AdminUser{{User: "ops", PasswordFile: pwFile}}
	cfg.Cloud.Endpoint = "tcp://" + sim.Addr(cloudsim.TCP)
	cfg.Cloud.BackoffMin = config.Duration(50 * time.Millisecond)
	cfg.Cloud.BackoffMax = config.Duration(300 * time.Millisecond)
	cfg.Metrics.Listen = ""
	cfg.Shutdown.Timeout = config.Duration(5 * time.Second)
	r := &admRig{t: t, sim: sim, cfg: cfg, log: &admLog{}, sock: filepath.Join(sockDir, "admin.sock"), replies: &admReplies{}}
	r.start()
	return r
}

// start runs a gateway on r.cfg until the test ends or stop is called.
func (r *admRig) start() {
	t := r.t
	t.Helper()
	log := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	gw, err := gateway.New(r.cfg, gateway.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	select {
	case <-gw.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("gateway: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("gateway not ready within 20 s")
	}
	r.gw = gw
	for id, a := range gw.Addrs() {
		if strings.HasPrefix(id, "tcp://") {
			r.tcp = a.String()
		}
	}
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("gateway stopped with: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("gateway did not stop within 20 s")
			}
		})
	}
	t.Cleanup(r.stop)

	// The observer: an admin that records every reply, whoever asked.
	o := mqtt.NewClientOptions().AddBroker("unix://" + r.sock).SetClientID(fmt.Sprintf("observer-%d", time.Now().UnixNano())).
		SetProtocolVersion(4).SetAutoReconnect(false).SetOrderMatters(true)
	c := mqtt.NewClient(o)
	admWait(t, c.Connect(), "observer connect")
	admWait(t, c.Subscribe("$edgegw/admin/#", 1, func(_ mqtt.Client, m mqtt.Message) { r.replies.add(m.Payload()) }), "observer subscribe")
	t.Cleanup(func() { c.Disconnect(100) })
}

func admWait(t *testing.T, tok mqtt.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("%s: timed out", what)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func admEventually(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// admClient is an adminapi.Client bound to a test: failures to reach the
// gateway end the test.
type admClient struct {
	t    *testing.T
	api  *adminapi.Client
	name string // the MQTT client id, also a prefix for hand-made request ids
}

// dialAdmin connects an admin client to url (unix://… or tcp://…).
func (r *admRig) dialAdmin(url, user, password string) *admClient {
	t := r.t
	t.Helper()
	a := &admClient{t: t, name: fmt.Sprintf("adm-%d", time.Now().UnixNano())}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	api, err := adminapi.Dial(ctx, adminapi.Options{URL: url, User: user, Password: password, Name: a.name})
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	a.api = api
	t.Cleanup(func() { api.Close() })
	return a
}

// admReplyWait bounds the wait for one reply.
const admReplyWait = 60 * time.Second

// call sends a request and returns its reply, whatever its code.
func (a *admClient) call(method string, params any) adminapi.Reply {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), admReplyWait)
	defer cancel()
	r, err := a.api.Do(ctx, method, params)
	if err != nil {
		a.t.Fatalf("%s %v: %v", method, params, err)
	}
	return r
}

// raw sends a payload and waits for the reply with id ("" for a reply
// without id).
func (a *admClient) raw(payload []byte, id string) adminapi.Reply {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), admReplyWait)
	defer cancel()
	r, err := a.api.DoRaw(ctx, payload, id)
	if err != nil {
		a.t.Fatalf("no reply to %s: %v", payload, err)
	}
	return r
}

// must calls and fails the test unless the reply has code 200; it decodes
// the data into v.
func (a *admClient) must(method string, params any, v any) adminapi.Reply {
	a.t.Helper()
	r := a.call(method, params)
	if r.Code != 200 {
		a.t.Fatalf("%s %v: %d %s", method, params, r.Code, r.Message)
	}
	if v != nil {
		reflect.ValueOf(v).Elem().SetZero() // no leftovers from an earlier reply
		if err := json.Unmarshal(r.Data, v); err != nil {
			a.t.Fatalf("%s: decode data: %v: %s", method, err, r.Data)
		}
	}
	return r
}

// expect calls and fails unless the reply has code and its message
// contains want.
func (a *admClient) expect(code int, want string, method string, params any) adminapi.Reply {
	a.t.Helper()
	r := a.call(method, params)
	if r.Code != code || !strings.Contains(r.Message, want) {
		a.t.Fatalf("%s %v: got %d %q, want %d containing %q", method, params, r.Code, r.Message, code, want)
	}
	return r
}

func dev(pk, dn string, kv ...any) map[string]any {
	m := map[string]any{"productKey": pk, "deviceName": dn}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	return m
}

// admDevice is a field device on the local broker using a local password.
type admDevice struct {
	c    mqtt.Client
	lost chan struct{}
}

func (r *admRig) connectDevice(pk, dn, password string) (*admDevice, error) {
	d := &admDevice{lost: make(chan struct{})}
	var once sync.Once
	o := mqtt.NewClientOptions().AddBroker("tcp://" + r.tcp).SetClientID(pk + "." + dn).
		SetUsername(dn + "&" + pk).SetPassword(password).
		SetProtocolVersion(4).SetAutoReconnect(false).SetOrderMatters(false).
		SetConnectionLostHandler(func(mqtt.Client, error) { once.Do(func() { close(d.lost) }) })
	d.c = mqtt.NewClient(o)
	tok := d.c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, fmt.Errorf("connect %s/%s: timed out", pk, dn)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	r.t.Cleanup(func() { d.c.Disconnect(50) })
	return d, nil
}

func propertyTopic(pk, dn string) string {
	return "/sys/" + pk + "/" + dn + "/thing/event/property/post"
}

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
	a.must(adminapi.MethodProductAdd, map[string]any{"productKey": admPK, "dialect": "aliyun"}, nil)
	a.expect(409, "already exists", adminapi.MethodProductAdd, map[string]any{"productKey": admPK})
	a.must(adminapi.MethodProductAdd, map[string]any{"productKey": admPKDyn, "productSecret": "PrOdSeCrEt-77aa"}, nil)
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
	a.must(adminapi.MethodDeviceAdd, dev(admPK, dn, "deviceSecret", sec1, "localPassword", "local-pw-0001"), &added)
	if !added.HasDeviceSecret || !added.HasLocalPassword || added.State != "ready" || added.Disabled {
		t.Fatalf("added: %+v", added)
	}
	admEventually(t, "the cloud to see the new device", 10*time.Second, func() bool { return r.sim.Connected(admPK, dn) })
	a.expect(409, "already exists", adminapi.MethodDeviceAdd, dev(admPK, dn, "deviceSecret", sec1))

	// A device added with no secret under a product with a productSecret
	// awaits activation; added disabled, it gets no session.
	var dyn adminapi.Device
	a.must(adminapi.MethodDeviceAdd, dev(admPKDyn, "valve-0001", "disabled", true), &dyn)
	if dyn.State != "awaiting-activation" || dyn.HasDeviceSecret || dyn.Session != "none" || !dyn.Disabled {
		t.Fatalf("dynamic device: %+v", dyn)
	}

	// device.get: record, session, queue; booleans only for secrets.
	var det adminapi.DeviceDetail
	admEventually(t, "device.get to report the session connected", 10*time.Second, func() bool {
		a.must(adminapi.MethodDeviceGet, dev(admPK, dn), &det)
		return det.Session != nil && det.Session.State == "connected"
	})
	if det.Device.Dialect != "aliyun" || det.Queue.Device != admPK+"/"+dn || det.Session.Connects != 1 {
		t.Fatalf("device.get: %+v / %+v", det.Device, det.Session)
	}

	// device.list with filters and paging.
	var list adminapi.DeviceList
	a.must(adminapi.MethodDeviceList, nil, &list)
	if len(list.Devices) != 2 || list.Next != "" {
		t.Fatalf("list: %+v", list)
	}
	a.must(adminapi.MethodDeviceList, map[string]any{"limit": 1}, &list)
	if len(list.Devices) != 1 || list.Next != admPKDyn+"/valve-0001" {
		t.Fatalf("page 1: %+v", list)
	}
	a.must(adminapi.MethodDeviceList, map[string]any{"limit": 1, "after": list.Next}, &list)
	if len(list.Devices) != 1 || list.Devices[0].DeviceName != dn || list.Next != "" {
		t.Fatalf("page 2: %+v", list)
	}
	for _, tc := range []struct {
		params map[string]any
		want   []string
	}{
		{map[string]any{"productKey": admPKDyn}, []string{"valve-0001"}},
		{map[string]any{"state": "ready"}, []string{dn}},
		{map[string]any{"state": "awaiting-activation"}, []string{"valve-0001"}},
		{map[string]any{"state": "connected"}, []string{dn}},
		{map[string]any{"state": "none"}, []string{"valve-0001"}},
		{map[string]any{"state": "disabled"}, []string{"valve-0001"}},
		{map[string]any{"state": "enabled", "productKey": admPK}, []string{dn}},
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
	rep := a.must(adminapi.MethodDeviceUpdate, dev(admPK, dn, "deviceSecret", sec2), &upd)
	if !strings.Contains(rep.Message, "deviceSecret rotated") {
		t.Fatalf("rotate: %s", rep.Message)
	}
	admEventually(t, "the session to reconnect with the rotated secret", 10*time.Second, func() bool {
		a.must(adminapi.MethodDeviceGet, dev(admPK, dn), &det)
		return det.Session != nil && det.Session.State == "connected" && det.Session.Connects >= 2
	})
	// The same secret again is no change.
	rep = a.must(adminapi.MethodDeviceUpdate, dev(admPK, dn, "deviceSecret", sec2), nil)
	if !strings.Contains(rep.Message, "unchanged") {
		t.Fatalf("same secret: %s", rep.Message)
	}

	// Disable: session stops, the local connection is closed, logins are
	// refused.
	a.must(adminapi.MethodDeviceUpdate, dev(admPK, dn, "disabled", true), &upd)
	if !upd.Disabled || upd.Session != "none" {
		t.Fatalf("disabled: %+v", upd)
	}
	admEventually(t, "the cloud session to end", 10*time.Second, func() bool { return !r.sim.Connected(admPK, dn) })
	select {
	case <-local.lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the disabled device's local connection was not closed")
	}
	if _, err := r.connectDevice(admPK, dn, "local-pw-0001"); err == nil {
		t.Fatal("a disabled device logged in")
	}
	a.must(adminapi.MethodDeviceUpdate, dev(admPK, dn, "disabled", false), &upd)
	admEventually(t, "the re-enabled device's session", 10*time.Second, func() bool { return r.sim.Connected(admPK, dn) })

	// Local password: remove it, then the device can no longer log in.
	a.must(adminapi.MethodDeviceUpdate, dev(admPK, dn, "localPassword", nil), &upd)
	if upd.HasLocalPassword {
		t.Fatalf("password not removed: %+v", upd)
	}
	if _, err := r.connectDevice(admPK, dn, "local-pw-0001"); err == nil {
		t.Fatal("logged in with a removed local password")
	}
	a.must(adminapi.MethodDeviceUpdate, dev(admPK, dn, "localPassword", "local-pw-0002", "clientId", "pump1.cloud"), &upd)
	if !upd.HasLocalPassword || upd.ClientID != "pump1.cloud" {
		t.Fatalf("update: %+v", upd)
	}
	if _, err := r.connectDevice(admPK, dn, "local-pw-0002"); err != nil {
		t.Fatalf("new local password: %v", err)
	}
	admEventually(t, "the session with the new clientId", 10*time.Second, func() bool {
		a.must(adminapi.MethodDeviceGet, dev(admPK, dn), &det)
		return det.Session != nil && det.Session.State == "connected" && strings.HasPrefix(det.Session.ClientID, "pump1.cloud|")
	})

	// Queues.
	var qs adminapi.QueueStats
	a.must(adminapi.MethodQueueStats, nil, &qs)
	if qs.Totals == nil || qs.Device != nil {
		t.Fatalf("queue totals: %+v", qs)
	}
	a.must(adminapi.MethodQueueStats, dev(admPK, dn), &qs)
	if qs.Device == nil || qs.Device.Device != admPK+"/"+dn {
		t.Fatalf("queue stats: %+v", qs)
	}
	var purged adminapi.Purged
	a.must(adminapi.MethodQueuePurge, dev(admPK, dn), &purged)
	a.expect(404, "not found", adminapi.MethodQueuePurge, dev(admPK, "nosuchdev"))

	// product.remove refuses while devices exist.
	a.expect(409, "still has 1 devices", adminapi.MethodProductRemove, map[string]any{"productKey": admPK})

	// Import a small batch: two good rows, one bad.
	var imp adminapi.ImportResult
	a.must(adminapi.MethodDeviceImport, map[string]any{"rows": []adminapi.ImportRow{
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
	a.must(adminapi.MethodDeviceRemove, dev(admPK, dn, "spool", "discard"), &rm)
	if rm.State != "removed" || rm.Spool != "discard" {
		t.Fatalf("remove: %+v", rm)
	}
	admEventually(t, "the removed device's session to end", 10*time.Second, func() bool { return !r.sim.Connected(admPK, dn) })
	a.expect(404, "not found", adminapi.MethodDeviceGet, dev(admPK, dn))
	for _, name := range []string{"imp-0001", "imp-0003"} {
		a.must(adminapi.MethodDeviceRemove, dev(admPK, name, "spool", "drain"), nil)
	}
	a.must(adminapi.MethodProductRemove, map[string]any{"productKey": admPK}, nil)
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
	a.must(adminapi.MethodProductAdd, map[string]any{"productKey": admPK}, nil)
	a.must(adminapi.MethodDeviceAdd, dev(admPK, "pump-0001", "deviceSecret", "GoOd-secret-0001"), nil)

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
	a.must(adminapi.MethodProductAdd, map[string]any{"productKey": admPK}, nil)
	a.must(adminapi.MethodDeviceAdd, dev(admPK, "pump-0001", "deviceSecret", "GoOd-secret-0001", "localPassword", "local-pw-0001"), nil)

	d, err := r.connectDevice(admPK, "pump-0001", "local-pw-0001")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 4)
	tok := d.c.Subscribe(adminapi.ResponseTopic, 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Payload() })
	admWait(t, tok, "device subscribe")
	if code := tok.(*mqtt.SubscribeToken).Result()[adminapi.ResponseTopic]; code != 0x80 {
		t.Fatalf("device subscription to the response topic: SUBACK %#x, want 0x80", code)
	}
	before := r.replies.count()
	// Refused like any publish outside the device's namespace: a 3.1.1
	// device gets its PUBACK (so it does not reconnect and resend for
	// ever) and the request goes nowhere.
	admWait(t, d.c.Publish(adminapi.RequestTopic, 1, false, `{"id":"evil","method":"device.remove","params":{"productKey":"`+admPK+`","deviceName":"pump-0001","spool":"discard"}}`),
		"device's admin request acknowledged and dropped")
	// Nothing was done: the device still exists and nobody got a reply.
	a.must(adminapi.MethodDeviceGet, dev(admPK, "pump-0001"), nil)
	admEventually(t, "the observer to see the device.get reply", 10*time.Second, func() bool { return r.replies.count() > before })
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
	a.must(adminapi.MethodProductAdd, map[string]any{"productKey": admPK}, nil)
	names := []string{"drain-0001", "drop-0001"}
	devs := map[string]*admDevice{}
	for i, dn := range names {
		sec := fmt.Sprintf("DrAiN-secret-%04d", i)
		if err := r.sim.AddDevice(admPK, dn, secrets.NewSecret(sec)); err != nil {
			t.Fatal(err)
		}
		a.must(adminapi.MethodDeviceAdd, dev(admPK, dn, "deviceSecret", sec, "localPassword", "pw-"+dn), nil)
		admEventually(t, dn+" connected to the cloud", 10*time.Second, func() bool { return r.sim.Connected(admPK, dn) })
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
			admWait(t, devs[dn].c.Publish(propertyTopic(admPK, dn), 1, false, fmt.Sprintf(`{"id":"%d","params":{"n":%d}}`, i, i)), "publish")
		}
	}
	var qs adminapi.QueueStats
	for _, dn := range names {
		a.must(adminapi.MethodQueueStats, dev(admPK, dn), &qs)
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
	a.must(adminapi.MethodDeviceGet, dev(admPK, "drain-0001"), &det)
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
	admEventually(t, "drop-0001 to be draining", 10*time.Second, func() bool {
		var det adminapi.DeviceDetail
		a.must(adminapi.MethodDeviceGet, dev(admPK, "drop-0001"), &det)
		return det.Device.Removing && det.Device.Disabled
	})
	a.expect(409, "being removed", adminapi.MethodDeviceUpdate, dev(admPK, "drop-0001", "disabled", false))
	a.expect(409, "already being removed", adminapi.MethodDeviceRemove, dev(admPK, "drop-0001", "spool", "drain"))
	a.must(adminapi.MethodDeviceRemove, dev(admPK, "drop-0001", "spool", "discard"), &rm)
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
	rep = a.must(adminapi.MethodDeviceRemove, dev(admPK, "drain-0001", "spool", "drain", "timeout", "30s"), &rm)
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
	admEventually(t, "the drained device's session to end", 10*time.Second, func() bool { return !r.sim.Connected(admPK, "drain-0001") })

	if recs := r.sim.MessagesFor(admPK, "drop-0001"); len(recs) != 0 {
		t.Fatalf("the cloud received %d discarded messages", len(recs))
	}

	// Drain of a device with an empty queue removes it at once.
	a.must(adminapi.MethodDeviceAdd, dev(admPK, "empty-0001", "deviceSecret", "EmPtY-secret-0001"), nil)
	a.must(adminapi.MethodDeviceRemove, dev(admPK, "empty-0001", "spool", "drain"), &rm)
	if rm.State != "removed" {
		t.Fatalf("drain of an empty queue: %+v", rm)
	}
}

// TestAdminChangesSurviveRestart: what the API stored is there after a
// restart, and sessions start from it.
func TestAdminChangesSurviveRestart(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")
	a.must(adminapi.MethodProductAdd, map[string]any{"productKey": admPK}, nil)
	if err := r.sim.AddDevice(admPK, "keep-0001", secrets.NewSecret("KeEp-secret-0001")); err != nil {
		t.Fatal(err)
	}
	a.must(adminapi.MethodDeviceAdd, dev(admPK, "keep-0001", "deviceSecret", "KeEp-secret-0001"), nil)
	a.must(adminapi.MethodDeviceAdd, dev(admPK, "off-0001", "deviceSecret", "OfF-secret-0001", "disabled", true), nil)
	admEventually(t, "session", 10*time.Second, func() bool { return r.sim.Connected(admPK, "keep-0001") })
	r.stop()
	admEventually(t, "session to end with the gateway", 10*time.Second, func() bool { return !r.sim.Connected(admPK, "keep-0001") })

	r.start()
	a = r.dialAdmin("unix://"+r.sock, "", "")
	var list adminapi.DeviceList
	a.must(adminapi.MethodDeviceList, nil, &list)
	if len(list.Devices) != 2 || list.Devices[0].DeviceName != "keep-0001" || !list.Devices[1].Disabled {
		t.Fatalf("after restart: %+v", list.Devices)
	}
	admEventually(t, "session after restart", 10*time.Second, func() bool { return r.sim.Connected(admPK, "keep-0001") })
}

// admLookPeer finds a Debian mosquitto tool, or skips (fails with
// EDGEGW_REQUIRE_PEERS=1).
func admLookPeer(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("EDGEGW_REQUIRE_PEERS") == "1" {
		t.Fatalf("%s not found and EDGEGW_REQUIRE_PEERS=1: apt-get install mosquitto-clients", name)
	}
	t.Skipf("%s not found: apt-get install mosquitto-clients (set EDGEGW_REQUIRE_PEERS=1 to make this a failure)", name)
	return ""
}

// rr runs mosquitto_rr and returns the correlation data and the reply.
func (r *admRig) rr(bin string, args ...string) (corr string, rep adminapi.Reply) {
	t := r.t
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("mosquitto_rr %q: %v: %s", args, err, stderr.String())
	}
	line := strings.TrimRight(string(out), "\n")
	corr, payload, ok := strings.Cut(line, "|")
	if !ok {
		t.Fatalf("mosquitto_rr output %q: no separator", line)
	}
	if err := json.Unmarshal([]byte(payload), &rep); err != nil {
		t.Fatalf("mosquitto_rr reply %q: %v", payload, err)
	}
	return corr, rep
}

// TestAdminMQTT5MosquittoRR drives every method with Debian's mosquitto_rr
// over MQTT 5 (Response Topic and Correlation Data) on the unix socket and
// on TCP with the admin user, and once over MQTT 3.1.1.
func TestAdminMQTT5MosquittoRR(t *testing.T) {
	bin := admLookPeer(t, "mosquitto_rr")
	r := newAdmRig(t)
	if err := r.sim.AddDevice(admPK, "rr-0001", secrets.NewSecret("Rr-secret-0001")); err != nil {
		t.Fatal(err)
	}
	call := func(i int, req string, tcp bool) (string, adminapi.Reply) {
		corr := fmt.Sprintf("corr-%d", i)
		args := []string{"-V", "mqttv5", "-q", "1", "-W", "15", "-t", adminapi.RequestTopic,
			"-e", fmt.Sprintf("$edgegw/admin/v1/response/rr-%d", i), "-D", "PUBLISH", "correlation-data", corr,
			"-F", "%D|%p", "-m", req}
		if tcp {
			host, port, _ := strings.Cut(r.tcp, ":")
			args = append(args, "-h", host, "-p", port, "-u", "ops", "-P", admAdminPassword)
		} else {
			args = append(args, "--unix", r.sock)
		}
		got, rep := r.rr(bin, args...)
		if got != corr {
			t.Errorf("%s: correlation data %q, want %q", req, got, corr)
		}
		return got, rep
	}
	steps := []struct {
		req  string
		code int
		want string
	}{
		{`{"id":"1","method":"gateway.status"}`, 200, "edgegw"},
		{`{"id":"2","method":"product.add","params":{"productKey":"` + admPK + `","dialect":"aliyun"}}`, 200, "added"},
		{`{"id":"3","method":"product.list"}`, 200, "1 products"},
		{`{"id":"4","method":"device.add","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","deviceSecret":"Rr-secret-0001"}}`, 200, "added"},
		{`{"id":"5","method":"device.get","params":{"productKey":"` + admPK + `","deviceName":"rr-0001"}}`, 200, "device " + admPK + "/rr-0001"},
		{`{"id":"6","method":"device.list","params":{"state":"ready"}}`, 200, "1 devices"},
		{`{"id":"7","method":"device.update","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","disabled":true}}`, 200, "disabled"},
		{`{"id":"8","method":"device.update","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","disabled":false}}`, 200, "enabled"},
		{`{"id":"9","method":"queue.stats"}`, 200, "messages queued"},
		{`{"id":"10","method":"queue.purge","params":{"productKey":"` + admPK + `","deviceName":"rr-0001"}}`, 200, "purged"},
		{`{"id":"11","method":"device.import","params":{"rows":[{"line":2,"productKey":"` + admPK + `","deviceName":"rr-0002","deviceSecret":"Rr-secret-0002"}]}}`, 200, "1 added"},
		{`{"id":"12","method":"device.remove","params":{"productKey":"` + admPK + `","deviceName":"rr-0002","spool":"discard"}}`, 200, "removed"},
		{`{"id":"13","method":"device.remove","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","spool":"drain","timeout":"10s"}}`, 200, "removed"},
		{`{"id":"14","method":"product.remove","params":{"productKey":"` + admPK + `"}}`, 200, "removed"},
		{`{"id":"15","method":"device.get","params":{"productKey":"` + admPK + `","deviceName":"rr-0001"}}`, 404, "not found"},
		{`{"id":"16","method":"device.add","params":{"productKey":"` + admPK + `","deviceName":"rr-0001","deviceSecret":"a b"}}`, 404, "product"},
		{`{"id":"17",`, 400, "invalid JSON"},
	}
	for i, s := range steps {
		_, rep := call(i, s.req, i%2 == 1)
		if rep.Code != s.code || !strings.Contains(rep.Message, s.want) {
			t.Errorf("%s: got %d %q, want %d containing %q", s.req, rep.Code, rep.Message, s.code, s.want)
		}
		if i == 3 {
			admEventually(t, "the session of the device added over MQTT 5", 10*time.Second, func() bool { return r.sim.Connected(admPK, "rr-0001") })
		}
	}
	admEventually(t, "the session of the removed device to end", 10*time.Second, func() bool { return !r.sim.Connected(admPK, "rr-0001") })

	// MQTT 3.1.1 with mosquitto_rr: no Response Topic, so the reply comes
	// on the shared response topic.
	out, err := exec.CommandContext(t.Context(), bin, "-V", "mqttv311", "-q", "1", "-W", "15", "--unix", r.sock,
		"-t", adminapi.RequestTopic, "-e", adminapi.ResponseTopic,
		"-m", `{"id":"v311","method":"gateway.status"}`).Output()
	if err != nil {
		t.Fatalf("mosquitto_rr 3.1.1: %v", err)
	}
	var rep adminapi.Reply
	if err := json.Unmarshal(out, &rep); err != nil || rep.Code != 200 || string(rep.ID) != `"v311"` {
		t.Fatalf("mosquitto_rr 3.1.1 reply %s: %v", out, err)
	}
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
	a.must(adminapi.MethodProductAdd, map[string]any{"productKey": admPKDyn, "productSecret": s("Prod")}, nil)
	a.must(adminapi.MethodProductAdd, map[string]any{"productKey": admPK}, nil)
	sec := s("Dev1")
	if err := r.sim.AddDevice(admPK, "leak-0001", secrets.NewSecret(sec)); err != nil {
		t.Fatal(err)
	}
	pw := s("Pw1")
	a.must(adminapi.MethodDeviceAdd, dev(admPK, "leak-0001", "deviceSecret", sec, "localPassword", pw), nil)
	admEventually(t, "session", 10*time.Second, func() bool { return r.sim.Connected(admPK, "leak-0001") })
	if _, err := r.connectDevice(admPK, "leak-0001", pw); err != nil {
		t.Fatal(err)
	}
	a.expect(409, "already exists", adminapi.MethodDeviceAdd, dev(admPK, "leak-0001", "deviceSecret", s("Dup")))
	ops.must(adminapi.MethodDeviceUpdate, dev(admPK, "leak-0001", "deviceSecret", s("Rot"), "localPassword", s("Pw2")), nil)
	a.must(adminapi.MethodDeviceGet, dev(admPK, "leak-0001"), nil)
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
	a.must(adminapi.MethodDeviceImport, map[string]any{"rows": []adminapi.ImportRow{
		{Line: 2, ProductKey: admPK, DeviceName: "leak-0003", DeviceSecret: s("Imp")},
		{Line: 3, ProductKey: admPK, DeviceName: "leak-0001", DeviceSecret: s("ImpRot")},
		{Line: 4, ProductKey: admPK, DeviceName: "leak-0004", DeviceSecret: s("ImpBad") + "\t"},
		{Line: 5, ProductKey: admPK, DeviceName: "l", DeviceSecret: s("ImpName")},
	}}, &imp)
	if imp.Added != 1 || imp.Updated != 1 || imp.Failed != 2 {
		t.Fatalf("import: %+v", imp)
	}
	a.must(adminapi.MethodDeviceRemove, dev(admPK, "leak-0001", "spool", "discard"), nil)

	admEventually(t, "the observer to see every reply", 10*time.Second, func() bool {
		return strings.Count(r.replies.joined(), `"code":`) >= 15
	})
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
	a.must(adminapi.MethodProductAdd, map[string]any{"productKey": admPK}, nil)
	if err := r.sim.AddDevice(admPK, "stop-0001", secrets.NewSecret("StOp-secret-0001")); err != nil {
		t.Fatal(err)
	}
	a.must(adminapi.MethodDeviceAdd, dev(admPK, "stop-0001", "deviceSecret", "StOp-secret-0001", "localPassword", "pw-stop-0001"), nil)
	admEventually(t, "session", 10*time.Second, func() bool { return r.sim.Connected(admPK, "stop-0001") })
	d, err := r.connectDevice(admPK, "stop-0001", "pw-stop-0001")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		admWait(t, d.c.Publish(propertyTopic(admPK, "stop-0001"), 1, false, fmt.Sprintf(`{"n":%d}`, i)), "publish")
	}
	// The reply to this request never comes: the gateway stops first, and
	// the call ends with the connection.
	unanswered := make(chan struct{})
	go func() {
		defer close(unanswered)
		_, _ = a.api.DoRaw(t.Context(), []byte(`{"id":"stop","method":"device.remove","params":{"productKey":"`+admPK+
			`","deviceName":"stop-0001","spool":"drain","timeout":"10m"}}`), "stop")
	}()
	admEventually(t, "the drain to start", 10*time.Second, func() bool {
		var det adminapi.DeviceDetail
		a.must(adminapi.MethodDeviceGet, dev(admPK, "stop-0001"), &det)
		return det.Device.Removing
	})
	start := time.Now()
	r.stop()
	admEventually(t, "the drain to give up", 10*time.Second, func() bool {
		return strings.Contains(r.log.String(), "not removed: the gateway is stopping; it stays disabled with 3 queued messages")
	})
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
	a.must(adminapi.MethodDeviceGet, dev(admPK, "stop-0001"), &det)
	if !det.Device.Disabled || det.Device.Removing || det.Session != nil || det.Queue.Depth != 3 {
		t.Fatalf("after restart: %+v session %+v queue %d", det.Device, det.Session, det.Queue.Depth)
	}
}
