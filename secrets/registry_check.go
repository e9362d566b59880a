package secrets

// Opening checks: the read-only verification of an existing registry file
// (bbolt structure, edgegw meta, key) before it is opened for writing.

import (
	"bytes"
	"fmt"
	"strconv"
	"time"

	"github.com/edgegw/edgegw/internal/boltcheck"
	bolt "go.etcd.io/bbolt"
)

type openStats struct {
	products, devices int
	bad               int      // undecodable device records
	badRecords        []string // the first few of their keys
}

// verify opens the file read-only (shared lock) and checks meta, key and
// bbolt consistency.
func (r *Registry) verify(timeout time.Duration) (st openStats, err error) {
	db, err := bolt.Open(r.path, 0o600, &bolt.Options{ReadOnly: true, Timeout: timeout})
	if err != nil {
		return st, r.openError(err, timeout)
	}
	defer db.Close()
	defer func() {
		// bbolt panics on some kinds of damaged pages.
		if p := recover(); p != nil {
			err = fmt.Errorf("open registry: %s is %w: bbolt: %v", r.path, ErrCorrupt, p)
		}
	}()
	// bbolt trusts page contents: a damaged page id or element offset makes
	// it fault or panic, in goroutines of its own where nothing can recover
	// (tx.Check and the freelist rebuild of a read-write open both walk the
	// tree that way). Walk the tree ourselves first, reading the file.
	if err := boltcheck.File(r.path); err != nil {
		return st, fmt.Errorf("open registry: %s is %w: %v", r.path, ErrCorrupt, err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		if problems := boltcheck.Tx(tx, maxCheckErrors, bolt.WithKVStringer(quietKV{})); len(problems) > 0 {
			if tx.Bucket(bucketMeta) == nil {
				return fmt.Errorf("open registry: %s is %w (a damaged bbolt file without edgegw meta): %v", r.path, ErrNotRegistry, problems)
			}
			return fmt.Errorf("open registry: %s is %w: %v", r.path, ErrCorrupt, problems)
		}
		if err := r.checkMeta(tx); err != nil {
			return err
		}
		for _, name := range [][]byte{bucketProducts, bucketDevices, bucketActivations} {
			if tx.Bucket(name) == nil {
				return fmt.Errorf("open registry: %s is %w: bucket %q missing", r.path, ErrCorrupt, name)
			}
		}
		st.products = tx.Bucket(bucketProducts).Stats().KeyN
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			st.devices++
			if _, err := decodeDevice(r.aead, k, v); err != nil {
				st.bad++
				if len(st.badRecords) < maxCheckErrors {
					st.badRecords = append(st.badRecords, quoteIdent(string(k)))
				}
			}
			return nil
		})
	})
	return st, err
}

// checkMeta verifies magic, format version and key check.
func (r *Registry) checkMeta(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil || !bytes.Equal(meta.Get(metaMagic), []byte(registryMagic)) {
		return fmt.Errorf("open registry: %s is %w (a bbolt file without edgegw's meta)", r.path, ErrNotRegistry)
	}
	v, err := strconv.Atoi(string(meta.Get(metaVersion)))
	if err != nil || v < 1 {
		return fmt.Errorf("open registry: %s is %w: bad format version", r.path, ErrCorrupt)
	}
	if v > registryFormatVersion {
		return fmt.Errorf("open registry %s: format version %d is newer than this edgegw supports (%d); upgrade edgegw", r.path, v, registryFormatVersion)
	}
	pt, err := openField(r.aead, bucketMeta, metaKeyCheck, "keycheck", meta.Get(metaKeyCheck))
	if err != nil || string(pt) != keyCheckPlaintext {
		return fmt.Errorf("open registry %s: %w", r.path, ErrWrongKey)
	}
	return nil
}

// quietKV makes bbolt's check messages show keys but never values.
type quietKV struct{}

func (quietKV) KeyToString(k []byte) string   { return quoteIdent(string(k)) }
func (quietKV) ValueToString(v []byte) string { return fmt.Sprintf("<%d bytes>", len(v)) }
