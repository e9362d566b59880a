package secrets

// Record encryption and decoding shared by every record kind: each
// secret field is sealed with AES-256-GCM, bound to its bucket, record key
// and field.

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

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

// paramRecord is the stored form of a Param.
type paramRecord struct {
	K string `json:"k"`
	V string `json:"v"`
}

// paramList is the stored form of a []Param. It keeps nil (omitted with
// omitzero) apart from empty ("[]"): for Device.ConnectParams they mean
// different things.
type paramList []paramRecord

func newParamList(ps []Param) paramList {
	if ps == nil {
		return nil
	}
	l := make(paramList, len(ps))
	for i, p := range ps {
		l[i] = paramRecord{K: p.Key, V: p.Value}
	}
	return l
}

func (l paramList) params() []Param {
	if l == nil {
		return nil
	}
	ps := make([]Param, len(l))
	for i, p := range l {
		ps[i] = Param{Key: p.K, Value: p.V}
	}
	return ps
}
