package spool

import (
	"fmt"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Snapshot describes a copy of the spool file: its size and how many
// messages it holds (dead letters not counted).
type Snapshot struct {
	Bytes    int64
	Messages int
}

// Backup writes a consistent copy of the spool file to w: bbolt's
// Tx.WriteTo inside a read transaction, so the writer keeps committing
// (and devices keep getting their PUBACKs) while the copy is made. The
// copy is the file as of one commit: messages the cloud acknowledged after
// it, or whose deletion was still pending, are in it and are sent again
// from a restored copy (at least once).
//
// One limit: while the copy runs, a commit that has to grow the file's
// memory map waits for it (bbolt remaps only without readers); copying to
// local disk makes that wait short.
func (s *Spool) Backup(w io.Writer) (Snapshot, error) {
	var snap Snapshot
	err := s.db.View(func(tx *bolt.Tx) error { return copyTx(tx, w, &snap) })
	if err != nil {
		return Snapshot{}, fmt.Errorf("back up spool %s: %w", s.path, err)
	}
	return snap, nil
}

// BackupFile is Backup for a spool file no process holds open: it opens
// path read-only and copies it. If a process holds it open the error wraps
// ErrLocked after timeout (0 means 2 s).
func BackupFile(path string, w io.Writer, timeout time.Duration) (Snapshot, error) {
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	if _, err := os.Stat(path); err != nil {
		return Snapshot{}, fmt.Errorf("back up spool: %w", err)
	}
	db, err := openBolt(path, Options{LockTimeout: timeout}, true)
	if err != nil {
		return Snapshot{}, fmt.Errorf("back up: %w", err)
	}
	defer db.Close()
	if err := checkSpool(db, path, false); err != nil {
		return Snapshot{}, fmt.Errorf("back up: %w", err)
	}
	var snap Snapshot
	err = db.View(func(tx *bolt.Tx) error { return copyTx(tx, w, &snap) })
	if err != nil {
		return Snapshot{}, fmt.Errorf("back up spool %s: %w", path, err)
	}
	return snap, nil
}

func copyTx(tx *bolt.Tx, w io.Writer, s *Snapshot) error {
	if b := tx.Bucket(bucketMessages); b != nil {
		s.Messages = b.Stats().KeyN
	}
	n, err := tx.WriteTo(w)
	s.Bytes = n
	return err
}
