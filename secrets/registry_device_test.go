package secrets_test

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

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
