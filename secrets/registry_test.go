package secrets_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	bolt "go.etcd.io/bbolt"
)

// fakeClock is an injectable clock that only moves when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 8, 0, 0, 123456789, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

func newKey(tb testing.TB) []byte {
	tb.Helper()
	k := make([]byte, secrets.KeySize)
	if _, err := rand.Read(k); err != nil {
		tb.Fatal(err)
	}
	return k
}

// testEnv is one registry file with its key and clock.
type testEnv struct {
	path  string
	key   []byte
	clock *fakeClock
}

func newEnv(tb testing.TB) *testEnv {
	tb.Helper()
	return &testEnv{path: filepath.Join(tb.TempDir(), "registry.db"), key: newKey(tb), clock: newFakeClock()}
}

func (e *testEnv) opts() *secrets.RegistryOptions {
	return &secrets.RegistryOptions{
		Now:                e.clock.Now,
		Timeout:            200 * time.Millisecond,
		PasswordIterations: secrets.MinPasswordIterations,
	}
}

// mustOpen opens the env's registry; on cleanup it closes it (if still
// open) and checks the file with bbolt's consistency check.
func (e *testEnv) mustOpen(tb testing.TB) *secrets.Registry {
	tb.Helper()
	return e.mustOpenWith(tb, e.opts())
}

func (e *testEnv) mustOpenWith(tb testing.TB, o *secrets.RegistryOptions) *secrets.Registry {
	tb.Helper()
	r, err := secrets.OpenRegistry(e.path, e.key, o)
	if err != nil {
		tb.Fatalf("OpenRegistry: %v", err)
	}
	tb.Cleanup(func() {
		_ = r.Close()
		mustCheckBolt(tb, e.path)
	})
	return r
}

// mustCheckBolt runs bbolt's consistency check on a closed file.
func mustCheckBolt(tb testing.TB, path string) {
	tb.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		tb.Errorf("integrity check: open %s: %v", path, err)
		return
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			tb.Errorf("integrity check %s: %v", path, err)
		}
		return nil
	}); err != nil {
		tb.Error(err)
	}
}

func mustPutProduct(tb testing.TB, r *secrets.Registry, p secrets.Product) {
	tb.Helper()
	if _, err := r.PutProduct(p); err != nil {
		tb.Fatalf("PutProduct(%s): %v", p.ProductKey, err)
	}
}

func mustAddDevice(tb testing.TB, r *secrets.Registry, d secrets.Device) {
	tb.Helper()
	if err := r.AddDevice(d); err != nil {
		tb.Fatalf("AddDevice(%s): %v", d.ID(), err)
	}
}

func wantErr(t *testing.T, err, target error, contains ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %v", target)
	}
	if target != nil && !errors.Is(err, target) {
		t.Errorf("error %q is not %v", err, target)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("error %q does not contain %q", err, c)
		}
	}
}

func TestRegistryProducts(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	t0 := e.clock.Now()

	created, err := r.PutProduct(secrets.Product{ProductKey: "a1B2c3D4e5F", Dialect: secrets.Aliyun, ProductSecret: secrets.NewSecret("ps1")})
	if err != nil || !created {
		t.Fatalf("PutProduct = %v, %v; want true, nil", created, err)
	}
	p, err := r.GetProduct("a1B2c3D4e5F")
	if err != nil {
		t.Fatal(err)
	}
	if p.Dialect != secrets.Aliyun || p.ProductSecret.Reveal() != "ps1" || !p.Created.Equal(t0) || !p.Updated.Equal(t0) {
		t.Errorf("GetProduct = %#v", p)
	}

	t1 := e.clock.Advance(time.Minute)
	created, err = r.PutProduct(secrets.Product{ProductKey: "a1B2c3D4e5F", Dialect: secrets.Aliyun, Created: t1.Add(time.Hour)})
	if err != nil || created {
		t.Fatalf("PutProduct update = %v, %v; want false, nil", created, err)
	}
	p, _ = r.GetProduct("a1B2c3D4e5F")
	if !p.Created.Equal(t0) || !p.Updated.Equal(t1) || !p.ProductSecret.IsZero() {
		t.Errorf("after update: Created %v (want %v), Updated %v (want %v), secret set %v", p.Created, t0, p.Updated, t1, !p.ProductSecret.IsZero())
	}

	mustPutProduct(t, r, secrets.Product{ProductKey: "enosprod1", Dialect: secrets.EnOS})
	ps, err := r.Products()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].ProductKey != "a1B2c3D4e5F" || ps[1].ProductKey != "enosprod1" {
		t.Errorf("Products = %v", ps)
	}

	for _, tc := range []struct {
		p    secrets.Product
		want string
	}{
		{secrets.Product{ProductKey: "bad-key", Dialect: secrets.Aliyun}, `productKey "bad-key": invalid character '-'`},
		{secrets.Product{ProductKey: "", Dialect: secrets.EnOS}, "productKey: must not be empty"},
		{secrets.Product{ProductKey: "p1", Dialect: "azure"}, `dialect "azure": unknown`},
		{secrets.Product{ProductKey: "p1", Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret("has space")}, "productSecret: byte 3 is whitespace"},
	} {
		_, err := r.PutProduct(tc.p)
		wantErr(t, err, nil, tc.want)
	}

	// Dialect change: refused while the product has devices.
	mustAddDevice(t, r, secrets.Device{ProductKey: "enosprod1", DeviceName: "dk1", DeviceSecret: secrets.NewSecret("s")})
	_, err = r.PutProduct(secrets.Product{ProductKey: "enosprod1", Dialect: secrets.Aliyun})
	wantErr(t, err, secrets.ErrConflict, "enosprod1")
	err = r.DeleteProduct("enosprod1")
	wantErr(t, err, secrets.ErrConflict, "delete product enosprod1", "has devices")
	if err := r.DeleteDevice("enosprod1", "dk1"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteProduct("enosprod1"); err != nil {
		t.Fatal(err)
	}
	_, err = r.GetProduct("enosprod1")
	wantErr(t, err, secrets.ErrNotFound, "get product enosprod1: not found")
	wantErr(t, r.DeleteProduct("enosprod1"), secrets.ErrNotFound, "enosprod1")

	// Without devices the dialect may change.
	if _, err := r.PutProduct(secrets.Product{ProductKey: "a1B2c3D4e5F", Dialect: secrets.EnOS}); err != nil {
		t.Errorf("dialect change without devices: %v", err)
	}
}

func TestRegistryDevices(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk1", Dialect: secrets.Aliyun})
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk2", Dialect: secrets.Aliyun, ProductSecret: secrets.NewSecret("psec")})
	t0 := e.clock.Now()

	d := secrets.Device{ProductKey: "pk1", DeviceName: "meter-01", DeviceSecret: secrets.NewSecret("dsec1"), ClientID: "pk1.meter-01", State: secrets.StateActivationFailed}
	mustAddDevice(t, r, d)
	got, err := r.GetDevice("pk1", "meter-01")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != secrets.StateReady || got.DeviceSecret.Reveal() != "dsec1" || got.ClientID != "pk1.meter-01" ||
		!got.Created.Equal(t0) || !got.Updated.Equal(t0) || got.Disabled || got.LocalPassword != "" || got.ID().String() != "pk1/meter-01" {
		t.Errorf("GetDevice = %#v", got)
	}

	wantErr(t, r.AddDevice(d), secrets.ErrExists, "add device pk1/meter-01: already exists")
	wantErr(t, r.AddDevice(secrets.Device{ProductKey: "nope", DeviceName: "meter-01", DeviceSecret: secrets.NewSecret("x")}),
		secrets.ErrNotFound, "add device nope/meter-01: product nope: not found")
	wantErr(t, r.AddDevice(secrets.Device{ProductKey: "pk1", DeviceName: "meter-02"}), nil,
		"add device pk1/meter-02: no deviceSecret, and product pk1 has no productSecret")

	// A device without a secret under a product with a productSecret awaits activation.
	mustAddDevice(t, r, secrets.Device{ProductKey: "pk2", DeviceName: "dyn-01"})
	if got, _ := r.GetDevice("pk2", "dyn-01"); got.State != secrets.StateAwaitingActivation || !got.DeviceSecret.IsZero() {
		t.Errorf("dynamic device = %v, secret set %v", got, !got.DeviceSecret.IsZero())
	}

	for _, tc := range []struct {
		name string
		d    secrets.Device
		want string
	}{
		{"short name", secrets.Device{ProductKey: "pk1", DeviceName: "ab", DeviceSecret: secrets.NewSecret("x")}, `deviceName "ab": must be 4-32 characters`},
		{"slash", secrets.Device{ProductKey: "pk1", DeviceName: "ab/cd", DeviceSecret: secrets.NewSecret("x")}, `invalid character '/'`},
		{"bad client id", secrets.Device{ProductKey: "pk1", DeviceName: "abcd", ClientID: "a|b", DeviceSecret: secrets.NewSecret("x")}, `clientId "a|b": invalid character '|'`},
		{"secret newline", secrets.Device{ProductKey: "pk1", DeviceName: "abcd", DeviceSecret: secrets.NewSecret("x\n")}, "deviceSecret: byte 1 is whitespace"},
		{"plaintext local password", secrets.Device{ProductKey: "pk1", DeviceName: "abcd", DeviceSecret: secrets.NewSecret("x"), LocalPassword: "hunter2"}, "localPassword: not an encoded hash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, r.AddDevice(tc.d), nil, tc.want)
			if _, err := r.GetDevice(tc.d.ProductKey, tc.d.DeviceName); !errors.Is(err, secrets.ErrNotFound) {
				t.Errorf("invalid device was stored: %v", err)
			}
		})
	}

	// UpdateDevice: read-modify-write, Created kept, Updated bumped.
	t1 := e.clock.Advance(time.Hour)
	upd, err := r.UpdateDevice("pk1", "meter-01", func(d *secrets.Device) error {
		d.ClientID = "cid-2"
		d.Disabled = true
		d.Created = time.Time{} // ignored
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, _ = r.GetDevice("pk1", "meter-01")
	if got.ClientID != "cid-2" || !got.Disabled || !got.Created.Equal(t0) || !got.Updated.Equal(t1) || !upd.Updated.Equal(t1) || upd.ClientID != "cid-2" {
		t.Errorf("after update: %#v (returned %#v)", got, upd)
	}

	errStop := errors.New("stop here")
	_, err = r.UpdateDevice("pk1", "meter-01", func(d *secrets.Device) error {
		d.ClientID = "never-stored"
		return errStop
	})
	wantErr(t, err, errStop, "update device pk1/meter-01")
	for _, fn := range []func(*secrets.Device) error{
		func(d *secrets.Device) error { d.DeviceName = "other-name"; return nil },
		func(d *secrets.Device) error { d.ClientID = "has space"; return nil },
		func(d *secrets.Device) error { d.DeviceSecret = secrets.Secret{}; return nil }, // ready without secret
		func(d *secrets.Device) error { d.State = "bogus"; return nil },
		func(d *secrets.Device) error {
			d.DeviceSecret = secrets.Secret{}
			d.State = secrets.StateAwaitingActivation
			return nil
		}, // pk1 has no productSecret
	} {
		if _, err := r.UpdateDevice("pk1", "meter-01", fn); err == nil {
			t.Error("invalid update accepted")
		}
	}
	if got2, _ := r.GetDevice("pk1", "meter-01"); got2.ClientID != "cid-2" || got2.DeviceSecret.Reveal() != "dsec1" || got2.State != secrets.StateReady {
		t.Errorf("failed updates changed the device: %#v", got2)
	}
	_, err = r.UpdateDevice("pk1", "missing-1", func(*secrets.Device) error { return nil })
	wantErr(t, err, secrets.ErrNotFound, "update device pk1/missing-1: not found")

	// Activation failure and retry via UpdateDevice.
	if _, err := r.UpdateDevice("pk2", "dyn-01", func(d *secrets.Device) error {
		d.State, d.StateReason = secrets.StateActivationFailed, "cloud refused: code 5"
		return nil
	}); err != nil {
		t.Errorf("mark activation failed: %v", err)
	}

	if err := r.DeleteDevice("pk1", "meter-01"); err != nil {
		t.Fatal(err)
	}
	_, err = r.GetDevice("pk1", "meter-01")
	wantErr(t, err, secrets.ErrNotFound, "get device pk1/meter-01: not found")
	wantErr(t, r.DeleteDevice("pk1", "meter-01"), secrets.ErrNotFound, "delete device pk1/meter-01")
}

func TestRegistryDevicesFilterAndPaging(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	// "p1" is a prefix of "p10": the product filter must not mix them.
	for _, pk := range []string{"p1", "p10", "p2"} {
		mustPutProduct(t, r, secrets.Product{ProductKey: pk, Dialect: secrets.Aliyun, ProductSecret: secrets.NewSecret("ps")})
	}
	var all []string
	for _, pk := range []string{"p1", "p10", "p2"} {
		for i := range 5 {
			d := secrets.Device{ProductKey: pk, DeviceName: fmt.Sprintf("dev-%02d", i)}
			if i%2 == 0 {
				d.DeviceSecret = secrets.NewSecret("s" + strconv.Itoa(i))
			}
			mustAddDevice(t, r, d)
			all = append(all, d.ID().String())
		}
	}
	ids := func(ds []secrets.Device) []string {
		out := []string{}
		for _, d := range ds {
			out = append(out, d.ID().String())
		}
		return out
	}
	list := func(f secrets.DeviceFilter) []string {
		t.Helper()
		ds, err := r.Devices(f)
		if err != nil {
			t.Fatalf("Devices(%+v): %v", f, err)
		}
		return ids(ds)
	}
	eq := func(what string, got, want []string) {
		t.Helper()
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s:\n got %v\nwant %v", what, got, want)
		}
	}

	eq("all", list(secrets.DeviceFilter{}), all)
	eq("p1", list(secrets.DeviceFilter{ProductKey: "p1"}), all[0:5])
	eq("p10", list(secrets.DeviceFilter{ProductKey: "p10"}), all[5:10])
	eq("p1 ready", list(secrets.DeviceFilter{ProductKey: "p1", State: secrets.StateReady}), []string{"p1/dev-00", "p1/dev-02", "p1/dev-04"})
	eq("awaiting", list(secrets.DeviceFilter{State: secrets.StateAwaitingActivation}),
		[]string{"p1/dev-01", "p1/dev-03", "p10/dev-01", "p10/dev-03", "p2/dev-01", "p2/dev-03"})
	eq("p10 after p1/dev-02", list(secrets.DeviceFilter{ProductKey: "p10", After: "p1/dev-02"}), all[5:10])
	eq("p1 after p10/x", list(secrets.DeviceFilter{ProductKey: "p1", After: "p10/x"}), []string{})
	eq("none", list(secrets.DeviceFilter{ProductKey: "p3"}), []string{})

	for _, f := range []secrets.DeviceFilter{{Limit: 4}, {Limit: 1, ProductKey: "p10"}, {Limit: 2, State: secrets.StateReady}} {
		var paged []string
		for page := 0; ; page++ {
			if page > 20 {
				t.Fatalf("paging %+v does not end", f)
			}
			got := list(f)
			if len(got) > f.Limit {
				t.Fatalf("page of %d > limit %d", len(got), f.Limit)
			}
			if len(got) == 0 {
				break
			}
			paged = append(paged, got...)
			f.After = got[len(got)-1]
		}
		f.After, f.Limit = "", 0
		eq(fmt.Sprintf("paged %+v", f), paged, list(f))
	}

	if _, err := r.Devices(secrets.DeviceFilter{Limit: -1}); err == nil {
		t.Error("negative limit accepted")
	}
	if _, err := r.Devices(secrets.DeviceFilter{State: "sleeping"}); err == nil {
		t.Error("unknown state accepted")
	}

	counts, err := r.CountDevices()
	if err != nil {
		t.Fatal(err)
	}
	want := map[secrets.DeviceState]int{secrets.StateReady: 9, secrets.StateAwaitingActivation: 6, secrets.StateActivationFailed: 0}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("CountDevices = %v, want %v", counts, want)
	}
}

func TestRegistryLocalPassword(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk", Dialect: secrets.EnOS})
	mustAddDevice(t, r, secrets.Device{ProductKey: "pk", DeviceName: "dk", DeviceSecret: secrets.NewSecret("s")})

	ok, err := r.CheckLocalPassword("pk", "dk", secrets.NewSecret("pw"))
	if ok || err != nil {
		t.Errorf("check without a password set = %v, %v; want false, nil", ok, err)
	}
	pw := secrets.NewSecret("correct horse")
	if err := r.SetLocalPassword("pk", "dk", pw); err != nil {
		t.Fatal(err)
	}
	d, _ := r.GetDevice("pk", "dk")
	if !strings.HasPrefix(d.LocalPassword, "$pbkdf2-sha256$i=1000$") {
		t.Errorf("stored local password is not the expected encoded hash shape")
	}
	for i := range 3 {
		if ok, err := r.CheckLocalPassword("pk", "dk", pw); !ok || err != nil {
			t.Fatalf("check %d of right password = %v, %v", i, ok, err)
		}
	}
	if st := r.PasswordCheckerStats(); st.Misses != 1 || st.Hits != 2 || st.Entries != 1 {
		t.Errorf("checker stats after 3 good checks = %+v, want 1 miss, 2 hits, 1 entry", st)
	}
	if ok, _ := r.CheckLocalPassword("pk", "dk", secrets.NewSecret("wrong")); ok {
		t.Error("wrong password accepted")
	}

	// A new password invalidates the cached one.
	if err := r.SetLocalPassword("pk", "dk", secrets.NewSecret("new one")); err != nil {
		t.Fatal(err)
	}
	if ok, _ := r.CheckLocalPassword("pk", "dk", pw); ok {
		t.Error("old password still accepted after change")
	}
	if ok, _ := r.CheckLocalPassword("pk", "dk", secrets.NewSecret("new one")); !ok {
		t.Error("new password refused")
	}

	// Disabled devices never pass.
	if _, err := r.UpdateDevice("pk", "dk", func(d *secrets.Device) error { d.Disabled = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if ok, _ := r.CheckLocalPassword("pk", "dk", secrets.NewSecret("new one")); ok {
		t.Error("disabled device accepted")
	}
	if _, err := r.UpdateDevice("pk", "dk", func(d *secrets.Device) error { d.Disabled = false; return nil }); err != nil {
		t.Fatal(err)
	}

	// A zero password removes it.
	if err := r.SetLocalPassword("pk", "dk", secrets.Secret{}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := r.CheckLocalPassword("pk", "dk", secrets.NewSecret("new one")); ok {
		t.Error("removed password still accepted")
	}

	_, err = r.CheckLocalPassword("pk", "nodev", pw)
	wantErr(t, err, secrets.ErrNotFound, "pk/nodev")
	wantErr(t, r.SetLocalPassword("pk", "nodev", pw), secrets.ErrNotFound, "pk/nodev")
}

func TestRegistryStoreActivatedSecret(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	mustPutProduct(t, r, secrets.Product{ProductKey: "enospk", Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret("prodsec")})
	mustAddDevice(t, r, secrets.Device{ProductKey: "enospk", DeviceName: "dk-1"})

	t1 := e.clock.Advance(time.Minute)
	if err := r.StoreActivatedSecret("enospk", "dk-1", secrets.NewSecret("first-secret"), "enos-activate"); err != nil {
		t.Fatal(err)
	}
	t2 := e.clock.Advance(time.Minute)
	if err := r.StoreActivatedSecret("enospk", "dk-1", secrets.NewSecret("second-secret"), "aliyun-register"); err != nil {
		t.Fatal(err)
	}

	wantErr(t, r.StoreActivatedSecret("enospk", "dk-2", secrets.NewSecret("x"), "enos-activate"), secrets.ErrNotFound, "enospk/dk-2")
	wantErr(t, r.StoreActivatedSecret("enospk", "dk-1", secrets.NewSecret("bad secret"), "enos-activate"), nil, "deviceSecret: byte 3 is whitespace")
	wantErr(t, r.StoreActivatedSecret("enospk", "dk-1", secrets.NewSecret("x"), "bad source"), nil, `source "bad source"`)

	check := func(r *secrets.Registry) {
		t.Helper()
		d, err := r.GetDevice("enospk", "dk-1")
		if err != nil {
			t.Fatal(err)
		}
		if d.State != secrets.StateReady || d.DeviceSecret.Reveal() != "second-secret" || !d.ActivatedAt.Equal(t2) || !d.Updated.Equal(t2) {
			t.Errorf("activated device = %#v", d)
		}
		acts, err := r.Activations("enospk", "dk-1")
		if err != nil {
			t.Fatal(err)
		}
		if len(acts) != 2 {
			t.Fatalf("Activations = %d records, want 2", len(acts))
		}
		if acts[0].Seq >= acts[1].Seq || acts[0].Source != "enos-activate" || acts[0].Secret.Reveal() != "first-secret" || !acts[0].Time.Equal(t1) ||
			acts[1].Source != "aliyun-register" || acts[1].Secret.Reveal() != "second-secret" || !acts[1].Time.Equal(t2) {
			t.Errorf("Activations = %+v", acts)
		}
		if acts, err := r.Activations("enospk", "dk-2"); err != nil || len(acts) != 0 {
			t.Errorf("Activations of a device that never activated = %v, %v", acts, err)
		}
	}
	check(r)

	// Survives reopen.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := e.mustOpen(t)
	check(r2)

	// Records outlive the device.
	if err := r2.DeleteDevice("enospk", "dk-1"); err != nil {
		t.Fatal(err)
	}
	if acts, err := r2.Activations("enospk", "dk-1"); err != nil || len(acts) != 2 {
		t.Errorf("Activations after delete = %d, %v; want 2 records", len(acts), err)
	}
}

func TestRegistryReopenKeepsData(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk", Dialect: secrets.Aliyun, ProductSecret: secrets.NewSecret("ps")})
	mustAddDevice(t, r, secrets.Device{ProductKey: "pk", DeviceName: "dev-1", DeviceSecret: secrets.NewSecret("ds"), ClientID: "c1"})
	if err := r.SetLocalPassword("pk", "dev-1", secrets.NewSecret("lp")); err != nil {
		t.Fatal(err)
	}
	before, _ := r.GetDevice("pk", "dev-1")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := r.GetDevice("pk", "dev-1"); err == nil {
		t.Error("GetDevice after Close succeeded")
	}

	r2 := e.mustOpen(t)
	after, err := r2.GetDevice("pk", "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if after.GoString() != before.GoString() || !after.DeviceSecret.Equal(before.DeviceSecret) || after.LocalPassword != before.LocalPassword {
		t.Errorf("after reopen %#v, before %#v", after, before)
	}
	if ok, _ := r2.CheckLocalPassword("pk", "dev-1", secrets.NewSecret("lp")); !ok {
		t.Error("local password lost on reopen")
	}
	p, err := r2.GetProduct("pk")
	if err != nil || p.ProductSecret.Reveal() != "ps" {
		t.Errorf("product after reopen: %v, %v", p, err)
	}
}

func TestOpenRegistryNewFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "sub")
	e := newEnv(t)
	e.path = filepath.Join(dir, "registry.db")
	e.mustOpen(t)
	fi, err := os.Stat(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("registry mode = %v, want 0600", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only the registry (no temporary files)", names)
	}
	if _, err := secrets.OpenRegistry(filepath.Join(t.TempDir(), "x.db"), make([]byte, 16), nil); err == nil {
		t.Error("short key accepted")
	}
}

// fileState is a file's bytes and modification time, to prove a failed open
// left it alone.
type fileState struct {
	data  []byte
	mtime time.Time
}

func snapshot(t *testing.T, path string) fileState {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileState{data, fi.ModTime()}
}

func assertUntouched(t *testing.T, path string, before fileState) {
	t.Helper()
	after := snapshot(t, path)
	if !bytes.Equal(before.data, after.data) {
		t.Errorf("%s was modified (%d bytes before, %d after)", path, len(before.data), len(after.data))
	}
	if !before.mtime.Equal(after.mtime) {
		t.Errorf("%s mtime changed", path)
	}
}

func TestOpenRegistryWrongKey(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk", Dialect: secrets.Aliyun})
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, e.path)
	_, err := secrets.OpenRegistry(e.path, newKey(t), e.opts())
	wantErr(t, err, secrets.ErrWrongKey, e.path)
	assertUntouched(t, e.path, before)
	// The right key still works afterwards.
	if _, err := e.mustOpen(t).GetProduct("pk"); err != nil {
		t.Error(err)
	}
}

func TestOpenRegistryNotARegistry(t *testing.T) {
	random := func(n int) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			b := make([]byte, n)
			rand.Read(b)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	boltFile := func(fill func(tx *bolt.Tx) error) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(fill); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name string
		make func(t *testing.T, path string)
	}{
		{"random 100 bytes", random(100)},
		{"random 64 KiB", random(64 << 10)},
		{"zero-length", random(0)},
		{"text", func(t *testing.T, path string) { os.WriteFile(path, []byte("[gateway]\nname = \"x\"\n"), 0o600) }},
		{"foreign bbolt", boltFile(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket([]byte("mochi"))
			if err != nil {
				return err
			}
			return b.Put([]byte("k"), []byte("v"))
		})},
		{"empty bbolt", boltFile(func(tx *bolt.Tx) error { return nil })},
		{"bbolt with a foreign meta bucket", boltFile(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket([]byte("meta"))
			if err != nil {
				return err
			}
			return b.Put([]byte("magic"), []byte("something-else"))
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "file.db")
			tc.make(t, path)
			before := snapshot(t, path)
			_, err := secrets.OpenRegistry(path, newKey(t), &secrets.RegistryOptions{Timeout: 200 * time.Millisecond})
			wantErr(t, err, secrets.ErrNotRegistry, path+" is not an edgegw registry")
			assertUntouched(t, path, before)
		})
	}
	t.Run("directory", func(t *testing.T) {
		dir := t.TempDir()
		_, err := secrets.OpenRegistry(dir, newKey(t), nil)
		wantErr(t, err, secrets.ErrNotRegistry, dir)
	})
}

func TestOpenRegistryLocked(t *testing.T) {
	e := newEnv(t)
	e.mustOpen(t)
	before := snapshot(t, e.path)
	start := time.Now()
	_, err := secrets.OpenRegistry(e.path, e.key, e.opts())
	wantErr(t, err, secrets.ErrLocked, "registry "+e.path+" is locked by another process")
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("gave up after %v, before the 200ms timeout", el)
	}
	assertUntouched(t, e.path, before)
}

// TestOpenRegistryCorrupt damages a registry file in ways bbolt itself
// would fault or panic on (some in goroutines nothing can recover) and
// checks that OpenRegistry reports ErrCorrupt instead, without writing.
func TestOpenRegistryCorrupt(t *testing.T) {
	e := newEnv(t)
	r, err := secrets.OpenRegistry(e.path, e.key, e.opts())
	if err != nil {
		t.Fatal(err)
	}
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk", Dialect: secrets.Aliyun})
	// Enough devices that the devices bucket gets a branch page and
	// several leaves.
	for i := range 60 {
		mustAddDevice(t, r, secrets.Device{ProductKey: "pk", DeviceName: fmt.Sprintf("corrupt-me-%03d", i), DeviceSecret: secrets.NewSecret("s")})
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}

	// Page layout (bbolt v1, little endian on the machines we run on): a
	// 16-byte header {id u64, flags u16, count u16, overflow u32}, then
	// 16-byte elements; a branch element is {pos u32, ksize u32, pgid u64},
	// a leaf element {flags, pos, ksize, vsize u32}.
	const pageSize = 4096
	le := binary.LittleEndian
	// forPages applies fn to every page (live or freed) of the given type
	// that holds a device key, and reports how many it changed.
	forPages := func(data []byte, flags uint16, fn func(p []byte) bool) int {
		n := 0
		for off := 2 * pageSize; off+pageSize <= len(data); off += pageSize {
			p := data[off : off+pageSize]
			if le.Uint16(p[8:]) == flags && bytes.Contains(p, []byte("pk/corrupt-me-")) && fn(p) {
				n++
			}
		}
		return n
	}
	for _, tc := range []struct {
		name   string
		damage func(data []byte) ([]byte, int)
	}{
		{"page type", func(data []byte) ([]byte, int) {
			return data, forPages(data, 0x02, func(p []byte) bool { p[8], p[9] = 0xee, 0xee; return true })
		}},
		{"child page beyond the file", func(data []byte) ([]byte, int) {
			return data, forPages(data, 0x01, func(p []byte) bool { le.PutUint64(p[16+8:], 1<<40); return true })
		}},
		{"child page cycle", func(data []byte) ([]byte, int) {
			return data, forPages(data, 0x01, func(p []byte) bool { le.PutUint64(p[16+8:], le.Uint64(p)); return true })
		}},
		{"element outside the page", func(data []byte) ([]byte, int) {
			return data, forPages(data, 0x02, func(p []byte) bool { le.PutUint32(p[16+4:], 1<<20); return true })
		}},
		{"keys out of order", func(data []byte) ([]byte, int) {
			// Swap the first two keys of each leaf (positions are relative
			// to their element, which are 16 bytes apart).
			return data, forPages(data, 0x02, func(p []byte) bool {
				if le.Uint16(p[10:]) < 2 {
					return false
				}
				e0, e1 := p[16:32], p[32:48]
				pos0, k0, v0 := le.Uint32(e0[4:]), le.Uint32(e0[8:]), le.Uint32(e0[12:])
				pos1, k1, v1 := le.Uint32(e1[4:]), le.Uint32(e1[8:]), le.Uint32(e1[12:])
				le.PutUint32(e0[4:], pos1+16)
				le.PutUint32(e0[8:], k1)
				le.PutUint32(e0[12:], v1)
				le.PutUint32(e1[4:], pos0-16)
				le.PutUint32(e1[8:], k0)
				le.PutUint32(e1[12:], v0)
				return true
			})
		}},
		{"truncated", func(data []byte) ([]byte, int) { return data[:3*pageSize], 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, n := tc.damage(bytes.Clone(good))
			if n == 0 {
				t.Fatal("found nothing to damage")
			}
			path := filepath.Join(t.TempDir(), "registry.db")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, path)
			_, err = secrets.OpenRegistry(path, e.key, e.opts())
			wantErr(t, err, secrets.ErrCorrupt, path)
			t.Logf("%v", err)
			assertUntouched(t, path, before)
		})
	}
}

// TestRegistryDamagedRecord swaps the encrypted secrets of two device
// records in the file (what an attacker with write access, or a botched
// manual edit, could do): both must fail to decrypt rather than hand one
// device the other's secret, the registry must still open, the damage must
// be logged, and the other devices must keep working.
func TestRegistryDamagedRecord(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk", Dialect: secrets.Aliyun})
	for _, dn := range []string{"dev-a", "dev-b", "dev-c"} {
		mustAddDevice(t, r, secrets.Device{ProductKey: "pk", DeviceName: dn, DeviceSecret: secrets.NewSecret("secret-of-" + dn)})
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := bolt.Open(e.path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("devices"))
		var recA, recB map[string]any
		if err := json.Unmarshal(b.Get([]byte("pk/dev-a")), &recA); err != nil {
			return err
		}
		if err := json.Unmarshal(b.Get([]byte("pk/dev-b")), &recB); err != nil {
			return err
		}
		recA["secret"], recB["secret"] = recB["secret"], recA["secret"]
		a, _ := json.Marshal(recA)
		bb, _ := json.Marshal(recB)
		return errors.Join(b.Put([]byte("pk/dev-a"), a), b.Put([]byte("pk/dev-b"), bb))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	o := e.opts()
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	r = e.mustOpenWith(t, o)
	if !strings.Contains(logs.String(), "cannot be decrypted") || !strings.Contains(logs.String(), "count=2") {
		t.Errorf("open did not report the damaged records:\n%s", logs.String())
	}
	for _, dn := range []string{"dev-a", "dev-b"} {
		_, err := r.GetDevice("pk", dn)
		wantErr(t, err, nil, "get device pk/"+dn, "deviceSecret: cannot decrypt")
	}
	if d, err := r.GetDevice("pk", "dev-c"); err != nil || d.DeviceSecret.Reveal() != "secret-of-dev-c" {
		t.Errorf("undamaged device: %v, %v", d, err)
	}
	devs, err := r.Devices(secrets.DeviceFilter{})
	if err != nil || len(devs) != 1 || devs[0].DeviceName != "dev-c" {
		t.Errorf("Devices = %v, %v; want only dev-c", devs, err)
	}
	if counts, _ := r.CountDevices(); counts[secrets.StateReady] != 1 {
		t.Errorf("CountDevices = %v", counts)
	}
	assertNoLeak(t, "log", logs.Bytes(), "secret-of-dev-a", "secret-of-dev-b")
	// The damaged devices can be repaired by delete and add.
	if err := r.DeleteDevice("pk", "dev-a"); err != nil {
		t.Fatal(err)
	}
	mustAddDevice(t, r, secrets.Device{ProductKey: "pk", DeviceName: "dev-a", DeviceSecret: secrets.NewSecret("new")})
}

func TestRegistryConcurrentUpdates(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk", Dialect: secrets.Aliyun})
	mustAddDevice(t, r, secrets.Device{ProductKey: "pk", DeviceName: "counter", DeviceSecret: secrets.NewSecret("s"), StateReason: "0"})
	if err := r.SetLocalPassword("pk", "counter", secrets.NewSecret("pw")); err != nil {
		t.Fatal(err)
	}
	const writers, perWriter = 8, 20
	var wg sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, writers+4)
	for range writers {
		wg.Go(func() {
			for range perWriter {
				_, err := r.UpdateDevice("pk", "counter", func(d *secrets.Device) error {
					n, err := strconv.Atoi(d.StateReason)
					if err != nil {
						return err
					}
					d.StateReason = strconv.Itoa(n + 1)
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var readers sync.WaitGroup
	for i := range 4 {
		readers.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				var err error
				switch i % 4 {
				case 0:
					_, err = r.GetDevice("pk", "counter")
				case 1:
					_, err = r.Devices(secrets.DeviceFilter{ProductKey: "pk"})
				case 2:
					var ok bool
					if ok, err = r.CheckLocalPassword("pk", "counter", secrets.NewSecret("pw")); err == nil && !ok {
						err = errors.New("password check failed under concurrency")
					}
				case 3:
					_, err = r.CountDevices()
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	d, err := r.GetDevice("pk", "counter")
	if err != nil {
		t.Fatal(err)
	}
	if d.StateReason != strconv.Itoa(writers*perWriter) {
		t.Errorf("counter = %s, want %d (lost updates)", d.StateReason, writers*perWriter)
	}
}

func BenchmarkGetDevice(b *testing.B) {
	e := newEnv(b)
	r := e.mustOpen(b)
	mustPutProduct(b, r, secrets.Product{ProductKey: "pk", Dialect: secrets.Aliyun})
	const n = 1000
	err := func() error {
		for i := range n {
			if err := r.AddDevice(secrets.Device{ProductKey: "pk", DeviceName: fmt.Sprintf("dev-%04d", i), DeviceSecret: secrets.NewSecret("0123456789abcdef0123456789abcdef")}); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("dev-%04d", i)
	}
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.GetDevice("pk", names[i%n]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkCheckLocalPasswordCached(b *testing.B) {
	e := newEnv(b)
	r := e.mustOpenWith(b, &secrets.RegistryOptions{Now: e.clock.Now})
	mustPutProduct(b, r, secrets.Product{ProductKey: "pk", Dialect: secrets.Aliyun})
	mustAddDevice(b, r, secrets.Device{ProductKey: "pk", DeviceName: "dev-1", DeviceSecret: secrets.NewSecret("s")})
	pw := secrets.NewSecret("local-password")
	if err := r.SetLocalPassword("pk", "dev-1", pw); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if ok, err := r.CheckLocalPassword("pk", "dev-1", pw); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

// leakForms returns the ways a secret value could show up in bytes: the
// value, its hex, and its base64 (standard and URL alphabets, padded or not)
// at each of the three alignments it could have inside a longer encoding.
func leakForms(v string) []string {
	forms := []string{v, fmt.Sprintf("%x", v), fmt.Sprintf("%X", v)}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for shift := range 3 {
			s := enc.EncodeToString(append(make([]byte, shift), v...))
			// Drop the characters that depend on the neighbouring bytes.
			s = strings.TrimRight(s, "=")
			lo, hi := (shift*4+2)/3+1, len(s)-2
			if hi-lo >= 8 {
				forms = append(forms, s[lo:hi])
			}
		}
	}
	return forms
}

// assertNoLeak fails if s contains any form of any of the values.
func assertNoLeak(t *testing.T, what string, s []byte, values ...string) {
	t.Helper()
	for _, v := range values {
		for _, f := range leakForms(v) {
			if bytes.Contains(s, []byte(f)) {
				t.Errorf("%s leaks %q (as %q)", what, v, f)
			}
		}
	}
}

// TestRegistryLeak stores distinctive secrets and checks that they appear
// neither in the file, nor in any formatting, JSON or slog output of the
// exported types, nor in logs or error strings.
func TestRegistryLeak(t *testing.T) {
	const (
		devSecret  = "DevSecret-7Qz1Lk9Wm3Px"
		prodSecret = "ProdSecret-4Hn8Tv2Yc6Rb"
		localPW    = "LocalPw-9Js5Dg1Xe7Fa"
		actSecret  = "ActSecret-2Mu6Wq8Bn4Kc"
	)
	leaky := []string{devSecret, prodSecret, localPW, actSecret}

	var logText, logJSON bytes.Buffer
	logger := slog.New(slog.NewMultiHandler(
		slog.NewTextHandler(&logText, &slog.HandlerOptions{Level: slog.LevelDebug}),
		slog.NewJSONHandler(&logJSON, &slog.HandlerOptions{Level: slog.LevelDebug}),
	))
	e := newEnv(t)
	opts := e.opts()
	opts.Logger = logger
	r, err := secrets.OpenRegistry(e.path, e.key, opts)
	if err != nil {
		t.Fatal(err)
	}

	var errs []error
	keep := func(err error) {
		t.Helper()
		if err == nil {
			t.Error("invalid operation succeeded")
			return
		}
		errs = append(errs, err)
	}
	mustPutProduct(t, r, secrets.Product{ProductKey: "leakpk", Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret(prodSecret)})
	mustAddDevice(t, r, secrets.Device{ProductKey: "leakpk", DeviceName: "leak-dev", DeviceSecret: secrets.NewSecret(devSecret)})
	mustAddDevice(t, r, secrets.Device{ProductKey: "leakpk", DeviceName: "leak-dyn"})
	if err := r.SetLocalPassword("leakpk", "leak-dev", secrets.NewSecret(localPW)); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.CheckLocalPassword("leakpk", "leak-dev", secrets.NewSecret(localPW)); !ok || err != nil {
		t.Fatalf("CheckLocalPassword = %v, %v", ok, err)
	}
	if err := r.StoreActivatedSecret("leakpk", "leak-dyn", secrets.NewSecret(actSecret), "enos-activate"); err != nil {
		t.Fatal(err)
	}

	// Errors whose inputs carry the secrets.
	keep(r.AddDevice(secrets.Device{ProductKey: "leakpk", DeviceName: "leak-dev", DeviceSecret: secrets.NewSecret(devSecret)}))
	keep(r.AddDevice(secrets.Device{ProductKey: "leakpk", DeviceName: "leak-bad", DeviceSecret: secrets.NewSecret(devSecret + "\n")}))
	keep(r.AddDevice(secrets.Device{ProductKey: "leakpk", DeviceName: "leak-bad", DeviceSecret: secrets.NewSecret(devSecret), LocalPassword: localPW}))
	keep(r.AddDevice(secrets.Device{ProductKey: "nopk", DeviceName: "leak-bad", DeviceSecret: secrets.NewSecret(devSecret)}))
	_, err = r.PutProduct(secrets.Product{ProductKey: "leakpk2", Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret(" " + prodSecret)})
	keep(err)
	keep(r.StoreActivatedSecret("leakpk", "leak-dyn", secrets.NewSecret(actSecret+" x"), "enos-activate"))
	keep(r.StoreActivatedSecret("leakpk", "nodev", secrets.NewSecret(actSecret), "enos-activate"))
	keep(r.SetLocalPassword("leakpk", "nodev", secrets.NewSecret(localPW)))
	_, err = r.CheckLocalPassword("leakpk", "nodev", secrets.NewSecret(localPW))
	keep(err)
	_, err = r.UpdateDevice("leakpk", "leak-dev", func(d *secrets.Device) error {
		d.DeviceSecret = secrets.NewSecret(devSecret + "\t")
		return nil
	})
	keep(err)
	_, err = r.UpdateDevice("leakpk", "leak-dev", func(d *secrets.Device) error {
		d.LocalPassword = localPW
		return nil
	})
	keep(err)
	_, err = secrets.OpenRegistry(e.path, e.key, e.opts()) // locked
	keep(err)
	_, err = secrets.HashPassword(secrets.Secret{})
	keep(err)

	dev, err := r.GetDevice("leakpk", "leak-dev")
	if err != nil {
		t.Fatal(err)
	}
	if dev.DeviceSecret.Reveal() != devSecret || dev.LocalPassword == "" {
		t.Fatal("test setup: device does not hold the secrets")
	}
	prod, _ := r.GetProduct("leakpk")
	acts, _ := r.Activations("leakpk", "leak-dyn")
	if len(acts) != 1 || acts[0].Secret.Reveal() != actSecret || prod.ProductSecret.Reveal() != prodSecret {
		t.Fatal("test setup: product or activation does not hold the secrets")
	}
	devs, _ := r.Devices(secrets.DeviceFilter{})
	prods, _ := r.Products()
	counts, _ := r.CountDevices()
	checker := secrets.NewPasswordChecker(4)
	checker.Check(dev.LocalPassword, secrets.NewSecret(localPW))

	values := map[string]any{
		"Device": dev, "*Device": &dev, "[]Device": devs, "Product": prod, "*Product": &prod, "[]Product": prods,
		"ActivationRecord": acts[0], "[]ActivationRecord": acts, "DeviceFilter": secrets.DeviceFilter{ProductKey: "leakpk"},
		"RegistryOptions": *opts, "*Registry": r, "*PasswordChecker": checker, "PasswordCheckerStats": checker.Stats(),
		"counts": counts, "DeviceState": dev.State, "Dialect": prod.Dialect, "Secret": dev.DeviceSecret,
	}
	for i, err := range errs {
		values[fmt.Sprintf("error %d", i)] = err
	}
	var out bytes.Buffer
	for name, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X"} {
			s := fmt.Sprintf(verb, v)
			assertNoLeak(t, fmt.Sprintf("fmt %s of %s", verb, name), []byte(s), leaky...)
			out.WriteString(s)
		}
		if j, err := json.Marshal(v); err == nil {
			assertNoLeak(t, "JSON of "+name, j, leaky...)
			out.Write(j)
		}
		logger.Info("value", "name", name, "v", v)
	}
	for _, err := range errs {
		assertNoLeak(t, "error string", []byte(err.Error()), leaky...)
	}
	// The password hash is not printed either.
	if bytes.Contains(out.Bytes(), []byte(dev.LocalPassword)) || strings.Contains(logText.String()+logJSON.String(), dev.LocalPassword) {
		t.Error("the local password hash was printed")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	assertNoLeak(t, "text log", logText.Bytes(), leaky...)
	assertNoLeak(t, "JSON log", logJSON.Bytes(), leaky...)
	if !strings.Contains(logText.String(), "stored activated device secret") {
		t.Errorf("registry log lacks the activation line:\n%s", logText.String())
	}

	raw, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeak(t, "registry file", raw, leaky...)
	// The file does hold the identities: the scan is looking at the right bytes.
	if !bytes.Contains(raw, []byte("leakpk/leak-dev")) {
		t.Error("registry file does not contain the device key; leak scan is suspect")
	}
	mustCheckBolt(t, e.path)
}

func TestLeakFormsFindsEmbeddedBase64(t *testing.T) {
	// The helper must catch a secret inside a longer base64 string at any
	// alignment, or the leak test proves nothing.
	const v = "DevSecret-7Qz1Lk9Wm3Px"
	for shift := range 3 {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
			s := enc.EncodeToString([]byte(strings.Repeat("p", shift) + v + "suffix"))
			found := false
			for _, f := range leakForms(v) {
				found = found || strings.Contains(s, f)
			}
			if !found {
				t.Errorf("leakForms misses %q (shift %d)", s, shift)
			}
		}
	}
}

var updateRegistryGolden = flag.Bool("update-registry-golden", false, "rewrite secrets/testdata/registry/v1.db and v1.key")

// goldenClock is the fixed time the fixture was written at.
var goldenClock = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// writeRegistryGolden builds the format-version-1 fixture: one device in
// each state, a local password, an activation, both dialects.
func writeRegistryGolden(t *testing.T, dbPath, keyPath string) {
	os.Remove(dbPath)
	os.Remove(keyPath)
	key := newKey(t)
	if err := os.WriteFile(keyPath, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: goldenClock}
	r, err := secrets.OpenRegistry(dbPath, key, &secrets.RegistryOptions{Now: clock.Now, PasswordIterations: secrets.MinPasswordIterations})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	mustPutProduct(t, r, secrets.Product{ProductKey: "a1B2c3D4e5F", Dialect: secrets.Aliyun, ProductSecret: secrets.NewSecret("aliyun-product-secret")})
	mustPutProduct(t, r, secrets.Product{ProductKey: "enosprod", Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret("enos-product-secret")})
	mustAddDevice(t, r, secrets.Device{ProductKey: "a1B2c3D4e5F", DeviceName: "meter-01", DeviceSecret: secrets.NewSecret("meter-01-device-secret"), ClientID: "a1B2c3D4e5F.meter-01"})
	if err := r.SetLocalPassword("a1B2c3D4e5F", "meter-01", secrets.NewSecret("meter-01-local")); err != nil {
		t.Fatal(err)
	}
	mustAddDevice(t, r, secrets.Device{ProductKey: "enosprod", DeviceName: "dk-1"})
	clock.Advance(time.Minute)
	if err := r.StoreActivatedSecret("enosprod", "dk-1", secrets.NewSecret("dk-1-activated-secret"), "enos-activate"); err != nil {
		t.Fatal(err)
	}
	mustAddDevice(t, r, secrets.Device{ProductKey: "enosprod", DeviceName: "dk-2"})
	mustAddDevice(t, r, secrets.Device{ProductKey: "enosprod", DeviceName: "dk-3"})
	if _, err := r.UpdateDevice("enosprod", "dk-3", func(d *secrets.Device) error {
		d.State, d.StateReason, d.Disabled = secrets.StateActivationFailed, "activation refused (code 5)", true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestRegistryGoldenV1 opens a registry written by format version 1 (a
// committed fixture) and checks every value: later versions of edgegw must
// keep reading files plants already have.
func TestRegistryGoldenV1(t *testing.T) {
	dbFixture := filepath.Join("testdata", "registry", "v1.db")
	keyFixture := filepath.Join("testdata", "registry", "v1.key")
	if *updateRegistryGolden {
		writeRegistryGolden(t, dbFixture, keyFixture)
	}
	key, created, err := secrets.LoadOrCreateKey(keyFixture, nil)
	if err != nil || created {
		t.Fatalf("fixture key: %v (created %v)", err, created)
	}
	data, err := os.ReadFile(dbFixture)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{path: filepath.Join(t.TempDir(), "v1.db"), key: key, clock: newFakeClock()}
	if err := os.WriteFile(e.path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := e.mustOpen(t)

	ps, err := r.Products()
	if err != nil || len(ps) != 2 {
		t.Fatalf("Products = %v, %v", ps, err)
	}
	if ps[0].ProductKey != "a1B2c3D4e5F" || ps[0].Dialect != secrets.Aliyun || ps[0].ProductSecret.Reveal() != "aliyun-product-secret" || !ps[0].Created.Equal(goldenClock) ||
		ps[1].ProductKey != "enosprod" || ps[1].Dialect != secrets.EnOS || ps[1].ProductSecret.Reveal() != "enos-product-secret" {
		t.Errorf("products = %#v", ps)
	}
	devs, err := r.Devices(secrets.DeviceFilter{})
	if err != nil || len(devs) != 4 {
		t.Fatalf("Devices = %v, %v", devs, err)
	}
	later := goldenClock.Add(time.Minute)
	for _, want := range []struct {
		i                 int
		id, secret, cid   string
		state             secrets.DeviceState
		reason            string
		disabled, hasPass bool
		activated         time.Time
	}{
		{0, "a1B2c3D4e5F/meter-01", "meter-01-device-secret", "a1B2c3D4e5F.meter-01", secrets.StateReady, "", false, true, time.Time{}},
		{1, "enosprod/dk-1", "dk-1-activated-secret", "", secrets.StateReady, "", false, false, later},
		{2, "enosprod/dk-2", "", "", secrets.StateAwaitingActivation, "", false, false, time.Time{}},
		{3, "enosprod/dk-3", "", "", secrets.StateActivationFailed, "activation refused (code 5)", true, false, time.Time{}},
	} {
		d := devs[want.i]
		if d.ID().String() != want.id || d.DeviceSecret.Reveal() != want.secret || d.ClientID != want.cid || d.State != want.state ||
			d.StateReason != want.reason || d.Disabled != want.disabled || (d.LocalPassword != "") != want.hasPass ||
			!d.ActivatedAt.Equal(want.activated) || d.Created.IsZero() || d.Updated.IsZero() {
			t.Errorf("device %d = %#v", want.i, d)
		}
	}
	if ok, err := r.CheckLocalPassword("a1B2c3D4e5F", "meter-01", secrets.NewSecret("meter-01-local")); !ok || err != nil {
		t.Errorf("fixture local password: %v, %v", ok, err)
	}
	acts, err := r.Activations("enosprod", "dk-1")
	if err != nil || len(acts) != 1 || acts[0].Source != "enos-activate" || acts[0].Secret.Reveal() != "dk-1-activated-secret" || !acts[0].Time.Equal(later) {
		t.Errorf("activations = %+v, %v", acts, err)
	}
	// And it stays writable.
	mustAddDevice(t, r, secrets.Device{ProductKey: "enosprod", DeviceName: "dk-4", DeviceSecret: secrets.NewSecret("s")})
}
