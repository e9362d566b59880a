//go:build linux

package spool_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/edgegw/uplink/spool"
)

// A real full file system: a 2 MiB tmpfs (needs CAP_SYS_ADMIN; skipped
// otherwise, TestSpoolDiskFullMaxFileSize covers the same through
// bbolt's MaxSize). Appends fail with ErrDiskFull (ENOSPC), the stored
// messages stay readable, also after a restart, and after
// acknowledgements free pages appends work again.
func TestSpoolDiskFullTmpfs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=2m,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v)", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	path := filepath.Join(dir, "spool.db")
	o := spool.Options{DiskFullBackoff: time.Hour, CompactMinSize: -1}
	s, err := spool.Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	stored := fillUntilFull(t, s)
	tot := s.Totals()
	t.Logf("%d messages fit; file %d KiB; last error: %s", len(stored), tot.FileSize>>10, tot.LastError)
	if len(stored) < 1000 || !tot.DiskFull || !strings.Contains(tot.LastError, "no space left on device") {
		t.Errorf("after filling the tmpfs: %d messages, totals %+v", len(stored), tot)
	}
	checkStored(t, s, stored)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart on the full file system.
	s, err = spool.Open(path, o)
	if err != nil {
		t.Fatalf("reopen on a full file system: %v", err)
	}
	defer s.Close()
	checkStored(t, s, stored)
	if _, err := s.Append(context.Background(), dev(0), msg(strings.Repeat("x", 4000))); !errors.Is(err, spool.ErrDiskFull) {
		t.Logf("append right after reopen: %v (may fit in a freed page)", err)
	}
	for w := range 16 {
		ms := readAll(t, s, dev(w))
		for _, m := range ms[:len(ms)/2] {
			if err := s.Ack(dev(w), m.Seq); err != nil {
				t.Fatal(err)
			}
			delete(stored, m.Seq)
		}
	}
	syncQ(t, s)
	for i := range 100 {
		m := msg(fmt.Sprintf("after space returned %d", i))
		seq, err := s.Append(context.Background(), dev(0), m)
		if err != nil {
			t.Fatalf("append %d after freeing space: %v", i, err)
		}
		stored[seq] = m
	}
	checkStored(t, s, stored)
}
