package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/edgegw/edgegw/internal/atomicfile"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Registry errors. Every error a Registry returns names the device
// ("productKey/deviceName") or product it is about and wraps one of these
// where one applies; none contains a secret.
var (
	// ErrNotFound: the product or device does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: the device already exists.
	ErrExists = errors.New("already exists")
	// ErrConflict: the change contradicts stored data (deleting a product
	// that still has devices, changing the dialect of a product in use).
	ErrConflict = errors.New("conflict")
	// ErrWrongKey: the key does not decrypt the registry's key check.
	ErrWrongKey = errors.New("wrong key: it does not decrypt this registry (restore the key file that created it)")
	// ErrNotRegistry: the file exists but is not an edgegw registry.
	ErrNotRegistry = errors.New("not an edgegw registry")
	// ErrLocked: another process (or another Registry in this process)
	// has the file open.
	ErrLocked = errors.New("locked by another process")
	// ErrCorrupt: the file failed bbolt's consistency check.
	ErrCorrupt = errors.New("corrupt")
)

// RegistryOptions configure OpenRegistry. The zero value (or nil) gives the
// defaults.
type RegistryOptions struct {
	// Logger receives the registry's few log lines; nil discards them.
	Logger *slog.Logger
	// Now is the clock for Created, Updated and activation times; nil
	// means time.Now.
	Now func() time.Time
	// Timeout is how long to wait for another process to release the
	// file's lock; 0 means 2 s.
	Timeout time.Duration
	// PasswordIterations is the PBKDF2 iteration count for new local
	// passwords; 0 means DefaultPasswordIterations. Tests lower it.
	PasswordIterations int
	// PasswordCacheSize bounds the verified-password cache; 0 means
	// DefaultPasswordCacheSize.
	PasswordCacheSize int
}

// Registry is the encrypted device registry: products, devices and
// activation records in a bbolt file. Every secret (deviceSecret,
// productSecret, activated secrets) and every local password hash is
// encrypted with AES-256-GCM under a key derived from the registry key, bound
// to its bucket, record key and field, so ciphertexts cannot be moved between
// records. Every write is one fsynced bbolt transaction. A Registry is safe
// for concurrent use.
type Registry struct {
	path       string
	db         *bolt.DB
	aead       cipher.AEAD
	log        *slog.Logger
	now        func() time.Time
	iterations int
	checker    *PasswordChecker
}

// String returns "registry PATH".
func (r *Registry) String() string { return "registry " + r.path }

// GoString returns the same as String (no key material).
func (r *Registry) GoString() string { return r.String() }

// Path returns the registry file's path.
func (r *Registry) Path() string { return r.path }

// File format.
const (
	registryMagic         = "edgegw-registry"
	registryFormatVersion = 1
	recordVersion         = 1
	keyCheckPlaintext     = "edgegw-registry key check v1"
	defaultLockTimeout    = 2 * time.Second
	maxCheckErrors        = 10
)

var (
	bucketMeta        = []byte("meta")
	bucketProducts    = []byte("products")
	bucketDevices     = []byte("devices")
	bucketActivations = []byte("activations")

	metaMagic    = []byte("magic")
	metaVersion  = []byte("version")
	metaKeyCheck = []byte("keycheck")
	metaCreated  = []byte("created")
)

// OpenRegistry opens the registry at path with key (KeySize bytes, see
// LoadOrCreateKey), creating it if the file does not exist. A new file is
// built under a temporary name and linked into place only when complete.
//
// An existing file is checked, opened read-only, before anything could
// write to it: it must be a bbolt file with edgegw's meta bucket (else the
// error wraps ErrNotRegistry), pass a structural walk of its pages and
// bbolt's tx.Check (ErrCorrupt), and have been made with this key
// (ErrWrongKey). In all those cases the file is left byte-for-byte
// untouched. If another process holds it open the error wraps ErrLocked
// after opts.Timeout. Device records that fail to decrypt or decode are
// logged at Error level (by key, not content); the registry still opens so
// the other devices keep working.
func OpenRegistry(path string, key []byte, opts *RegistryOptions) (*Registry, error) {
	var o RegistryOptions
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultLockTimeout
	}
	if o.PasswordIterations == 0 {
		o.PasswordIterations = DefaultPasswordIterations
	}
	if o.PasswordIterations < MinPasswordIterations || o.PasswordIterations > maxPasswordIterations {
		return nil, fmt.Errorf("open registry %s: PasswordIterations %d out of range [%d, %d]", path, o.PasswordIterations, MinPasswordIterations, maxPasswordIterations)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("open registry %s: key is %d bytes, want %d", path, len(key), KeySize)
	}
	aead, err := newRegistryAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("open registry %s: %w", path, err)
	}
	r := &Registry{
		path:       path,
		aead:       aead,
		log:        o.Logger,
		now:        o.Now,
		iterations: o.PasswordIterations,
		checker:    NewPasswordChecker(o.PasswordCacheSize),
	}

	created := false
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if created, err = r.create(o.Timeout, nil); err != nil {
			return nil, fmt.Errorf("create registry %s: %w", path, err)
		}
	case err != nil:
		return nil, fmt.Errorf("open registry: %w", err)
	case fi.IsDir():
		return nil, fmt.Errorf("open registry: %s is %w (it is a directory)", path, ErrNotRegistry)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("open registry: %s is %w (not a regular file)", path, ErrNotRegistry)
	case fi.Size() == 0:
		// bbolt would initialize an empty file as a new database.
		return nil, fmt.Errorf("open registry: %s is %w (empty file)", path, ErrNotRegistry)
	}

	// Verify read-only first: a read-write bbolt.Open of a damaged file can
	// panic in a goroutine of its own (rebuilding the freelist), and must
	// never touch a file that is not ours.
	st, err := r.verify(o.Timeout)
	if err != nil {
		return nil, err
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        o.Timeout,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
		// Never create: the file was verified above.
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			return os.OpenFile(name, flag&^os.O_CREATE, perm)
		},
	})
	if err != nil {
		return nil, r.openError(err, o.Timeout)
	}
	// The file could have been replaced between the two opens; the meta
	// check is cheap.
	if err := db.View(func(tx *bolt.Tx) error { return r.checkMeta(tx) }); err != nil {
		db.Close()
		return nil, err
	}
	r.db = db
	if st.bad > 0 {
		r.log.Error("registry has device records that cannot be decrypted or decoded; those devices are unusable until re-added",
			"path", path, "count", st.bad, "records", st.badRecords)
	}
	r.log.Info("opened device registry", "path", path, "created", created, "products", st.products, "devices", st.devices)
	return r, nil
}

// Close closes the file. It waits for running operations; later calls
// fail.
func (r *Registry) Close() error {
	if err := r.db.Close(); err != nil {
		return fmt.Errorf("close registry %s: %w", r.path, err)
	}
	return nil
}

// newRegistryAEAD derives the record-encryption key from the registry key
// with HKDF-SHA256, so that the key file could also key other things
// without reuse.
func newRegistryAEAD(key []byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, key, []byte(registryMagic), "edgegw registry v1 record encryption aes-256-gcm", 32)
	if err != nil {
		return nil, fmt.Errorf("derive record key: %w", err)
	}
	defer clear(k)
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("derive record key: %w", err)
	}
	return cipher.NewGCM(block)
}

// create builds a new registry in a temporary file and links it to r.path.
// It returns created=false when another process created the file first.
// fill, if not nil, adds records in the same transaction.
func (r *Registry) create(timeout time.Duration, fill func(*bolt.Tx) error) (created bool, err error) {
	dir := filepath.Dir(r.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	f, err := os.CreateTemp(dir, ".edgegw-registry-*.tmp")
	if err != nil {
		return false, err
	}
	tmp := f.Name()
	f.Close()
	defer os.Remove(tmp)

	db, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: timeout, FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if err != nil {
		return false, err
	}
	now := r.now().UTC()
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		for _, name := range [][]byte{bucketProducts, bucketDevices, bucketActivations} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		check, err := sealField(r.aead, bucketMeta, metaKeyCheck, "keycheck", []byte(keyCheckPlaintext))
		if err != nil {
			return err
		}
		if err := errors.Join(
			meta.Put(metaMagic, []byte(registryMagic)),
			meta.Put(metaVersion, []byte(strconv.Itoa(registryFormatVersion))),
			meta.Put(metaKeyCheck, check),
			meta.Put(metaCreated, []byte(now.Format(time.RFC3339Nano))),
		); err != nil || fill == nil {
			return err
		}
		return fill(tx)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, err
	}
	if err := atomicfile.SyncFile(tmp); err != nil {
		return false, err
	}
	if err := atomicfile.Link(tmp, r.path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// openError translates bbolt.Open errors.
func (r *Registry) openError(err error, timeout time.Duration) error {
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("open registry: registry %s is %w (waited %s)", r.path, ErrLocked, timeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch):
		return fmt.Errorf("open registry: %s is %w (not a bbolt file)", r.path, ErrNotRegistry)
	case errors.Is(err, berrors.ErrChecksum):
		return fmt.Errorf("open registry: %s is %w: bbolt meta page checksum mismatch", r.path, ErrCorrupt)
	}
	return fmt.Errorf("open registry %s: %w", r.path, err)
}
