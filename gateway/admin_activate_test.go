package gateway_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

// actAdmRig runs a gateway on an activation cloud (newActCloud) with an
// admin unix socket, a recorded log and an admin client.
func actAdmRig(t *testing.T, c *actCloud) (*rig, *admClient, *testutil.SyncBuffer) {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "egw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "admin.sock")
	c.cfg.Broker.Listeners = append(c.cfg.Broker.Listeners, "unix://"+sock)
	log := &testutil.SyncBuffer{}
	r := &rig{t: t, sim: c.sim, cfg: c.cfg}
	r.startWith(gateway.Options{Logger: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	ar := &admRig{t: t}
	return r, ar.dialAdmin("unix://"+sock, "", ""), log
}

func waitState(t *testing.T, r *rig, pk, dn string, want secrets.DeviceState) secrets.Device {
	t.Helper()
	var d secrets.Device
	testutil.Eventually(t, 20*time.Second, func() bool {
		var err error
		d, err = r.gw.Registry().GetDevice(pk, dn)
		return err == nil && d.State == want
	}, "%s/%s %s (is %s %q)", pk, dn, want, d.State, d.StateReason)
	return d
}

// TestAdminActivationRecovery: an EnOS device whose activation was refused
// is recovered through the admin API alone (issue #13): a wrong
// productSecret is fixed with product.update, which makes the device try
// again at once; a device refused because the cloud had not enabled
// dynamic activation stays activation-failed through disable/enable and
// is retried with device.activate once the cloud is fixed. Both end up
// activated once, logged in and forwarding; the log's advice names these
// commands, and no secret is in replies or the log.
func TestAdminActivationRecovery(t *testing.T) {
	c := newActCloud(t, secrets.EnOS, false)
	c.addAwaiting(t, actWrongSecret, "field01")
	const pk2, dn2 = "actEnosProd2", "field02" // not enabled for dynamic activation in the cloud (yet)
	func() {
		reg := c.openRegistry(t)
		defer reg.Close()
		if _, err := reg.PutProduct(secrets.Product{ProductKey: pk2, Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret(actProductKey)}); err != nil {
			t.Fatal(err)
		}
		if err := reg.AddDevice(secrets.Device{ProductKey: pk2, DeviceName: dn2}); err != nil {
			t.Fatal(err)
		}
		if err := reg.SetLocalPassword(pk2, dn2, secrets.NewSecret("pw-"+dn2)); err != nil {
			t.Fatal(err)
		}
	}()
	if err := c.sim.AddDevice(pk2, dn2, secrets.Secret{}); err != nil {
		t.Fatal(err)
	}
	r, a, log := actAdmRig(t, c)
	waitState(t, r, c.pk, "field01", secrets.StateActivationFailed)
	waitState(t, r, pk2, dn2, secrets.StateActivationFailed)
	log.WaitFor(t, "edgegw ctl device activate "+pk2+"/"+dn2, 10*time.Second)
	log.WaitFor(t, "edgegw ctl product update "+c.pk+" -secret-file", 10*time.Second)

	// The wrong productSecret: product.update retries the device by itself.
	var up adminapi.ProductUpdate
	a.must(adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: c.pk, ProductSecret: actProductKey}, &up)
	if up.ActivationRetried != 1 || len(up.Changes) != 1 || up.Changes[0] != "productSecret changed" || !up.Product.HasProductSecret {
		t.Fatalf("product.update: %+v", up)
	}
	waitState(t, r, c.pk, "field01", secrets.StateReady)
	checkActivated(t, r.gw.Registry(), c.sim, c.pk, "field01", "enos-activate")
	a.expect(409, "already has its deviceSecret", adminapi.MethodDeviceActivate, adminapi.DeviceActivateParams{DeviceID: did(c.pk, "field01")})

	// Disable and enable leave an activation-failed device as it is, and
	// say how to retry it.
	no, yes := false, true
	a.must(adminapi.MethodDeviceUpdate, adminapi.DeviceUpdateParams{DeviceID: did(pk2, dn2), Disabled: &yes}, nil)
	a.expect(409, "disabled; enable it first", adminapi.MethodDeviceActivate, adminapi.DeviceActivateParams{DeviceID: did(pk2, dn2)})
	a.expect(200, "edgegw ctl device activate "+pk2+"/"+dn2, adminapi.MethodDeviceUpdate, adminapi.DeviceUpdateParams{DeviceID: did(pk2, dn2), Disabled: &no})
	if d, _ := r.gw.Registry().GetDevice(pk2, dn2); d.State != secrets.StateActivationFailed {
		t.Fatalf("after disable and enable: %s", d.State)
	}
	// The cloud enables dynamic activation; device.activate tries now.
	if err := c.sim.AddProduct(pk2, secrets.NewSecret(actProductKey)); err != nil {
		t.Fatal(err)
	}
	var act adminapi.Device
	rep := a.must(adminapi.MethodDeviceActivate, adminapi.DeviceActivateParams{DeviceID: did(pk2, dn2)}, &act)
	if act.State != string(secrets.StateAwaitingActivation) || act.StateReason != "" || act.Session == "none" ||
		!strings.Contains(rep.Message, "activating now") {
		t.Fatalf("device.activate: %q %+v", rep.Message, act)
	}
	waitState(t, r, pk2, dn2, secrets.StateReady)
	checkActivated(t, r.gw.Registry(), c.sim, pk2, dn2, "enos-activate")

	// Both forward what their devices publish.
	d1 := c.device("field01")
	d2 := devsim.Device{Dialect: secrets.EnOS, ProductKey: pk2, DeviceName: dn2, LocalPassword: secrets.NewSecret("pw-" + dn2)}
	r.fleet(devsim.Config{Devices: []devsim.Device{d1, d2}, QoS: 1, Window: 2, Count: 3})
	testutil.Eventually(t, 30*time.Second, func() bool { return len(r.seqs(d1)) >= 3 && len(r.seqs(d2)) >= 3 }, "posts of both devices in the cloud")

	out := log.String()
	for _, want := range []string{"change=\"activation retried\"", "change=\"productSecret changed\""} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks the audit line %s", want)
		}
	}
	checkNoSecrets(t, out, c, pk2, dn2)
}

// checkNoSecrets fails when text holds a productSecret or an issued
// deviceSecret.
func checkNoSecrets(t *testing.T, text string, c *actCloud, more ...string) {
	t.Helper()
	leaks := []string{actProductKey, actWrongSecret}
	for _, s := range c.sim.Issued(c.pk, "field01") {
		leaks = append(leaks, s.Reveal())
	}
	for i := 0; i+1 < len(more); i += 2 {
		for _, s := range c.sim.Issued(more[i], more[i+1]) {
			leaks = append(leaks, s.Reveal())
		}
	}
	for _, s := range leaks {
		if s != "" && strings.Contains(text, s) {
			t.Fatalf("a secret shows in the log or replies")
		}
	}
}

// TestAdminReAddUsesKeptSecret: an activated EnOS device removed by
// mistake and added again gets the deviceSecret kept from its activation:
// no second activation (the cloud would refuse it), and its session comes
// up. A kept secret obtained with another productSecret is not used, and
// the reply says why; fresh activates anyway.
func TestAdminReAddUsesKeptSecret(t *testing.T) {
	c := newActCloud(t, secrets.EnOS, false)
	c.addAwaiting(t, actProductKey, "field01")
	r, a, log := actAdmRig(t, c)
	first := waitState(t, r, c.pk, "field01", secrets.StateReady)
	testutil.Eventually(t, 20*time.Second, func() bool { return c.sim.Connected(c.pk, "field01") }, "the activated device's session")

	id := did(c.pk, "field01")
	a.must(adminapi.MethodDeviceRemove, adminapi.DeviceRemoveParams{DeviceID: id, Spool: adminapi.SpoolDiscard}, nil)
	testutil.Eventually(t, 10*time.Second, func() bool { return !c.sim.Connected(c.pk, "field01") }, "the session to end")
	var added adminapi.Device
	rep := a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: id, LocalPassword: "pw-field01"}, &added)
	if added.State != string(secrets.StateReady) || !added.HasDeviceSecret || !added.ActivatedAt.Equal(first.ActivatedAt) ||
		!strings.Contains(rep.Message, "kept from its activation") || !strings.Contains(rep.Message, "not activated again") {
		t.Fatalf("device.add: %q %+v", rep.Message, added)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return c.sim.Connected(c.pk, "field01") }, "the session with the kept secret")
	if st := c.sim.Stats(); len(c.sim.Issued(c.pk, "field01")) != 1 || st.Activations != 1 || st.ConnectsRefused[5] != 0 {
		t.Fatalf("cloud: %d issued, %d activations, refusals %v", len(c.sim.Issued(c.pk, "field01")), st.Activations, st.ConnectsRefused)
	}
	checkActivated(t, r.gw.Registry(), c.sim, c.pk, "field01", "enos-activate")
	d1 := c.device("field01")
	r.fleet(devsim.Config{Devices: []devsim.Device{d1}, QoS: 1, Window: 2, Count: 3})
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.seqs(d1)) >= 3 }, "posts in the cloud")

	// The product is re-created with another productSecret: the kept
	// secret is not used, and not silently replaced by an activation.
	a.must(adminapi.MethodDeviceRemove, adminapi.DeviceRemoveParams{DeviceID: id, Spool: adminapi.SpoolDiscard}, nil)
	a.must(adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: c.pk, ProductSecret: "otherProductSecret-0002"}, nil)
	a.expect(409, "with another productSecret than product "+c.pk+" has now", adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: id})
	if _, err := r.gw.Registry().GetDevice(c.pk, "field01"); err == nil {
		t.Fatal("the refused device.add stored the device")
	}
	a.expect(400, "params.fresh", adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: id, DeviceSecret: "x-0001", Fresh: true})
	rep = a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: id, Fresh: true}, &added)
	if added.State != string(secrets.StateAwaitingActivation) || added.HasDeviceSecret {
		t.Fatalf("device.add fresh: %q %+v", rep.Message, added)
	}
	// The cloud refuses it (already activated); device.activate without
	// fresh says again why the kept secret is not used.
	waitState(t, r, c.pk, "field01", secrets.StateActivationFailed)
	a.expect(409, "another productSecret", adminapi.MethodDeviceActivate, adminapi.DeviceActivateParams{DeviceID: id})
	if !strings.Contains(log.String(), `deviceSecretFrom="kept activation record"`) {
		t.Error("no audit line names the kept activation record")
	}
	checkNoSecrets(t, log.String(), c)
}

// TestAdminProductUpdate: product.add and product.update take default
// connect parameters, product.get and product.list show them, the cloud
// sessions of devices without params of their own take them on; bad
// requests are answered with what is wrong; a dialect change waits for a
// product without devices.
func TestAdminProductUpdate(t *testing.T) {
	r := newAdmRig(t)
	a := r.dialAdmin("unix://"+r.sock, "", "")
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPK, DefaultConnectParams: "_ss=1,ext=3"}, nil)
	var pr adminapi.Product
	a.must(adminapi.MethodProductGet, adminapi.ProductGetParams{ProductKey: admPK}, &pr)
	if pr.DefaultConnectParams != "_ss=1,ext=3" || pr.Dialect != "aliyun" || pr.HasProductSecret {
		t.Fatalf("product.get: %+v", pr)
	}
	const dn = "pump-0009"
	sec := "DeViCeSeCrEt-nine-0009"
	if err := r.sim.AddDevice(admPK, dn, secrets.NewSecret(sec)); err != nil {
		t.Fatal(err)
	}
	a.must(adminapi.MethodDeviceAdd, adminapi.DeviceAddParams{DeviceID: did(admPK, dn), DeviceSecret: sec}, nil)
	cid := func() string { s, _ := r.sim.SessionClientID(admPK, dn); return s }
	testutil.Eventually(t, 10*time.Second, func() bool { return strings.Contains(cid(), "_ss=1,ext=3") }, "a session with the default params (%q)", cid())

	var up adminapi.ProductUpdate
	a.must(adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: admPK, DefaultConnectParams: adminapi.Optional{Value: "ext=1"}}, &up)
	if up.SessionsUpdated != 1 || up.Product.DefaultConnectParams != "ext=1" || len(up.Changes) != 1 {
		t.Fatalf("product.update: %+v", up)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { c := cid(); return strings.Contains(c, "ext=1") && !strings.Contains(c, "_ss") },
		"the session reconnected with the new params (%q)", cid())
	a.must(adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: admPK, DefaultConnectParams: adminapi.Optional{Clear: true}}, &up)
	var ps []adminapi.Product
	a.must(adminapi.MethodProductList, nil, &ps)
	if len(ps) != 1 || ps[0].DefaultConnectParams != "" || ps[0].Devices != 1 {
		t.Fatalf("product.list: %+v", ps)
	}
	r2 := a.must(adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: admPK, DefaultConnectParams: adminapi.Optional{Clear: true}}, &up)
	if !strings.Contains(r2.Message, "unchanged") || len(up.Changes) != 0 {
		t.Fatalf("a no-op update: %q %+v", r2.Message, up)
	}

	a.expect(409, "dialect cannot change from aliyun to enos while it has devices", adminapi.MethodProductUpdate,
		adminapi.ProductUpdateParams{ProductKey: admPK, Dialect: "enos"})
	a.expect(400, "nothing to change", adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: admPK})
	a.expect(404, "not found", adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: "a1Nothere01", ProductSecret: "x-1"})
	a.expect(400, "cannot be removed", adminapi.MethodProductUpdate, map[string]any{"productKey": admPK, "productSecret": nil})
	a.expect(400, `item 2 "bogus": want key=value`, adminapi.MethodProductUpdate, map[string]any{"productKey": admPK, "defaultConnectParams": "_ss=1,bogus"})
	a.expect(400, "not one of", adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: admPKDyn, DefaultConnectParams: "authType=x"})
	a.expect(400, "Alibaba clientId parameters", adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: "enosProd77", Dialect: "enos", DefaultConnectParams: "_ss=1"})
	a.expect(400, "byte 3 is whitespace", adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: admPK, ProductSecret: "abc def"})
	// Without devices the dialect may change (the params must go with it).
	a.must(adminapi.MethodProductAdd, adminapi.ProductAddParams{ProductKey: "a1Empty0001", DefaultConnectParams: "_ss=1"}, nil)
	a.expect(400, "clear them with null", adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: "a1Empty0001", Dialect: "enos"})
	a.must(adminapi.MethodProductUpdate, adminapi.ProductUpdateParams{ProductKey: "a1Empty0001", Dialect: "enos",
		DefaultConnectParams: adminapi.Optional{Clear: true}}, &up)
	if up.Product.Dialect != "enos" || up.Product.DefaultConnectParams != "" {
		t.Fatalf("dialect change: %+v", up)
	}
	if err := r.log.String(); !strings.Contains(err, `change="dialect aliyun -> enos, defaultConnectParams`) {
		t.Error("no audit line for the dialect change")
	}
}
