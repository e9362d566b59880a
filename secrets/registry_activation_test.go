package secrets_test

import (
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

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

// TestActivationRecordProductSecret: a record tells whether it was
// obtained with a given productSecret (kept sealed, across reopening and a
// deletion of the device), and says "unknown" when it cannot tell.
func TestActivationRecordProductSecret(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	mustPutProduct(t, r, secrets.Product{ProductKey: "enospk", Dialect: secrets.EnOS, ProductSecret: secrets.NewSecret("prodsec-1")})
	mustAddDevice(t, r, secrets.Device{ProductKey: "enospk", DeviceName: "dk-1"})
	if err := r.StoreActivatedSecret("enospk", "dk-1", secrets.NewSecret("issued-1"), "enos-activate"); err != nil {
		t.Fatal(err)
	}
	mustPutProduct(t, r, secrets.Product{ProductKey: "enospk2", Dialect: secrets.EnOS})
	mustAddDevice(t, r, secrets.Device{ProductKey: "enospk2", DeviceName: "dk-2", DeviceSecret: secrets.NewSecret("given")})
	if err := r.StoreActivatedSecret("enospk2", "dk-2", secrets.NewSecret("issued-2"), "enos-activate"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteDevice("enospk", "dk-1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r = e.mustOpen(t)
	recs, err := r.Activations("enospk", "dk-1")
	if err != nil || len(recs) != 1 {
		t.Fatalf("Activations = %v, %v", recs, err)
	}
	if known, same := recs[0].ObtainedWith(secrets.NewSecret("prodsec-1")); !known || !same {
		t.Errorf("with the same productSecret: known %t, same %t", known, same)
	}
	if known, same := recs[0].ObtainedWith(secrets.NewSecret("prodsec-2")); !known || same {
		t.Errorf("with another productSecret: known %t, same %t", known, same)
	}
	if known, _ := recs[0].ObtainedWith(secrets.Secret{}); known {
		t.Error("without a productSecret to compare: known")
	}
	recs, err = r.Activations("enospk2", "dk-2")
	if err != nil || len(recs) != 1 {
		t.Fatalf("Activations = %v, %v", recs, err)
	}
	if known, _ := recs[0].ObtainedWith(secrets.NewSecret("prodsec-1")); known {
		t.Error("a record stored while the product had no productSecret: known")
	}
}
