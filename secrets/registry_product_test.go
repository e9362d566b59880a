package secrets_test

import (
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

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
