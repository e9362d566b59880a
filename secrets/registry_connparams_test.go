package secrets_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

var linkSDKParams = []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "_v", Value: "sdk-c-4.1.0"}, {Key: "ext", Value: "3"}}

// A device's connect parameters and a product's defaults are stored with
// the records and survive a reopen; nil ("never seen") and empty ("seen
// with none") stay apart.
func TestRegistryConnectParamsRoundTrip(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk1", Dialect: secrets.Aliyun,
		DefaultConnectParams: []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "ext", Value: "1"}}})
	mustPutProduct(t, r, secrets.Product{ProductKey: "enosprod", Dialect: secrets.EnOS})
	mustAddDevice(t, r, secrets.Device{ProductKey: "pk1", DeviceName: "never-seen", DeviceSecret: secrets.NewSecret("s1")})
	mustAddDevice(t, r, secrets.Device{ProductKey: "pk1", DeviceName: "link-sdk", DeviceSecret: secrets.NewSecret("s2"), ConnectParams: linkSDKParams})
	mustAddDevice(t, r, secrets.Device{ProductKey: "pk1", DeviceName: "seen-none", DeviceSecret: secrets.NewSecret("s3"), ConnectParams: []secrets.Param{}})

	check := func(r *secrets.Registry) {
		t.Helper()
		for dn, want := range map[string][]secrets.Param{"never-seen": nil, "link-sdk": linkSDKParams, "seen-none": {}} {
			d, err := r.GetDevice("pk1", dn)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d.ConnectParams, want) {
				t.Errorf("%s: ConnectParams = %#v, want %#v", dn, d.ConnectParams, want)
			}
		}
		p, err := r.GetProduct("pk1")
		if err != nil {
			t.Fatal(err)
		}
		if got := secrets.FormatConnectParams(p.DefaultConnectParams); got != "_ss=1,ext=1" {
			t.Errorf("DefaultConnectParams = %q", got)
		}
	}
	check(r)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r = e.mustOpen(t)
	check(r)

	// SetConnectParams writes only a change, and reports the previous value.
	t1 := e.clock.Advance(time.Second)
	prev, changed, err := r.SetConnectParams("pk1", "never-seen", linkSDKParams)
	if err != nil || !changed || prev != nil {
		t.Fatalf("SetConnectParams = %v, %v, %v", prev, changed, err)
	}
	d, _ := r.GetDevice("pk1", "never-seen")
	if !reflect.DeepEqual(d.ConnectParams, linkSDKParams) || !d.Updated.Equal(t1) {
		t.Errorf("after set: %#v", d)
	}
	e.clock.Advance(time.Second)
	prev, changed, err = r.SetConnectParams("pk1", "never-seen", linkSDKParams)
	if err != nil || changed || !reflect.DeepEqual(prev, linkSDKParams) {
		t.Errorf("same params again = %v, %v, %v", prev, changed, err)
	}
	if d, _ := r.GetDevice("pk1", "never-seen"); !d.Updated.Equal(t1) {
		t.Errorf("unchanged params rewrote the record (Updated %v)", d.Updated)
	}
	if _, changed, err := r.SetConnectParams("pk1", "never-seen", []secrets.Param{}); err != nil || !changed {
		t.Errorf("to none = %v, %v", changed, err)
	}

	// Refused: bad values, keys edgegw sets itself, and any on EnOS.
	wantErr(t, func() error {
		_, _, err := r.SetConnectParams("pk1", "link-sdk", []secrets.Param{{Key: "securemode", Value: "2"}})
		return err
	}(),
		nil, `connect parameter "securemode": not one of`)
	wantErr(t, r.AddDevice(secrets.Device{ProductKey: "pk1", DeviceName: "bad-val", DeviceSecret: secrets.NewSecret("s"),
		ConnectParams: []secrets.Param{{Key: "ext", Value: "1,2"}}}), nil, "connect parameter ext")
	wantErr(t, r.AddDevice(secrets.Device{ProductKey: "enosprod", DeviceName: "dk-1", DeviceSecret: secrets.NewSecret("s"),
		ConnectParams: linkSDKParams}), nil, "connectParams: connect parameters are Alibaba's")
	if _, err := r.PutProduct(secrets.Product{ProductKey: "enosprod", Dialect: secrets.EnOS, DefaultConnectParams: linkSDKParams}); err == nil {
		t.Error("EnOS product with default connect params accepted")
	}
	if _, err := r.PutProduct(secrets.Product{ProductKey: "pk9", Dialect: secrets.Aliyun,
		DefaultConnectParams: []secrets.Param{{Key: "_ss", Value: ""}}}); err == nil {
		t.Error("product with an empty default value accepted")
	}
}

// Records written before connect parameters existed (the committed
// format-version-1 fixture) read as "never seen" and take the field once
// set, across a reopen.
func TestRegistryConnectParamsOldRecords(t *testing.T) {
	key, created, err := secrets.LoadOrCreateKey(filepath.Join("testdata", "registry", "v1.key"), nil)
	if err != nil || created {
		t.Fatalf("fixture key: %v (created %v)", err, created)
	}
	data, err := os.ReadFile(filepath.Join("testdata", "registry", "v1.db"))
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{path: filepath.Join(t.TempDir(), "v1.db"), key: key, clock: newFakeClock()}
	if err := os.WriteFile(e.path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := e.mustOpen(t)
	devs, err := r.Devices(secrets.DeviceFilter{})
	if err != nil || len(devs) != 4 {
		t.Fatalf("Devices = %v, %v", devs, err)
	}
	for _, d := range devs {
		if d.ConnectParams != nil {
			t.Errorf("%s: ConnectParams = %#v in a record without the field", d.ID(), d.ConnectParams)
		}
	}
	ps, err := r.Products()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.DefaultConnectParams != nil {
			t.Errorf("%s: DefaultConnectParams = %#v", p.ProductKey, p.DefaultConnectParams)
		}
	}
	if _, changed, err := r.SetConnectParams("a1B2c3D4e5F", "meter-01", linkSDKParams); err != nil || !changed {
		t.Fatalf("SetConnectParams on an old record: %v, %v", changed, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r = e.mustOpen(t)
	d, err := r.GetDevice("a1B2c3D4e5F", "meter-01")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d.ConnectParams, linkSDKParams) || d.DeviceSecret.Reveal() != "meter-01-device-secret" || d.ClientID != "a1B2c3D4e5F.meter-01" {
		t.Errorf("old record after set = %#v", d)
	}
	if ok, err := r.CheckLocalPassword("a1B2c3D4e5F", "meter-01", secrets.NewSecret("meter-01-local")); !ok || err != nil {
		t.Errorf("local password after set: %v, %v", ok, err)
	}
}
