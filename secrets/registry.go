package secrets

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/edgegw/edgegw/internal/atomicfile"
	"github.com/edgegw/edgegw/internal/boltcheck"
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

// DeviceState is where a device stands with respect to its cloud identity.
type DeviceState string

const (
	// StateReady: the device has a deviceSecret and can connect.
	StateReady DeviceState = "ready"
	// StateAwaitingActivation: the device has no deviceSecret yet; its
	// product's productSecret will be used to obtain one (dynamic
	// registration or activation).
	StateAwaitingActivation DeviceState = "awaiting-activation"
	// StateActivationFailed: obtaining a deviceSecret failed; StateReason
	// says why.
	StateActivationFailed DeviceState = "activation-failed"
)

// Valid reports whether s is one of the defined states.
func (s DeviceState) Valid() bool {
	switch s {
	case StateReady, StateAwaitingActivation, StateActivationFailed:
		return true
	}
	return false
}

// String returns the state's name.
func (s DeviceState) String() string { return string(s) }

// Product is a cloud product: its key, its dialect and, for dynamic
// registration or activation, its productSecret.
type Product struct {
	ProductKey    string    `json:"productKey"`
	Dialect       Dialect   `json:"dialect"`
	ProductSecret Secret    `json:"productSecret,omitzero"`
	Created       time.Time `json:"created,omitzero"`
	Updated       time.Time `json:"updated,omitzero"`
}

// String returns "product PK (dialect)".
func (p Product) String() string {
	return "product " + p.ProductKey + " (" + string(p.Dialect) + ")"
}

// LogValue implements slog.LogValuer; the productSecret appears only as
// whether it is set.
func (p Product) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("productKey", p.ProductKey),
		slog.String("dialect", string(p.Dialect)),
		slog.Bool("hasProductSecret", !p.ProductSecret.IsZero()),
	)
}

// Device is one field device's cloud identity and local login.
type Device struct {
	ProductKey   string `json:"productKey"`
	DeviceName   string `json:"deviceName"` // the EnOS deviceKey for EnOS products
	DeviceSecret Secret `json:"deviceSecret,omitzero"`
	// ClientID is the bare MQTT clientId used towards the cloud; empty
	// means the uplink picks its default.
	ClientID string `json:"clientId,omitempty"`
	// LocalPassword is the encoded slow hash (HashPassword) of the password
	// the device uses on the local broker; empty means none. It is not the
	// password, but it allows offline guessing, so String, GoString,
	// LogValue and JSON omit it.
	LocalPassword string      `json:"-"`
	Disabled      bool        `json:"disabled,omitempty"`
	State         DeviceState `json:"state"`
	StateReason   string      `json:"stateReason,omitempty"`
	Created       time.Time   `json:"created,omitzero"`
	Updated       time.Time   `json:"updated,omitzero"`
	ActivatedAt   time.Time   `json:"activatedAt,omitzero"`
}

// ID returns the device's identity.
func (d Device) ID() DeviceID { return DeviceID{ProductKey: d.ProductKey, DeviceName: d.DeviceName} }

// String returns "device PK/DN (state[, disabled])".
func (d Device) String() string {
	s := "device " + d.ID().String() + " (" + string(d.State)
	if d.Disabled {
		s += ", disabled"
	}
	return s + ")"
}

// GoString implements fmt.GoStringer (%#v) without the local password hash.
func (d Device) GoString() string {
	return fmt.Sprintf("secrets.Device{ProductKey:%q, DeviceName:%q, DeviceSecret:%#v, ClientID:%q, LocalPassword:%s, Disabled:%t, State:%q, StateReason:%q, Created:%s, Updated:%s, ActivatedAt:%s}",
		d.ProductKey, d.DeviceName, d.DeviceSecret, d.ClientID, redactedIfSet(d.LocalPassword), d.Disabled, d.State, d.StateReason,
		d.Created.Format(time.RFC3339Nano), d.Updated.Format(time.RFC3339Nano), d.ActivatedAt.Format(time.RFC3339Nano))
}

// LogValue implements slog.LogValuer: identity and state, and only whether
// the secrets are set.
func (d Device) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("id", d.ID().String()),
		slog.String("state", string(d.State)),
		slog.Bool("hasDeviceSecret", !d.DeviceSecret.IsZero()),
		slog.Bool("hasLocalPassword", d.LocalPassword != ""),
	}
	if d.ClientID != "" {
		attrs = append(attrs, slog.String("clientId", d.ClientID))
	}
	if d.Disabled {
		attrs = append(attrs, slog.Bool("disabled", true))
	}
	if d.StateReason != "" {
		attrs = append(attrs, slog.String("reason", d.StateReason))
	}
	return slog.GroupValue(attrs...)
}

func redactedIfSet(s string) string {
	if s == "" {
		return `""`
	}
	return Redacted
}

// ActivationRecord is one deviceSecret the gateway obtained from the cloud
// (dynamic registration or activation), kept so that a secret that can be
// obtained only once is never lost to a later mistake.
type ActivationRecord struct {
	Seq    uint64    `json:"seq"`    // order of records for the device, from 1
	Time   time.Time `json:"time"`   // when it was stored
	Source string    `json:"source"` // e.g. "enos-activate", "aliyun-register"
	Secret Secret    `json:"secret"`
}

// DeviceFilter selects and pages devices. Devices are returned in ascending
// ID order; to get the next page pass the last ID of this page as After.
type DeviceFilter struct {
	ProductKey string      // only this product's devices, if set
	State      DeviceState // only devices in this state, if set
	After      string      // only devices whose ID sorts after this one
	Limit      int         // at most this many devices; 0 means no limit
}

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
		if created, err = r.create(o.Timeout); err != nil {
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
func (r *Registry) create(timeout time.Duration) (created bool, err error) {
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
		return errors.Join(
			meta.Put(metaMagic, []byte(registryMagic)),
			meta.Put(metaVersion, []byte(strconv.Itoa(registryFormatVersion))),
			meta.Put(metaKeyCheck, check),
			meta.Put(metaCreated, []byte(now.Format(time.RFC3339Nano))),
		)
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

// quietKV makes bbolt's check messages show keys but never values.
type quietKV struct{}

func (quietKV) KeyToString(k []byte) string   { return quoteIdent(string(k)) }
func (quietKV) ValueToString(v []byte) string { return fmt.Sprintf("<%d bytes>", len(v)) }

// --- products ---

// PutProduct creates or replaces a product after validating it and
// reports whether it was new. A new product keeps a non-zero Created (for
// imports) or gets now; on update Created is kept. Updated is set to now.
// Changing the dialect of a product that has devices fails with
// ErrConflict.
func (r *Registry) PutProduct(p Product) (created bool, err error) {
	if err := ValidateProductKey(p.Dialect, p.ProductKey); err != nil {
		return false, fmt.Errorf("put product: %w", err)
	}
	if !p.ProductSecret.IsZero() {
		if err := validateSecretValue("productSecret", p.ProductSecret); err != nil {
			return false, fmt.Errorf("put product %s: %w", p.ProductKey, err)
		}
	}
	now := r.now().UTC().Round(0)
	err = r.db.Update(func(tx *bolt.Tx) error {
		pb := tx.Bucket(bucketProducts)
		k := []byte(p.ProductKey)
		p.Updated = now
		if old := pb.Get(k); old != nil {
			prev, err := decodeProduct(r.aead, k, old)
			if err != nil {
				return err
			}
			if prev.Dialect != p.Dialect && productHasDevices(tx, p.ProductKey) {
				return fmt.Errorf("product has devices, cannot change its dialect from %s to %s: %w", prev.Dialect, p.Dialect, ErrConflict)
			}
			p.Created = prev.Created
		} else {
			created = true
			if p.Created.IsZero() {
				p.Created = now
			}
			p.Created = p.Created.UTC().Round(0)
		}
		data, err := encodeProduct(r.aead, p)
		if err != nil {
			return err
		}
		return pb.Put(k, data)
	})
	if err != nil {
		return false, fmt.Errorf("put product %s: %w", p.ProductKey, err)
	}
	return created, nil
}

// GetProduct returns the product with key pk.
func (r *Registry) GetProduct(pk string) (Product, error) {
	var p Product
	err := r.db.View(func(tx *bolt.Tx) error {
		var err error
		p, err = getProduct(r.aead, tx, pk)
		return err
	})
	if err != nil {
		return Product{}, fmt.Errorf("get product %s: %w", pk, err)
	}
	return p, nil
}

func getProduct(aead cipher.AEAD, tx *bolt.Tx, pk string) (Product, error) {
	k := []byte(pk)
	data := tx.Bucket(bucketProducts).Get(k)
	if data == nil {
		return Product{}, ErrNotFound
	}
	return decodeProduct(aead, k, data)
}

// DeleteProduct deletes a product that has no devices (ErrConflict
// otherwise).
func (r *Registry) DeleteProduct(pk string) error {
	err := r.db.Update(func(tx *bolt.Tx) error {
		pb := tx.Bucket(bucketProducts)
		if pb.Get([]byte(pk)) == nil {
			return ErrNotFound
		}
		if productHasDevices(tx, pk) {
			return fmt.Errorf("product still has devices: %w", ErrConflict)
		}
		return pb.Delete([]byte(pk))
	})
	if err != nil {
		return fmt.Errorf("delete product %s: %w", pk, err)
	}
	return nil
}

// Products returns all products ordered by key, skipping (and logging)
// undecodable records like Devices.
func (r *Registry) Products() ([]Product, error) {
	var out []Product
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketProducts).ForEach(func(k, v []byte) error {
			p, err := decodeProduct(r.aead, k, v)
			if err != nil {
				r.log.Error("skipping undecodable product record", "record", quoteIdent(string(k)), "err", err)
				return nil
			}
			out = append(out, p)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list products: %w", err)
	}
	return out, nil
}

func productHasDevices(tx *bolt.Tx, pk string) bool {
	prefix := []byte(pk + "/")
	k, _ := tx.Bucket(bucketDevices).Cursor().Seek(prefix)
	return k != nil && bytes.HasPrefix(k, prefix)
}

// --- devices ---

// AddDevice adds a new device. Its product must exist (ErrNotFound), the
// device must not (ErrExists). A device with a DeviceSecret is StateReady; one
// without gets StateAwaitingActivation, which requires the product to have a
// ProductSecret. LocalPassword, if set, must be an encoded hash (see
// HashPassword or SetLocalPassword). Created defaults to now.
func (r *Registry) AddDevice(d Device) error {
	id := d.ID()
	now := r.now().UTC().Round(0)
	err := r.db.Update(func(tx *bolt.Tx) error {
		p, err := getProduct(r.aead, tx, d.ProductKey)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("product %s: %w", d.ProductKey, ErrNotFound)
		} else if err != nil {
			return err
		}
		if d.DeviceSecret.IsZero() {
			if p.ProductSecret.IsZero() {
				return fmt.Errorf("no deviceSecret, and product %s has no productSecret to obtain one with", p.ProductKey)
			}
			d.State = StateAwaitingActivation
		} else {
			d.State = StateReady
		}
		if err := validateDevice(d, p); err != nil {
			return err
		}
		k := []byte(id.String())
		db := tx.Bucket(bucketDevices)
		if db.Get(k) != nil {
			return ErrExists
		}
		if d.Created.IsZero() {
			d.Created = now
		}
		d.Created = d.Created.UTC().Round(0)
		d.Updated = now
		d.ActivatedAt = d.ActivatedAt.UTC().Round(0)
		data, err := encodeDevice(r.aead, d)
		if err != nil {
			return err
		}
		return db.Put(k, data)
	})
	if err != nil {
		return fmt.Errorf("add device %s: %w", id, err)
	}
	return nil
}

// GetDevice returns the device pk/dn.
func (r *Registry) GetDevice(pk, dn string) (Device, error) {
	var d Device
	err := r.db.View(func(tx *bolt.Tx) error {
		var err error
		d, err = getDevice(r.aead, tx, pk, dn)
		return err
	})
	if err != nil {
		return Device{}, fmt.Errorf("get device %s: %w", DeviceID{ProductKey: pk, DeviceName: dn}.String(), err)
	}
	return d, nil
}

func getDevice(aead cipher.AEAD, tx *bolt.Tx, pk, dn string) (Device, error) {
	k := []byte(DeviceID{ProductKey: pk, DeviceName: dn}.String())
	data := tx.Bucket(bucketDevices).Get(k)
	if data == nil {
		return Device{}, ErrNotFound
	}
	return decodeDevice(aead, k, data)
}

// UpdateDevice atomically reads the device pk/dn, calls fn with a copy to
// modify, validates the result and stores it with Updated set to now. If
// fn returns an error nothing is stored and that error is returned
// (wrapped). fn must not change ProductKey or DeviceName and must not call
// the Registry (it runs inside the write transaction). It returns the
// stored device.
func (r *Registry) UpdateDevice(pk, dn string, fn func(*Device) error) (Device, error) {
	return r.updateDevice("update device", pk, dn, fn)
}

// updateDevice is UpdateDevice with the operation named in errors.
func (r *Registry) updateDevice(op, pk, dn string, fn func(*Device) error) (Device, error) {
	id := DeviceID{ProductKey: pk, DeviceName: dn}.String()
	now := r.now().UTC().Round(0)
	var out Device
	err := r.db.Update(func(tx *bolt.Tx) error {
		d, err := getDevice(r.aead, tx, pk, dn)
		if err != nil {
			return err
		}
		p, err := getProduct(r.aead, tx, pk)
		if err != nil {
			return fmt.Errorf("product %s: %w", pk, err)
		}
		created := d.Created
		if err := fn(&d); err != nil {
			return err
		}
		if d.ProductKey != pk || d.DeviceName != dn {
			return errors.New("productKey and deviceName cannot change (delete and add the device instead)")
		}
		d.Created = created
		d.Updated = now
		d.ActivatedAt = d.ActivatedAt.UTC().Round(0)
		if err := validateDevice(d, p); err != nil {
			return err
		}
		data, err := encodeDevice(r.aead, d)
		if err != nil {
			return err
		}
		out = d
		return tx.Bucket(bucketDevices).Put([]byte(id), data)
	})
	if err != nil {
		return Device{}, fmt.Errorf("%s %s: %w", op, id, err)
	}
	return out, nil
}

// DeleteDevice deletes the device pk/dn. Its activation records are kept:
// a secret obtained by one-time activation must survive an accidental
// delete (see Activations).
func (r *Registry) DeleteDevice(pk, dn string) error {
	id := DeviceID{ProductKey: pk, DeviceName: dn}.String()
	err := r.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		if b.Get([]byte(id)) == nil {
			return ErrNotFound
		}
		return b.Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("delete device %s: %w", id, err)
	}
	return nil
}

// Devices returns the devices matching f in ascending ID order. A record
// that cannot be decrypted or decoded (damage, or a restore mixing files)
// is skipped and logged at Error level, so one bad record does not keep
// every other device from starting; GetDevice on it returns the error.
func (r *Registry) Devices(f DeviceFilter) ([]Device, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("list devices: negative limit %d", f.Limit)
	}
	if f.State != "" && !f.State.Valid() {
		return nil, fmt.Errorf("list devices: unknown state %s", quoteIdent(string(f.State)))
	}
	var prefix []byte
	if f.ProductKey != "" {
		prefix = []byte(f.ProductKey + "/")
	}
	start := prefix
	if f.After != "" && f.After >= string(prefix) {
		start = []byte(f.After)
	}
	out := []Device{}
	err := r.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDevices).Cursor()
		k, v := c.Seek(start)
		if k != nil && f.After != "" && string(k) == f.After {
			k, v = c.Next()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			d, err := decodeDevice(r.aead, k, v)
			if err != nil {
				r.log.Error("skipping undecodable device record", "record", quoteIdent(string(k)), "err", err)
				continue
			}
			if f.State != "" && d.State != f.State {
				continue
			}
			out = append(out, d)
			if f.Limit > 0 && len(out) == f.Limit {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// CountDevices returns the number of devices in each state (every state
// is present in the map, zero or not). Undecodable records are not
// counted (see Devices).
func (r *Registry) CountDevices() (map[DeviceState]int, error) {
	counts := map[DeviceState]int{StateReady: 0, StateAwaitingActivation: 0, StateActivationFailed: 0}
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			d, err := decodeDevice(r.aead, k, v)
			if err != nil {
				return nil // reported by OpenRegistry and Devices
			}
			counts[d.State]++
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("count devices: %w", err)
	}
	return counts, nil
}

// SetLocalPassword stores a slow hash of pw as the device's local broker
// password; a zero pw removes it. The hash is computed before the write
// transaction starts.
func (r *Registry) SetLocalPassword(pk, dn string, pw Secret) error {
	encoded := ""
	if !pw.IsZero() {
		var err error
		if encoded, err = HashPasswordIterations(pw, r.iterations); err != nil {
			return fmt.Errorf("set local password of device %s: %w", DeviceID{ProductKey: pk, DeviceName: dn}.String(), err)
		}
	}
	_, err := r.updateDevice("set local password of device", pk, dn, func(d *Device) error {
		d.LocalPassword = encoded
		return nil
	})
	return err
}

// CheckLocalPassword reports whether pw is the local password of device
// pk/dn. It is false, without error, for a disabled device or one without
// a local password. Successful checks are remembered in memory (see
// PasswordChecker), so reconnects are cheap.
func (r *Registry) CheckLocalPassword(pk, dn string, pw Secret) (bool, error) {
	var d Device
	err := r.db.View(func(tx *bolt.Tx) error {
		var err error
		d, err = getDevice(r.aead, tx, pk, dn)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("check local password of device %s: %w", DeviceID{ProductKey: pk, DeviceName: dn}.String(), err)
	}
	if d.Disabled || d.LocalPassword == "" {
		return false, nil
	}
	return r.checker.Check(d.LocalPassword, pw), nil
}

// PasswordCheckerStats returns the counters of the registry's
// verified-password cache.
func (r *Registry) PasswordCheckerStats() PasswordCheckerStats { return r.checker.Stats() }

// StoreActivatedSecret records a deviceSecret obtained from the cloud: in
// one fsynced transaction it appends an activation record (time, source,
// encrypted secret) and makes the device StateReady with that secret and
// ActivatedAt set. source names the mechanism, e.g. "enos-activate" or
// "aliyun-register".
func (r *Registry) StoreActivatedSecret(pk, dn string, secret Secret, source string) error {
	id := DeviceID{ProductKey: pk, DeviceName: dn}.String()
	if err := validateSecretValue("deviceSecret", secret); err != nil {
		return fmt.Errorf("store activated secret of device %s: %w", id, err)
	}
	if err := validateActivationSource(source); err != nil {
		return fmt.Errorf("store activated secret of device %s: %w", id, err)
	}
	now := r.now().UTC().Round(0)
	var seq uint64
	err := r.db.Update(func(tx *bolt.Tx) error {
		d, err := getDevice(r.aead, tx, pk, dn)
		if err != nil {
			return err
		}
		p, err := getProduct(r.aead, tx, pk)
		if err != nil {
			return fmt.Errorf("product %s: %w", pk, err)
		}
		ab := tx.Bucket(bucketActivations)
		if seq, err = ab.NextSequence(); err != nil {
			return err
		}
		rec := ActivationRecord{Seq: seq, Time: now, Source: source, Secret: secret}
		ak := activationKey(id, seq)
		data, err := encodeActivation(r.aead, ak, rec)
		if err != nil {
			return err
		}
		if err := ab.Put(ak, data); err != nil {
			return err
		}
		d.DeviceSecret = secret
		d.State = StateReady
		d.StateReason = ""
		d.ActivatedAt = now
		d.Updated = now
		if err := validateDevice(d, p); err != nil {
			return err
		}
		dd, err := encodeDevice(r.aead, d)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketDevices).Put([]byte(id), dd)
	})
	if err != nil {
		return fmt.Errorf("store activated secret of device %s: %w", id, err)
	}
	r.log.Info("stored activated device secret", "device", id, "source", source, "seq", seq)
	return nil
}

// Activations returns the activation records of device pk/dn, oldest
// first. Records outlive DeleteDevice, so this works for a deleted device
// too; a device that never activated has none (and no error).
func (r *Registry) Activations(pk, dn string) ([]ActivationRecord, error) {
	id := DeviceID{ProductKey: pk, DeviceName: dn}.String()
	prefix := activationPrefix(id)
	out := []ActivationRecord{}
	err := r.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketActivations).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			rec, err := decodeActivation(r.aead, k, v)
			if err != nil {
				return err
			}
			out = append(out, rec)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list activations of device %s: %w", id, err)
	}
	return out, nil
}

// activationPrefix is "pk/dn\x00"; 0 cannot occur in an ID.
func activationPrefix(id string) []byte { return append([]byte(id), 0) }

func activationKey(id string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(activationPrefix(id), seq)
}

// validateDevice checks a device against its product before it is stored.
func validateDevice(d Device, p Product) error {
	if err := ValidateDeviceName(p.Dialect, d.DeviceName); err != nil {
		return err
	}
	if d.ClientID != "" {
		if err := ValidateClientID(d.ClientID); err != nil {
			return err
		}
	}
	if !d.DeviceSecret.IsZero() {
		if err := validateSecretValue("deviceSecret", d.DeviceSecret); err != nil {
			return err
		}
	}
	if d.LocalPassword != "" {
		if _, err := parsePasswordHash(d.LocalPassword); err != nil {
			return fmt.Errorf("localPassword: not an encoded hash (use SetLocalPassword): %w", err)
		}
	}
	if err := validateStateReason(d.StateReason); err != nil {
		return err
	}
	switch d.State {
	case StateReady:
		if d.DeviceSecret.IsZero() {
			return errors.New("state ready requires a deviceSecret")
		}
	case StateAwaitingActivation:
		if !d.DeviceSecret.IsZero() {
			return errors.New("state awaiting-activation: device already has a deviceSecret")
		}
		if p.ProductSecret.IsZero() {
			return fmt.Errorf("state awaiting-activation: product %s has no productSecret", p.ProductKey)
		}
	case StateActivationFailed:
		if !d.DeviceSecret.IsZero() {
			return errors.New("state activation-failed: device already has a deviceSecret")
		}
	default:
		return fmt.Errorf("state %s: unknown", quoteIdent(string(d.State)))
	}
	return nil
}

// --- record encoding ---

// aadFor binds a ciphertext to its bucket, record key and field:
// "edgegw-registry/1" then each part length-prefixed.
func aadFor(bucket, key []byte, field string) []byte {
	aad := []byte("edgegw-registry/1")
	for _, part := range [][]byte{bucket, key, []byte(field)} {
		aad = binary.AppendUvarint(aad, uint64(len(part)))
		aad = append(aad, part...)
	}
	return aad
}

// sealField encrypts plaintext: random 12-byte nonce || AES-GCM ciphertext.
func sealField(aead cipher.AEAD, bucket, key []byte, field string, plaintext []byte) ([]byte, error) {
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, fmt.Errorf("read random nonce: %w", err)
	}
	return aead.Seal(nonce, nonce, plaintext, aadFor(bucket, key, field)), nil
}

// openField decrypts what sealField made; any tampering, a swapped record
// or a wrong key yields an error.
func openField(aead cipher.AEAD, bucket, key []byte, field string, sealed []byte) ([]byte, error) {
	ns := aead.NonceSize()
	if len(sealed) < ns+aead.Overhead() {
		return nil, fmt.Errorf("%s: ciphertext too short", field)
	}
	pt, err := aead.Open(nil, sealed[:ns], sealed[ns:], aadFor(bucket, key, field))
	if err != nil {
		return nil, fmt.Errorf("%s: cannot decrypt (damaged, moved from another record, or another key)", field)
	}
	return pt, nil
}

func sealSecret(aead cipher.AEAD, bucket, key []byte, field string, s Secret) ([]byte, error) {
	if s.IsZero() {
		return nil, nil
	}
	return sealField(aead, bucket, key, field, []byte(s.Reveal()))
}

func openSecret(aead cipher.AEAD, bucket, key []byte, field string, sealed []byte) (Secret, error) {
	if sealed == nil {
		return Secret{}, nil
	}
	pt, err := openField(aead, bucket, key, field, sealed)
	if err != nil {
		return Secret{}, err
	}
	if len(pt) == 0 {
		return Secret{}, fmt.Errorf("%s: empty", field)
	}
	return NewSecret(string(pt)), nil
}

// strictUnmarshal decodes exactly one JSON object with no unknown fields.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after record")
	}
	return nil
}

// deviceRecord is the stored form of a Device (format version 1).
type deviceRecord struct {
	V             int         `json:"v"`
	ProductKey    string      `json:"pk"`
	DeviceName    string      `json:"dn"`
	DeviceSecret  []byte      `json:"secret,omitempty"` // sealed
	ClientID      string      `json:"cid,omitempty"`
	LocalPassword []byte      `json:"pw,omitempty"` // sealed encoded hash
	Disabled      bool        `json:"disabled,omitempty"`
	State         DeviceState `json:"state"`
	StateReason   string      `json:"reason,omitempty"`
	Created       time.Time   `json:"created,omitzero"`
	Updated       time.Time   `json:"updated,omitzero"`
	ActivatedAt   time.Time   `json:"activated,omitzero"`
}

// encodeDevice produces the stored bytes of d under key d.ID().
func encodeDevice(aead cipher.AEAD, d Device) ([]byte, error) {
	k := []byte(d.ID().String())
	rec := deviceRecord{
		V: recordVersion, ProductKey: d.ProductKey, DeviceName: d.DeviceName,
		ClientID: d.ClientID, Disabled: d.Disabled, State: d.State, StateReason: d.StateReason,
		Created: d.Created.UTC(), Updated: d.Updated.UTC(), ActivatedAt: d.ActivatedAt.UTC(),
	}
	var err error
	if rec.DeviceSecret, err = sealSecret(aead, bucketDevices, k, "deviceSecret", d.DeviceSecret); err != nil {
		return nil, err
	}
	if d.LocalPassword != "" {
		if rec.LocalPassword, err = sealField(aead, bucketDevices, k, "localPassword", []byte(d.LocalPassword)); err != nil {
			return nil, err
		}
	}
	return json.Marshal(rec)
}

// decodeDevice parses and decrypts a stored device record found under key.
// It rejects anything a writer could not have produced (unknown version or
// fields, a key that does not match the record's identity, undecryptable
// or misplaced ciphertexts, inconsistent state) with an error, and never
// panics.
func decodeDevice(aead cipher.AEAD, key, data []byte) (Device, error) {
	var rec deviceRecord
	if err := strictUnmarshal(data, &rec); err != nil {
		return Device{}, fmt.Errorf("decode device record %s: %w", quoteIdent(string(key)), err)
	}
	d, err := rec.device(aead, key)
	if err != nil {
		return Device{}, fmt.Errorf("decode device record %s: %w", quoteIdent(string(key)), err)
	}
	return d, nil
}

func (rec *deviceRecord) device(aead cipher.AEAD, key []byte) (Device, error) {
	if rec.V != recordVersion {
		return Device{}, fmt.Errorf("unsupported record version %d", rec.V)
	}
	if !validIdentifierAnyDialect(rec.ProductKey, rec.DeviceName) {
		return Device{}, errors.New("invalid productKey or deviceName")
	}
	if string(key) != (DeviceID{ProductKey: rec.ProductKey, DeviceName: rec.DeviceName}).String() {
		return Device{}, errors.New("record stored under another device's key")
	}
	d := Device{
		ProductKey: rec.ProductKey, DeviceName: rec.DeviceName, ClientID: rec.ClientID,
		Disabled: rec.Disabled, State: rec.State, StateReason: rec.StateReason,
		Created: rec.Created, Updated: rec.Updated, ActivatedAt: rec.ActivatedAt,
	}
	var err error
	if d.DeviceSecret, err = openSecret(aead, bucketDevices, key, "deviceSecret", rec.DeviceSecret); err != nil {
		return Device{}, err
	}
	if rec.LocalPassword != nil {
		pw, err := openField(aead, bucketDevices, key, "localPassword", rec.LocalPassword)
		if err != nil {
			return Device{}, err
		}
		if _, err := parsePasswordHash(string(pw)); err != nil {
			return Device{}, fmt.Errorf("localPassword: %w", err)
		}
		d.LocalPassword = string(pw)
	}
	if d.ClientID != "" {
		if err := ValidateClientID(d.ClientID); err != nil {
			return Device{}, err
		}
	}
	if err := validateStateReason(d.StateReason); err != nil {
		return Device{}, err
	}
	switch {
	case !d.State.Valid():
		return Device{}, fmt.Errorf("state %s: unknown", quoteIdent(string(d.State)))
	case (d.State == StateReady) != !d.DeviceSecret.IsZero():
		return Device{}, fmt.Errorf("state %s inconsistent with deviceSecret presence", d.State)
	}
	return d, nil
}

// productRecord is the stored form of a Product (format version 1).
type productRecord struct {
	V             int       `json:"v"`
	ProductKey    string    `json:"pk"`
	Dialect       Dialect   `json:"dialect"`
	ProductSecret []byte    `json:"secret,omitempty"` // sealed
	Created       time.Time `json:"created,omitzero"`
	Updated       time.Time `json:"updated,omitzero"`
}

func encodeProduct(aead cipher.AEAD, p Product) ([]byte, error) {
	rec := productRecord{V: recordVersion, ProductKey: p.ProductKey, Dialect: p.Dialect, Created: p.Created.UTC(), Updated: p.Updated.UTC()}
	var err error
	if rec.ProductSecret, err = sealSecret(aead, bucketProducts, []byte(p.ProductKey), "productSecret", p.ProductSecret); err != nil {
		return nil, err
	}
	return json.Marshal(rec)
}

// decodeProduct is decodeDevice for products.
func decodeProduct(aead cipher.AEAD, key, data []byte) (Product, error) {
	var rec productRecord
	fail := func(err error) (Product, error) {
		return Product{}, fmt.Errorf("decode product record %s: %w", quoteIdent(string(key)), err)
	}
	if err := strictUnmarshal(data, &rec); err != nil {
		return fail(err)
	}
	if rec.V != recordVersion {
		return fail(fmt.Errorf("unsupported record version %d", rec.V))
	}
	if err := ValidateProductKey(rec.Dialect, rec.ProductKey); err != nil {
		return fail(err)
	}
	if string(key) != rec.ProductKey {
		return fail(errors.New("record stored under another product's key"))
	}
	sec, err := openSecret(aead, bucketProducts, key, "productSecret", rec.ProductSecret)
	if err != nil {
		return fail(err)
	}
	return Product{ProductKey: rec.ProductKey, Dialect: rec.Dialect, ProductSecret: sec, Created: rec.Created, Updated: rec.Updated}, nil
}

// activationRecord is the stored form of an ActivationRecord.
type activationRecord struct {
	V      int       `json:"v"`
	Time   time.Time `json:"t"`
	Source string    `json:"src"`
	Secret []byte    `json:"secret"` // sealed
}

func encodeActivation(aead cipher.AEAD, key []byte, a ActivationRecord) ([]byte, error) {
	sealed, err := sealSecret(aead, bucketActivations, key, "secret", a.Secret)
	if err != nil {
		return nil, err
	}
	return json.Marshal(activationRecord{V: recordVersion, Time: a.Time.UTC(), Source: a.Source, Secret: sealed})
}

func decodeActivation(aead cipher.AEAD, key, data []byte) (ActivationRecord, error) {
	fail := func(err error) (ActivationRecord, error) {
		return ActivationRecord{}, fmt.Errorf("decode activation record: %w", err)
	}
	i := bytes.IndexByte(key, 0)
	if i < 0 || len(key)-i-1 != 8 {
		return fail(errors.New("malformed key"))
	}
	var rec activationRecord
	if err := strictUnmarshal(data, &rec); err != nil {
		return fail(err)
	}
	if rec.V != recordVersion {
		return fail(fmt.Errorf("unsupported record version %d", rec.V))
	}
	sec, err := openSecret(aead, bucketActivations, key, "secret", rec.Secret)
	if err != nil {
		return fail(err)
	}
	if sec.IsZero() {
		return fail(errors.New("no secret"))
	}
	return ActivationRecord{Seq: binary.BigEndian.Uint64(key[i+1:]), Time: rec.Time, Source: rec.Source, Secret: sec}, nil
}
