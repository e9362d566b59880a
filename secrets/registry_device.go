package secrets

// Devices: the Device record, its states, and the registry operations on
// devices and their local passwords.

import (
	"bytes"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
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
	LocalPassword string `json:"-"`
	// ConnectParams are the clientId extension parameters (see
	// ConnectParamKeys) the device presented at its last signed login, in
	// its order; its cloud session carries them so the cloud treats the
	// session as that firmware (docs/protocol.md §2.2, §7.9). nil means no
	// signed login seen yet: the product's DefaultConnectParams apply. An
	// empty, non-nil list means the device presented none. Alibaba only.
	ConnectParams []Param     `json:"connectParams,omitzero"`
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
	return fmt.Sprintf("secrets.Device{ProductKey:%q, DeviceName:%q, DeviceSecret:%#v, ClientID:%q, LocalPassword:%s, ConnectParams:%#v, Disabled:%t, State:%q, StateReason:%q, Created:%s, Updated:%s, ActivatedAt:%s}",
		d.ProductKey, d.DeviceName, d.DeviceSecret, d.ClientID, redactedIfSet(d.LocalPassword), d.ConnectParams, d.Disabled, d.State, d.StateReason,
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
	if d.ConnectParams != nil {
		attrs = append(attrs, slog.String("connectParams", FormatConnectParams(d.ConnectParams)))
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

// DeviceFilter selects and pages devices. Devices are returned in ascending
// ID order; to get the next page pass the last ID of this page as After.
type DeviceFilter struct {
	ProductKey string      // only this product's devices, if set
	State      DeviceState // only devices in this state, if set
	After      string      // only devices whose ID sorts after this one
	Limit      int         // at most this many devices; 0 means no limit
}

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

// SetConnectParams stores ps as the device's ConnectParams if they differ
// from the stored ones (EqualConnectParams) and reports whether they did,
// with the previous value; nil makes the device "never seen" again (its
// product's default applies). An unchanged device is not written. A disabled
// device is left alone (changed false): it cannot log in, and the next
// signed login after it is enabled stores its parameters. It runs on the
// local broker's login path, where a fleet logging in at once must not
// queue behind one fsync each: concurrent calls share one commit
// (bbolt's Batch).
func (r *Registry) SetConnectParams(pk, dn string, ps []Param) (prev []Param, changed bool, err error) {
	id := DeviceID{ProductKey: pk, DeviceName: dn}
	if err := ValidateConnectParams(ps); err != nil {
		return nil, false, fmt.Errorf("set connect params of device %s: %w", id, err)
	}
	d, err := r.GetDevice(pk, dn)
	if err != nil {
		return nil, false, err
	}
	if d.Disabled || EqualConnectParams(d.ConnectParams, ps) {
		return d.ConnectParams, false, nil
	}
	now := r.now().UTC().Round(0)
	// Batch may run the function more than once: it starts from the
	// stored record every time.
	err = r.db.Batch(func(tx *bolt.Tx) error {
		prev, changed = nil, false
		d, err := getDevice(r.aead, tx, pk, dn)
		if err != nil {
			return err
		}
		prev = d.ConnectParams
		if d.Disabled || EqualConnectParams(d.ConnectParams, ps) {
			return nil
		}
		p, err := getProduct(r.aead, tx, pk)
		if err != nil {
			return fmt.Errorf("product %s: %w", pk, err)
		}
		d.ConnectParams = slices.Clone(ps) // nil stays nil, empty stays empty
		d.Updated = now
		if err := validateDevice(d, p); err != nil {
			return err
		}
		data, err := encodeDevice(r.aead, d)
		if err != nil {
			return err
		}
		changed = true
		return tx.Bucket(bucketDevices).Put([]byte(id.String()), data)
	})
	if err != nil {
		return nil, false, fmt.Errorf("set connect params of device %s: %w", id, err)
	}
	return prev, changed, nil
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
	if err := ValidateConnectParams(d.ConnectParams); err != nil {
		return err
	}
	if len(d.ConnectParams) > 0 && p.Dialect != Aliyun {
		return fmt.Errorf("connectParams: %w", errConnectParamsDialect)
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

// deviceRecord is the stored form of a Device (format version 1).
type deviceRecord struct {
	V             int         `json:"v"`
	ProductKey    string      `json:"pk"`
	DeviceName    string      `json:"dn"`
	DeviceSecret  []byte      `json:"secret,omitempty"` // sealed
	ClientID      string      `json:"cid,omitempty"`
	LocalPassword []byte      `json:"pw,omitempty"`    // sealed encoded hash
	Params        paramList   `json:"params,omitzero"` // nil: none seen; [] seen, none presented
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
		ClientID: d.ClientID, Params: newParamList(d.ConnectParams), Disabled: d.Disabled, State: d.State, StateReason: d.StateReason,
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
		ConnectParams: rec.Params.params(), Disabled: rec.Disabled, State: rec.State, StateReason: rec.StateReason,
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
	if err := ValidateConnectParams(d.ConnectParams); err != nil {
		return Device{}, err
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
