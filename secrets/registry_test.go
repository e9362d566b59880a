package secrets_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
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
