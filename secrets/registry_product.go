package secrets

// Products: the Product record and the registry operations on products.

import (
	"bytes"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Product is a cloud product: its key, its dialect and, for dynamic
// registration or activation, its productSecret.
type Product struct {
	ProductKey    string  `json:"productKey"`
	Dialect       Dialect `json:"dialect"`
	ProductSecret Secret  `json:"productSecret,omitzero"`
	// DefaultConnectParams are the clientId extension parameters (see
	// ConnectParamKeys) the cloud sessions of this product's devices carry
	// until a device has presented its own at a signed login (see
	// Device.ConnectParams): what the product's firmware is known to send,
	// e.g. _ss=1,ext=3 for Link SDK 4.x. Devices that log in with local
	// passwords or certificates always get these. Alibaba only.
	DefaultConnectParams []Param   `json:"defaultConnectParams,omitempty"`
	Created              time.Time `json:"created,omitzero"`
	Updated              time.Time `json:"updated,omitzero"`
}

// String returns "product PK (dialect)".
func (p Product) String() string {
	return "product " + p.ProductKey + " (" + string(p.Dialect) + ")"
}

// LogValue implements slog.LogValuer; the productSecret appears only as
// whether it is set.
func (p Product) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("productKey", p.ProductKey),
		slog.String("dialect", string(p.Dialect)),
		slog.Bool("hasProductSecret", !p.ProductSecret.IsZero()),
	}
	if len(p.DefaultConnectParams) > 0 {
		attrs = append(attrs, slog.String("defaultConnectParams", FormatConnectParams(p.DefaultConnectParams)))
	}
	return slog.GroupValue(attrs...)
}

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
	if err := validateDefaultConnectParams(p); err != nil {
		return false, fmt.Errorf("put product %s: %w", p.ProductKey, err)
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

func validateDefaultConnectParams(p Product) error {
	if err := ValidateConnectParams(p.DefaultConnectParams); err != nil {
		return fmt.Errorf("defaultConnectParams: %w", err)
	}
	if len(p.DefaultConnectParams) > 0 && p.Dialect != Aliyun {
		return fmt.Errorf("defaultConnectParams: %w", errConnectParamsDialect)
	}
	return nil
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

// productRecord is the stored form of a Product (format version 1).
type productRecord struct {
	V             int       `json:"v"`
	ProductKey    string    `json:"pk"`
	Dialect       Dialect   `json:"dialect"`
	ProductSecret []byte    `json:"secret,omitempty"` // sealed
	Params        paramList `json:"params,omitempty"`
	Created       time.Time `json:"created,omitzero"`
	Updated       time.Time `json:"updated,omitzero"`
}

func encodeProduct(aead cipher.AEAD, p Product) ([]byte, error) {
	rec := productRecord{V: recordVersion, ProductKey: p.ProductKey, Dialect: p.Dialect, Params: newParamList(p.DefaultConnectParams),
		Created: p.Created.UTC(), Updated: p.Updated.UTC()}
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
	p := Product{ProductKey: rec.ProductKey, Dialect: rec.Dialect, ProductSecret: sec, Created: rec.Created, Updated: rec.Updated}
	if len(rec.Params) > 0 {
		p.DefaultConnectParams = rec.Params.params()
	}
	if err := validateDefaultConnectParams(p); err != nil {
		return fail(err)
	}
	return p, nil
}
