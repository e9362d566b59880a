package boltcheck_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/edgegw/internal/boltcheck"
)

const pageSize = 4096

// buildFile makes a closed bbolt file with a multi-level bucket, a nested
// bucket with pages of its own, an inline bucket and (when syncFreelist)
// a freelist page, and returns its path and the root page of "big".
func buildFile(tb testing.TB, syncFreelist bool) (path string, bigRoot uint64) {
	tb.Helper()
	path = filepath.Join(tb.TempDir(), "check.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{PageSize: pageSize, NoFreelistSync: !syncFreelist, FreelistType: bolt.FreelistMapType})
	if err != nil {
		tb.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		big, err := tx.CreateBucket([]byte("big"))
		if err != nil {
			return err
		}
		for i := range 2000 {
			if err := big.Put(fmt.Appendf(nil, "key-%05d", i), bytes.Repeat([]byte{byte(i)}, 40)); err != nil {
				return err
			}
		}
		nested, err := big.CreateBucket([]byte("nested"))
		if err != nil {
			return err
		}
		for i := range 300 {
			if err := nested.Put(fmt.Appendf(nil, "n-%04d", i), make([]byte, 30)); err != nil {
				return err
			}
		}
		small, err := tx.CreateBucket([]byte("small"))
		if err != nil {
			return err
		}
		return small.Put([]byte("k"), []byte("v"))
	})
	if err != nil {
		tb.Fatal(err)
	}
	// A second transaction that frees pages, so the freelist is not empty.
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("big")).Delete([]byte("key-00001")) }); err != nil {
		tb.Fatal(err)
	}
	if err := db.View(func(tx *bolt.Tx) error {
		bigRoot = uint64(tx.Bucket([]byte("big")).Root())
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
	return path, bigRoot
}

func TestCheckSoundFile(t *testing.T) {
	for _, sync := range []bool{false, true} {
		path, _ := buildFile(t, sync)
		if err := boltcheck.File(path); err != nil {
			t.Errorf("syncFreelist=%t: %v", sync, err)
		}
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := db.View(func(tx *bolt.Tx) error {
			if p := boltcheck.Tx(tx, 10); len(p) != 0 {
				t.Errorf("syncFreelist=%t: bbolt check: %v", sync, p)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		db.Close()
	}
}

func TestCheckDamage(t *testing.T) {
	path, root := buildFile(t, true)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.NativeEndian
	rootAt := int(root) * pageSize
	if le.Uint16(good[rootAt+8:]) != 0x01 {
		t.Fatalf("root of big is not a branch page")
	}
	child := le.Uint64(good[rootAt+16+8:])
	// The current meta page is the one with the higher txid.
	meta := good[16:]
	if le.Uint64(good[pageSize+16+48:]) > le.Uint64(meta[48:]) {
		meta = good[pageSize+16:]
	}
	freelist := le.Uint64(meta[32:])
	for _, tc := range []struct {
		name   string
		damage func(b []byte) []byte
		want   string
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/3] }, "truncated"},
		{"both metas zeroed", func(b []byte) []byte { clear(b[:2*pageSize]); return b }, "meta page"},
		{"child out of range", func(b []byte) []byte { le.PutUint64(b[rootAt+16+8:], 1<<40); return b }, "out of range"},
		{"child twice", func(b []byte) []byte {
			le.PutUint64(b[rootAt+32+8:], child)
			return b
		}, "referenced twice"},
		{"page id", func(b []byte) []byte { le.PutUint64(b[int(child)*pageSize:], 7); return b }, "identifies as 7"},
		{"page type", func(b []byte) []byte { le.PutUint16(b[int(child)*pageSize+8:], 0x20); return b }, "neither branch nor leaf"},
		{"element count", func(b []byte) []byte { le.PutUint16(b[int(child)*pageSize+10:], 0xffff); return b }, "do not fit"},
		{"leaf element outside", func(b []byte) []byte { le.PutUint32(b[int(child)*pageSize+16+4:], 1<<20); return b }, "outside the page"},
		{"branch keys out of order", func(b []byte) []byte {
			el := rootAt + 32
			pos := int(le.Uint32(b[el:]))
			clear(b[el+pos : el+pos+4])
			return b
		}, "key"},
		{"freelist type", func(b []byte) []byte { le.PutUint16(b[int(freelist)*pageSize+8:], 0x02); return b }, "not a freelist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "freelist type" && (freelist == 0 || freelist == ^uint64(0)) {
				t.Skip("no freelist page")
			}
			b := tc.damage(bytes.Clone(good))
			err := boltcheck.Check(bytes.NewReader(b), int64(len(b)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// One damaged meta page is fine: bbolt uses the other one.
func TestCheckOneMetaDamaged(t *testing.T) {
	path, _ := buildFile(t, false)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{16 + 48, pageSize + 16 + 48} {
		d := bytes.Clone(b)
		d[off] ^= 0xff
		if err := boltcheck.Check(bytes.NewReader(d), int64(len(d))); err != nil {
			t.Errorf("meta at %d damaged: %v", off, err)
		}
	}
}

// FuzzCheck overwrites bytes of a sound file: Check must never panic or
// read out of bounds, and whatever it passes, bbolt must open and check
// without crashing.
func FuzzCheck(f *testing.F) {
	path, root := buildFile(f, true)
	base, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint32(root)*pageSize+16+8, []byte{0xff, 0xff, 0xff, 0x7f})
	f.Add(uint32(2*pageSize+8), []byte{0x01})
	f.Add(uint32(2*pageSize+10), []byte{0xff})
	f.Add(uint32(16+40), []byte{0x40})
	f.Add(uint32(len(base)/2), bytes.Repeat([]byte{0}, 64))
	f.Fuzz(func(t *testing.T, off uint32, patch []byte) {
		if len(patch) == 0 {
			return
		}
		data := bytes.Clone(base)
		copy(data[int(off)%len(data):], patch)
		if err := boltcheck.Check(bytes.NewReader(data), int64(len(data))); err != nil {
			return
		}
		p := filepath.Join(t.TempDir(), "f.db")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := bolt.Open(p, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			return
		}
		defer db.Close()
		_ = db.View(func(tx *bolt.Tx) error {
			boltcheck.Tx(tx, 10)
			return nil
		})
	})
}
