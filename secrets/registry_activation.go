package secrets

// Activation records: every deviceSecret obtained from the cloud, kept
// for good so that a secret the cloud issues only once is never lost.

import (
	"bytes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ActivationRecord is one deviceSecret the gateway obtained from the cloud
// (dynamic registration or activation), kept so that a secret that can be
// obtained only once is never lost to a later mistake.
type ActivationRecord struct {
	Seq    uint64    `json:"seq"`    // order of records for the device, from 1
	Time   time.Time `json:"time"`   // when it was stored
	Source string    `json:"source"` // e.g. "enos-activate", "aliyun-register"
	Secret Secret    `json:"secret"`

	// productSecretFP is the fingerprint of the productSecret the product
	// had when the secret was stored (nil for records stored before it was
	// kept, or for a product without one); see ObtainedWith.
	productSecretFP []byte
}

// ObtainedWith compares the productSecret the product had when the record
// was stored with productSecret. known is false when that cannot be told
// (a record from an older edgegw, or either secret absent); same is
// meaningful only when known. A record obtained with another productSecret
// belongs to an earlier incarnation of the product (re-created in the
// cloud, or its secret changed): its deviceSecret is unlikely to be valid.
func (a ActivationRecord) ObtainedWith(productSecret Secret) (known, same bool) {
	if a.productSecretFP == nil || productSecret.IsZero() {
		return false, false
	}
	return true, subtle.ConstantTimeCompare(a.productSecretFP, productSecretFingerprint(productSecret)) == 1
}

// productSecretFingerprint is a one-way digest of a productSecret, stored
// sealed like the secrets themselves.
func productSecretFingerprint(s Secret) []byte {
	if s.IsZero() {
		return nil
	}
	h := sha256.Sum256([]byte("edgegw-activation-product-secret\x00" + s.Reveal()))
	return h[:]
}

// StoreActivatedSecret records a deviceSecret obtained from the cloud: in
// one fsynced transaction it appends an activation record (time, source,
// encrypted secret, and a fingerprint of the product's productSecret:
// see ActivationRecord.ObtainedWith) and makes the device StateReady with that secret and
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
		rec := ActivationRecord{Seq: seq, Time: now, Source: source, Secret: secret, productSecretFP: productSecretFingerprint(p.ProductSecret)}
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

// activationRecord is the stored form of an ActivationRecord.
type activationRecord struct {
	V      int       `json:"v"`
	Time   time.Time `json:"t"`
	Source string    `json:"src"`
	Secret []byte    `json:"secret"`         // sealed
	PSFP   []byte    `json:"psfp,omitempty"` // sealed productSecret fingerprint
}

func encodeActivation(aead cipher.AEAD, key []byte, a ActivationRecord) ([]byte, error) {
	sealed, err := sealSecret(aead, bucketActivations, key, "secret", a.Secret)
	if err != nil {
		return nil, err
	}
	rec := activationRecord{V: recordVersion, Time: a.Time.UTC(), Source: a.Source, Secret: sealed}
	if a.productSecretFP != nil {
		if rec.PSFP, err = sealField(aead, bucketActivations, key, "productSecretFingerprint", a.productSecretFP); err != nil {
			return nil, err
		}
	}
	return json.Marshal(rec)
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
	out := ActivationRecord{Seq: binary.BigEndian.Uint64(key[i+1:]), Time: rec.Time, Source: rec.Source, Secret: sec}
	if rec.PSFP != nil {
		if out.productSecretFP, err = openField(aead, bucketActivations, key, "productSecretFingerprint", rec.PSFP); err != nil {
			return fail(err)
		}
	}
	return out, nil
}
