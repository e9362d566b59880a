package secrets_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	bolt "go.etcd.io/bbolt"
)

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
