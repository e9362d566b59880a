package secrets

// Salvage of a damaged registry file: what can be read of it, proved
// readable with the key, goes into a fresh file; the damaged one is kept.

import (
	"bytes"
	"crypto/cipher"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/edgegw/edgegw/internal/atomicfile"
	"github.com/edgegw/edgegw/internal/boltcheck"
	bolt "go.etcd.io/bbolt"
)

// RegistrySalvaged says what SalvageRegistry recovered.
type RegistrySalvaged struct {
	MovedTo     string // where the damaged file now is
	Products    int    // product records recovered
	Devices     int    // device records recovered
	Activations int    // activation records recovered
	// Unreadable counts the records that are lost: those found but that do
	// not decrypt or decode with the key, and those known (by their key,
	// from pages the damaged tree no longer reaches) to have been in a
	// damaged part of the file.
	Unreadable int
	// LostDevices names ("productKey/deviceName") the devices among them,
	// as far as they are known, so that the operator can add them again.
	LostDevices []string
	// LostRanges counts the damaged parts of the tree: their records are
	// lost, and not all of them may be known (Unreadable is a lower bound
	// when LostRanges > 0).
	LostRanges int
}

// SalvageRegistry recovers a registry file that OpenRegistry refused as
// corrupt (ErrCorrupt). It reads the file only with bounds-checked reads
// (internal/boltcheck), never through bbolt, and never writes to it.
//
// The key must be the registry's: if the file's key check can be read and
// does not decrypt, or nothing of the file decrypts with the key, the
// error wraps ErrWrongKey (or ErrNotRegistry) and the file is left where
// it is, untouched. Otherwise the file is renamed to
// "<path>.corrupt-<UTC time>" (kept for inspection), and a new registry is
// built at path from every product, device and activation record still
// reachable in the file that decrypts and decodes with the key: the sealed
// records are copied as they are, under the same bucket and key (their
// ciphertexts are bound to both). Records on pages the damaged tree no
// longer reaches are never recovered — they are older copies (a removed
// device, a rotated secret, a device since disabled) — but their keys
// tell which records the damage took; those and the undecryptable ones are
// counted in Unreadable. SalvageRegistry logs one line with the counts and
// the moved-aside path; OpenRegistry can then open path.
func SalvageRegistry(path string, key []byte, opts *RegistryOptions, now time.Time) (RegistrySalvaged, error) {
	var o RegistryOptions
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var rep RegistrySalvaged
	if len(key) != KeySize {
		return rep, fmt.Errorf("salvage registry %s: key is %d bytes, want %d", path, len(key), KeySize)
	}
	aead, err := newRegistryAEAD(key)
	if err != nil {
		return rep, fmt.Errorf("salvage registry %s: %w", path, err)
	}
	sv, f, err := boltcheck.SalvageFile(path)
	if err != nil {
		return rep, fmt.Errorf("salvage registry %s: %w", path, err)
	}
	res := salvageRegistryRead(sv, aead)
	f.Close()
	switch {
	case res.keyCheck != nil && !res.keyOK:
		return rep, fmt.Errorf("salvage registry %s: %w", path, ErrWrongKey)
	case !res.keyOK && res.decrypted == 0 && res.found > 0:
		return rep, fmt.Errorf("salvage registry %s: nothing decrypts: %w", path, ErrWrongKey)
	case !res.keyOK && res.found == 0 && !res.magic:
		return rep, fmt.Errorf("salvage registry %s: nothing of an edgegw registry is left: %w", path, ErrNotRegistry)
	}
	rep.Products, rep.Devices, rep.Activations = len(res.recs[0]), len(res.recs[1]), len(res.recs[2])
	rep.Unreadable, rep.LostDevices, rep.LostRanges = res.bad+len(res.lostKeys), res.lostDevices, res.lostRanges

	to := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, to); err != nil {
		return rep, fmt.Errorf("move registry %s aside: %w", path, err)
	}
	rep.MovedTo = to
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return rep, fmt.Errorf("move registry %s aside: %w", path, err)
	}
	r := &Registry{path: path, aead: aead, now: func() time.Time { return now }}
	created, err := r.create(defaultLockTimeout, func(tx *bolt.Tx) error {
		for i, name := range [][]byte{bucketProducts, bucketDevices, bucketActivations} {
			b := tx.Bucket(name)
			for _, x := range res.recs[i] {
				if err := b.Put(x.k, x.v); err != nil {
					return err
				}
			}
		}
		if res.created != nil {
			return tx.Bucket(bucketMeta).Put(metaCreated, res.created)
		}
		return nil
	})
	if err == nil && !created {
		err = fmt.Errorf("%s was created meanwhile", path)
	}
	if err != nil {
		o.Logger.Error("registry file is corrupt: moved aside; recovering its records failed",
			"moved_to", to, "err", err)
		return rep, fmt.Errorf("salvage registry %s into %s: %w", to, path, err)
	}
	o.Logger.Error("registry file is corrupt: moved aside; readable records recovered, the unreadable ones are lost (add those devices again)",
		"moved_to", to, "products", rep.Products, "devices", rep.Devices, "activations", rep.Activations,
		"unreadable", rep.Unreadable, "lost_devices", rep.LostDevices, "damaged_ranges", rep.LostRanges)
	return rep, nil
}

type salvagedKV struct{ k, v []byte }

type registrySalvage struct {
	recs        [3][]salvagedKV // products, devices, activations
	magic       bool
	keyCheck    []byte
	keyOK       bool
	created     []byte
	found       int // records found (readable or not)
	decrypted   int // records that decrypted
	bad         int // records found that do not decode
	lostKeys    map[string]bool
	lostDevices []string
	lostRanges  int
}

func salvageRegistryRead(sv *boltcheck.Salvager, aead cipher.AEAD) *registrySalvage {
	res := &registrySalvage{lostKeys: map[string]bool{}}
	buckets := [][]byte{bucketProducts, bucketDevices, bucketActivations}
	decode := func(i int, k, v []byte) error {
		var err error
		switch i {
		case 0:
			_, err = decodeProduct(aead, k, v)
		case 1:
			_, err = decodeDevice(aead, k, v)
		default:
			_, err = decodeActivation(aead, k, v)
		}
		return err
	}
	recovered := map[string]bool{} // bucket\x00key
	lost := sv.Walk(func(bucket [][]byte, k, v []byte, isBucket bool) {
		if len(bucket) != 1 || isBucket {
			return
		}
		if bytes.Equal(bucket[0], bucketMeta) {
			switch {
			case bytes.Equal(k, metaMagic):
				res.magic = bytes.Equal(v, []byte(registryMagic))
			case bytes.Equal(k, metaKeyCheck):
				res.keyCheck = bytes.Clone(v)
				pt, err := openField(aead, bucketMeta, metaKeyCheck, "keycheck", v)
				res.keyOK = err == nil && string(pt) == keyCheckPlaintext
			case bytes.Equal(k, metaCreated):
				res.created = bytes.Clone(v)
			}
			return
		}
		i := slices.IndexFunc(buckets, func(b []byte) bool { return bytes.Equal(b, bucket[0]) })
		if i < 0 {
			return
		}
		res.found++
		if err := decode(i, k, v); err != nil {
			res.bad++
			return
		}
		res.decrypted++
		res.recs[i] = append(res.recs[i], salvagedKV{bytes.Clone(k), bytes.Clone(v)})
		recovered[string(bucket[0])+"\x00"+string(k)] = true
	})
	// Which keys the damaged parts held: unreferenced leaf pages carry
	// (possibly older) copies of them. Only keys inside a lost range of a
	// bucket whose records look like that bucket's (so the copy decrypts
	// under the bucket's binding) are counted.
	res.lostRanges = len(lost)
	whole := false
	for _, l := range lost {
		if len(l.Bucket) == 0 {
			whole = true // the root itself: any bucket's records may be gone
		}
	}
	inLost := func(b, k []byte) bool {
		for _, l := range lost {
			if !whole && (len(l.Bucket) != 1 || !bytes.Equal(l.Bucket[0], b)) {
				continue
			}
			if (l.From == nil || bytes.Compare(k, l.From) >= 0) && (l.To == nil || bytes.Compare(k, l.To) < 0) {
				return true
			}
		}
		return false
	}
	if len(lost) > 0 {
		sv.Orphans(func(k, v []byte) {
			for i, b := range buckets {
				id := string(b) + "\x00" + string(k)
				if recovered[id] || res.lostKeys[id] || !inLost(b, k) || decode(i, k, v) != nil {
					continue
				}
				res.lostKeys[id] = true
				if i == 1 {
					res.lostDevices = append(res.lostDevices, quoteIdent(string(k)))
				}
			}
		})
	}
	slices.Sort(res.lostDevices)
	return res
}
