package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
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

// admRig is a cloud simulator and a gateway with a TCP and a unix socket
// listener, and an observer admin client that records every admin reply.
type admRig struct {
	t       *testing.T
	sim     *cloudsim.Sim
	cfg     *config.Config
	run     *gwtest.Running
	gw      *gateway.Gateway
	log     *testutil.SyncBuffer
	sock    string // the admin unix socket
	tcp     string // host:port of the TCP listener
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
	sim := gwtest.StartCloud(t, cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", DeviceRate: cloudsim.RateUnlimited})

	cfg := gwtest.Config(t, sim)
	gwtest.AddAdmin(t, cfg, "ops", admAdminPassword)
	r := &admRig{t: t, sim: sim, cfg: cfg, log: &testutil.SyncBuffer{}, sock: gwtest.Socket(cfg), replies: &admReplies{}}
	r.start()
	return r
}

// start runs a gateway on r.cfg until the test ends or stop is called.
func (r *admRig) start() {
	t := r.t
	t.Helper()
	log := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.run = gwtest.Start(t, r.cfg, gateway.Options{Logger: log})
	r.gw, r.tcp = r.run.Gateway, r.run.Addr("tcp")

	// The observer: an admin that records every reply, whoever asked.
	o := mqtt.NewClientOptions().AddBroker("unix://" + r.sock).SetClientID(fmt.Sprintf("observer-%d", time.Now().UnixNano())).
		SetProtocolVersion(4).SetAutoReconnect(false).SetOrderMatters(true)
	c := mqtt.NewClient(o)
	testutil.WaitToken(t, c.Connect(), 10*time.Second, "observer connect")
	testutil.WaitToken(t, c.Subscribe("$edgegw/admin/#", 1, func(_ mqtt.Client, m mqtt.Message) { r.replies.add(m.Payload()) }),
		10*time.Second, "observer subscribe")
	t.Cleanup(func() { c.Disconnect(100) })
}

// stop stops the gateway (a failure of its Run fails the test); start
// runs a new one on the same configuration.
func (r *admRig) stop() { r.run.Stop() }

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

// did names a device.
func did(pk, dn string) secrets.DeviceID { return secrets.DeviceID{ProductKey: pk, DeviceName: dn} }

// dev builds the params of a device request by hand, for requests the
// typed params cannot express (wrong types, unknown or missing fields).
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
