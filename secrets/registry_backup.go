package secrets

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Snapshot describes a copy of the registry file: its size and how many
// products and devices it holds. It holds no secret.
type Snapshot struct {
	Bytes    int64
	Products int
	Devices  int
}

// Backup writes a consistent copy of the registry file to w (bbolt's
// Tx.WriteTo inside a read transaction): writers are not blocked, the copy
// is the state of one moment. The copy holds the records encrypted exactly
// as the file does; the key is not in it, and without the key its secrets
// cannot be read.
func (r *Registry) Backup(w io.Writer) (Snapshot, error) {
	var s Snapshot
	err := r.db.View(func(tx *bolt.Tx) error { return snapshot(tx, w, &s) })
	if err != nil {
		return Snapshot{}, fmt.Errorf("back up registry %s: %w", r.path, err)
	}
	return s, nil
}

// BackupFile is Backup for a registry file no process holds open (the
// daemon is stopped): it opens path read-only, without the key, checks
// that it is an edgegw registry and copies it. If a process holds the file
// open the error wraps ErrLocked after timeout (0 means 2 s).
func BackupFile(path string, w io.Writer, timeout time.Duration) (Snapshot, error) {
	if timeout <= 0 {
		timeout = defaultLockTimeout
	}
	if _, err := os.Stat(path); err != nil {
		return Snapshot{}, fmt.Errorf("back up registry: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: timeout,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			return os.OpenFile(name, flag&^os.O_CREATE, perm)
		}})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return Snapshot{}, fmt.Errorf("back up registry %s: %w (is edgegw running? then back up through it)", path, ErrLocked)
	case err != nil:
		return Snapshot{}, fmt.Errorf("back up registry %s: %w: %w", path, ErrNotRegistry, err)
	}
	defer db.Close()
	var s Snapshot
	err = db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil || string(meta.Get(metaMagic)) != registryMagic {
			return ErrNotRegistry
		}
		return snapshot(tx, w, &s)
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("back up registry %s: %w", path, err)
	}
	return s, nil
}

func snapshot(tx *bolt.Tx, w io.Writer, s *Snapshot) error {
	if b := tx.Bucket(bucketProducts); b != nil {
		s.Products = b.Stats().KeyN
	}
	if b := tx.Bucket(bucketDevices); b != nil {
		s.Devices = b.Stats().KeyN
	}
	n, err := tx.WriteTo(w)
	s.Bytes = n
	return err
}
