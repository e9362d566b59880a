package secrets

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/edgegw/edgegw/internal/atomicfile"
)

// KeySize is the size in bytes of the registry key.
const KeySize = 32

// KeyFileName is the name of the key file inside the state directory or
// systemd's credentials directory.
const KeyFileName = "edgegw.key"

// keyFileReadLimit bounds how much of a supposed key file is read: enough
// for 64 hex digits with generous surrounding whitespace.
const keyFileReadLimit = 4096

// DefaultKeyPath returns where the registry key lives:
// $CREDENTIALS_DIRECTORY/edgegw.key when systemd passed credentials
// (LoadCredential=edgegw.key:... in the unit), otherwise
// <stateDir>/edgegw.key.
func DefaultKeyPath(stateDir string) string {
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		return filepath.Join(dir, KeyFileName)
	}
	return filepath.Join(stateDir, KeyFileName)
}

// LoadOrCreateKey reads the registry key from path, or creates it if the
// file does not exist.
//
// A key file holds exactly 32 raw bytes, or 64 hexadecimal digits with
// optional surrounding whitespace (as `openssl rand -hex 32` writes). A
// missing file is created with 32 random bytes, mode 0600, atomically: a
// temporary file in the same directory is written and fsynced, then linked
// into place (never replacing a key another process created meanwhile) and
// the directory is fsynced. Creation is logged once at Warn level, naming
// the path (never the key), because the key must be backed up: without it
// the secrets in the registry cannot be recovered.
//
// Errors name the path and the problem, never the file's content.
func LoadOrCreateKey(path string, log *slog.Logger) (key []byte, created bool, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if path == "" {
		return nil, false, errors.New("load registry key: no key file path")
	}
	key, err = readKeyFile(path, log)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}

	key = make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, false, fmt.Errorf("create key file %s: read random bytes: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("create key file %s: %w", path, err)
	}
	err = atomicfile.Create(path, 0o600, func(f *os.File) error {
		_, err := f.Write(key)
		return err
	})
	if errors.Is(err, fs.ErrExist) {
		// Another process created it between our read and our link: use theirs.
		clear(key)
		key, err = readKeyFile(path, log)
		return key, false, err
	}
	if err != nil {
		clear(key)
		return nil, false, fmt.Errorf("create key file %s: %w", path, err)
	}
	log.Warn("created a new registry key; back it up, without it the registry's secrets cannot be recovered", "path", path)
	return key, true, nil
}

// readKeyFile reads and parses a key file. A missing file yields an error
// wrapping fs.ErrNotExist.
func readKeyFile(path string, log *slog.Logger) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("read key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read key file %s: not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, keyFileReadLimit+1))
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	defer clear(data)
	key, err := parseKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("read key file %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("registry key file is accessible to group or others; chmod 600 it", "path", path, "mode", fi.Mode().Perm().String())
	}
	return key, nil
}

// parseKeyFile accepts 32 raw bytes or 64 hex digits surrounded by optional
// whitespace. Its errors describe the shape, never the bytes.
func parseKeyFile(data []byte) ([]byte, error) {
	var key []byte
	switch {
	case len(data) == KeySize:
		key = bytes.Clone(data)
	default:
		t := bytes.TrimSpace(data)
		if len(t) != 2*KeySize {
			if len(data) > keyFileReadLimit {
				return nil, fmt.Errorf("file is larger than %d bytes, want %d raw bytes or %d hex digits", keyFileReadLimit, KeySize, 2*KeySize)
			}
			return nil, fmt.Errorf("file has %d bytes (%d without surrounding whitespace), want %d raw bytes or %d hex digits", len(data), len(t), KeySize, 2*KeySize)
		}
		key = make([]byte, KeySize)
		if _, err := hex.Decode(key, t); err != nil {
			clear(key)
			return nil, fmt.Errorf("file has %d characters but they are not all hex digits", 2*KeySize)
		}
	}
	var or byte
	for _, b := range key {
		or |= b
	}
	if or == 0 {
		return nil, errors.New("key is all zeros (a placeholder, not a key)")
	}
	return key, nil
}
