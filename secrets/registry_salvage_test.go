package secrets_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// damagedRegistry makes a registry of n devices and one product and zeroes
// a page of device records that the tree still uses.
func damagedRegistry(t *testing.T, n int) *testEnv {
	t.Helper()
	e := newEnv(t)
	r, err := secrets.OpenRegistry(e.path, e.key, e.opts())
	if err != nil {
		t.Fatal(err)
	}
	mustPutProduct(t, r, secrets.Product{ProductKey: "pk", Dialect: secrets.Aliyun, ProductSecret: secrets.NewSecret("ps")})
	for i := range n {
		mustAddDevice(t, r, secrets.Device{ProductKey: "pk", DeviceName: fmt.Sprintf("salvage-%03d", i), DeviceSecret: secrets.NewSecret("s")})
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	const ps = 4096
	for p := len(data)/ps - 1; p >= 2; p-- {
		page := data[p*ps : (p+1)*ps]
		if page[8] != 0x02 || !containsBytes(page, "pk/salvage-") {
			continue
		}
		saved := append([]byte(nil), page...)
		clear(page)
		if err := os.WriteFile(e.path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		reg, err := secrets.OpenRegistry(e.path, e.key, e.opts())
		if err == nil {
			reg.Close()
		}
		if errors.Is(err, secrets.ErrCorrupt) {
			return e
		}
		copy(page, saved)
	}
	t.Fatal("no page of device records whose loss the registry notices")
	return nil
}

func containsBytes(b []byte, s string) bool { return bytes.Contains(b, []byte(s)) }

// Issue #13 item 6: a damaged registry is moved aside and what decrypts is
// recovered into a new file that opens; what is lost is counted.
func TestSalvageRegistry(t *testing.T) {
	const n = 60
	e := damagedRegistry(t, n)
	before := snapshot(t, e.path)
	// Another key proves nothing readable: the file stays as it is.
	if _, err := secrets.SalvageRegistry(e.path, newKey(t), e.opts(), time.Now()); !errors.Is(err, secrets.ErrWrongKey) {
		t.Fatalf("salvage with another key: %v, want ErrWrongKey", err)
	}
	assertUntouched(t, e.path, before)

	rep, err := secrets.SalvageRegistry(e.path, e.key, e.opts(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	if _, err := os.Stat(rep.MovedTo); err != nil {
		t.Errorf("damaged file not kept: %v", err)
	}
	r := e.mustOpen(t)
	devs, err := r.Devices(secrets.DeviceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != rep.Devices || len(devs) == 0 || len(devs) >= n || rep.LostRanges == 0 || len(devs)+rep.Unreadable > n {
		t.Errorf("%d devices in the new file; report %+v", len(devs), rep)
	}
	for _, d := range devs {
		if d.DeviceSecret.Reveal() != "s" {
			t.Errorf("%s: secret not recovered", d.ID())
		}
	}
	if p, err := r.GetProduct("pk"); err != nil || p.ProductSecret.Reveal() != "ps" {
		t.Errorf("product: %v", err)
	}
	for _, id := range rep.LostDevices {
		for _, d := range devs {
			if d.ID().String() == id {
				t.Errorf("%s reported lost and recovered", id)
			}
		}
	}
}
