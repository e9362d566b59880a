package spool_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink/spool"
)

// buildSpoolFile makes a closed spool file with messages of several
// devices, enough for a multi-level tree, and returns its path and page
// size.
func buildSpoolFile(t *testing.T) (string, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "golden.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for d := range 8 {
		appendConcurrently(t, s, dev(d), 300, 16, payload200)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	return path, db.Info().PageSize
}

// copyFile copies the golden file to a fresh path.
func copyFile(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "spool.db")
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

func patch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// messagesRoot returns the page id of the messages bucket's root (a
// branch page for the golden file) and its first child.
func messagesRoot(t *testing.T, path string, pageSize int) (root, child uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		root = uint64(tx.Bucket([]byte("messages")).Root())
		info, err := tx.Page(int(root))
		if err != nil {
			return err
		}
		if info.Type != "branch" {
			return fmt.Errorf("messages root is a %s page, want branch", info.Type)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// First branch element: pos u32, ksize u32, pgid u64 after the 16-byte
	// page header.
	child = binary.NativeEndian.Uint64(b[int(root)*pageSize+16+8:])
	return root, child
}

// A damaged file is refused with ErrCorrupt naming it, never crashes the
// process, and is left as it was.
func TestSpoolCorruptFileRefused(t *testing.T) {
	golden, pageSize := buildSpoolFile(t)
	root, child := messagesRoot(t, golden, pageSize)
	ps := int64(pageSize)
	for _, tc := range []struct {
		name   string
		damage func(path string)
		want   string // part of the error
	}{
		{"truncated", func(p string) {
			fi, _ := os.Stat(p)
			if err := os.Truncate(p, fi.Size()/3); err != nil {
				t.Fatal(err)
			}
		}, "truncated"},
		{"both meta pages zeroed", func(p string) {
			patch(t, p, 0, make([]byte, 2*pageSize))
		}, "meta page"},
		{"branch points outside the file", func(p string) {
			patch(t, p, int64(root)*ps+16+8, binary.NativeEndian.AppendUint64(nil, 1<<40))
		}, "out of range"},
		{"page header overwritten", func(p string) {
			patch(t, p, int64(child)*ps, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		}, "identifies as"},
		{"leaf element count too large", func(p string) {
			patch(t, p, int64(child)*ps+10, []byte{0xff, 0xff})
		}, "do not fit"},
		{"branch keys out of order", func(p string) {
			// Swap the key of the second element of the root for a
			// smaller one: bbolt's Check reports the order.
			b, _ := os.ReadFile(p)
			el := int64(root)*ps + 16 + 16
			pos := int64(binary.NativeEndian.Uint32(b[el:]))
			patch(t, p, el+pos, make([]byte, 8))
		}, "key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := copyFile(t, golden)
			tc.damage(p)
			before, _ := os.ReadFile(p)
			_, err := spool.Open(p, spool.Options{})
			if !errors.Is(err, spool.ErrCorrupt) {
				t.Fatalf("open: %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name the file and %q", err, tc.want)
			}
			if after, _ := os.ReadFile(p); string(after) != string(before) {
				t.Error("the damaged file was modified")
			}
			to, err := spool.MoveAside(p, newFakeClock().Now())
			if err != nil || !strings.HasSuffix(to, ".corrupt-20260301T080000Z") {
				t.Errorf("MoveAside = %q, %v", to, err)
			}
			s := mustOpen(t, p, spool.Options{})
			if tot := s.Totals(); tot.Depth != 0 {
				t.Errorf("fresh spool after MoveAside holds %d messages", tot.Depth)
			}
		})
	}
}

// One damaged meta page is survivable: bbolt uses the other one (the
// state of the transaction before).
func TestSpoolOneMetaDamaged(t *testing.T) {
	golden, _ := buildSpoolFile(t)
	p := copyFile(t, golden)
	// Damage meta 0's transaction id: its checksum fails, and Open uses
	// meta 1 (if meta 0 was the newer one, the state of the transaction
	// before, at most one group of appends less).
	patch(t, p, 16+48, []byte{0xde, 0xad})
	s := mustOpen(t, p, spool.Options{})
	if tot := s.Totals(); tot.Depth < 8*300-16 {
		t.Errorf("after falling back to the other meta page: %d messages", tot.Depth)
	}
}

// Random damage anywhere in the data pages: Open either refuses the file
// with ErrCorrupt or opens it; then everything readable is read, damaged
// records are skipped and counted. Never a crash.
func TestSpoolRandomDamageNeverCrashes(t *testing.T) {
	golden, pageSize := buildSpoolFile(t)
	fi, _ := os.Stat(golden)
	pages := fi.Size() / int64(pageSize)
	opened, refused := 0, 0
	for seed := range 60 {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		p := copyFile(t, golden)
		for range 1 + r.IntN(40) {
			off := (2+r.Int64N(pages-2))*int64(pageSize) + r.Int64N(int64(pageSize))
			patch(t, p, off, []byte{byte(r.IntN(256))})
		}
		s, err := spool.Open(p, spool.Options{CompactMinSize: -1})
		if err != nil {
			if !errors.Is(err, spool.ErrCorrupt) {
				t.Fatalf("seed %d: open: %v, want ErrCorrupt", seed, err)
			}
			refused++
			continue
		}
		opened++
		n := 0
		for d := range 8 {
			n += len(readAll(t, s, dev(d)))
		}
		syncQ(t, s)
		tot := s.Totals()
		if n > tot.Depth+int(tot.Dropped[spool.ReasonCorrupt]) || tot.Depth > 8*300 {
			t.Errorf("seed %d: read %d, depth %d", seed, n, tot.Depth)
		}
		if err := s.Close(); err != nil {
			t.Errorf("seed %d: close: %v", seed, err)
		}
	}
	t.Logf("random damage: %d files opened (damage in free pages or values), %d refused", opened, refused)
}

// A bit flip inside a message record passes bbolt's check (it has no data
// checksums) but not the record's CRC: the message is deleted and counted
// as corrupt instead of being sent.
func TestSpoolDamagedRecordCountedNotSent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		mustAppend(t, s, dev(1), msg(fmt.Sprintf("payload-%d-%s", i, strings.Repeat("z", 50))))
	}
	s.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every copy: copy on write leaves old versions of the page in free
	// pages, and the live one is among them.
	n := 0
	for off := 0; ; {
		i := strings.Index(string(b[off:]), "payload-2-")
		if i < 0 {
			break
		}
		patch(t, path, int64(off+i+12), []byte("Z"))
		off += i + 1
		n++
	}
	if n == 0 {
		t.Fatal("record not found in the file")
	}

	s = mustOpen(t, path, spool.Options{})
	if got := payloads(readAll(t, s, dev(1))); len(got) != 4 || strings.HasPrefix(got[2], "payload-2") {
		t.Errorf("read %q", got)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return s.Totals().Dropped[spool.ReasonCorrupt] == 1 }, "corrupt record deleted")
	if tot := s.Totals(); tot.Depth != 4 {
		t.Errorf("depth %d, want 4", tot.Depth)
	}
}
