package spool_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgegw/edgegw/uplink/spool"
)

// gate is a writer whose first Write waits until it is released.
type gate struct {
	started, release chan struct{}
	buf              bytes.Buffer
}

func (g *gate) Write(p []byte) (int, error) {
	if g.started != nil {
		close(g.started)
		g.started = nil
		<-g.release
	}
	return g.buf.Write(p)
}

// TestSpoolBackupDoesNotBlockAppends: while a backup is being written,
// appends keep committing (a device keeps getting its PUBACKs); the copy
// is the spool of the moment the backup began, and opens as a spool with
// those messages.
func TestSpoolBackupDoesNotBlockAppends(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "spool.db")
	s := mustOpen(t, path, spool.Options{})
	d := dev(1)
	for i := range 5 {
		mustAppend(t, s, d, msg(string(payload200(i))))
	}
	g := &gate{started: make(chan struct{}), release: make(chan struct{})}
	started := g.started
	type res struct {
		snap spool.Snapshot
		err  error
	}
	done := make(chan res, 1)
	go func() {
		snap, err := s.Backup(g)
		done <- res{snap, err}
	}()
	<-started
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for i := range 5 {
		if _, err := s.Append(ctx, d, msg(string(payload200(10+i)))); err != nil {
			close(g.release)
			t.Fatalf("append during a backup: %v", err)
		}
	}
	close(g.release)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.snap.Messages != 5 || r.snap.Bytes != int64(g.buf.Len()) {
		t.Errorf("snapshot %+v (copy %d bytes), want 5 messages", r.snap, g.buf.Len())
	}
	s.Close()

	// The copy is a spool holding the 5 messages of that moment.
	cp := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(cp, g.buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c := mustOpen(t, cp, spool.Options{})
	if got := len(readAll(t, c, d)); got != 5 {
		t.Errorf("restored copy holds %d messages, want 5", got)
	}
	c.Close()

	// Offline, the file is copied read-only; the same file once open is
	// locked.
	var buf bytes.Buffer
	snap, err := spool.BackupFile(path, &buf, 0)
	if err != nil || snap.Messages != 10 {
		t.Errorf("BackupFile: %+v, %v; want 10 messages", snap, err)
	}
	s2 := mustOpen(t, path, spool.Options{})
	defer s2.Close()
	if _, err := spool.BackupFile(path, &buf, 100*time.Millisecond); err == nil {
		t.Error("BackupFile of a spool in use succeeded")
	}
}
