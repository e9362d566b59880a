package secrets_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/secrets"
)

func TestDefaultKeyPath(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if got, want := secrets.DefaultKeyPath("/var/lib/edgegw"), "/var/lib/edgegw/edgegw.key"; got != want {
		t.Errorf("without credentials: %q, want %q", got, want)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edgegw.service")
	if got, want := secrets.DefaultKeyPath("/var/lib/edgegw"), "/run/credentials/edgegw.service/edgegw.key"; got != want {
		t.Errorf("with credentials: %q, want %q", got, want)
	}
}

func TestLoadOrCreateKeyCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // does not exist yet
	path := filepath.Join(dir, "edgegw.key")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	key, created, err := secrets.LoadOrCreateKey(path, log)
	if err != nil || !created || len(key) != secrets.KeySize {
		t.Fatalf("LoadOrCreateKey = %d bytes, %v, %v; want 32 bytes, true, nil", len(key), created, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != secrets.KeySize {
		t.Errorf("key file mode %v size %d, want 0600 and 32", fi.Mode().Perm(), fi.Size())
	}
	onDisk, _ := os.ReadFile(path)
	if !bytes.Equal(onDisk, key) {
		t.Error("file content differs from the returned key")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the key (no temporary files)", len(ents))
	}

	out := logs.String()
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, path) || !strings.Contains(out, "back it up") {
		t.Errorf("creation log = %q, want one line naming the path and asking for a backup", out)
	}
	assertNoLeak(t, "creation log", logs.Bytes(), string(key))

	// Second call loads the same key, logs nothing.
	logs.Reset()
	key2, created, err := secrets.LoadOrCreateKey(path, log)
	if err != nil || created || !bytes.Equal(key, key2) {
		t.Fatalf("reload = %v, %v; want the same key, created=false", created, err)
	}
	if logs.Len() != 0 {
		t.Errorf("reload logged %q", logs.String())
	}
}

func TestLoadOrCreateKeyFormats(t *testing.T) {
	raw := bytes.Repeat([]byte{0xA5, 0x5A, 0x00, 0xFF}, 8)
	hexKey := hex.EncodeToString(raw)
	edgy := append(append([]byte{' '}, raw[1:31]...), '\n')
	for _, tc := range []struct {
		name    string
		content []byte
		want    []byte
		wantErr string
	}{
		{"raw 32 bytes", raw, raw, ""},
		{"raw bytes that are whitespace at the edges", edgy, edgy, ""},
		{"hex", []byte(hexKey), raw, ""},
		{"hex upper with newline", []byte(strings.ToUpper(hexKey) + "\n"), raw, ""},
		{"hex with surrounding whitespace", []byte("  \t" + hexKey + "\r\n\n"), raw, ""},
		{"empty", nil, nil, "file has 0 bytes"},
		{"31 bytes", raw[:31], nil, "file has 31 bytes"},
		{"33 bytes", append(bytes.Clone(raw), 1), nil, "file has 33 bytes"},
		{"63 hex", []byte(hexKey[:63]), nil, "file has 63 bytes"},
		{"64 non-hex", []byte(strings.Repeat("zq", 32)), nil, "not all hex digits"},
		{"hex with inner space", []byte(hexKey[:32] + " " + hexKey[32:]), nil, "file has 65 bytes"},
		{"all zeros", make([]byte, 32), nil, "all zeros"},
		{"all zeros hex", []byte(strings.Repeat("0", 64)), nil, "all zeros"},
		{"huge", bytes.Repeat([]byte("SECRETISH"), 1000), nil, "larger than 4096 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "edgegw.key")
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			key, created, err := secrets.LoadOrCreateKey(path, nil)
			if tc.wantErr != "" {
				wantErr(t, err, nil, path, tc.wantErr)
				if err != nil && len(tc.content) >= 8 {
					assertNoLeak(t, "error", []byte(err.Error()), string(bytes.TrimSpace(tc.content))[:8])
				}
				after, _ := os.ReadFile(path)
				if !bytes.Equal(after, tc.content) {
					t.Error("malformed key file was modified")
				}
				return
			}
			if err != nil || created || !bytes.Equal(key, tc.want) {
				t.Errorf("LoadOrCreateKey = %x, %v, %v; want %x, false, nil", key, created, err, tc.want)
			}
		})
	}
}

func TestLoadOrCreateKeyErrors(t *testing.T) {
	t.Run("empty path", func(t *testing.T) {
		if _, _, err := secrets.LoadOrCreateKey("", nil); err == nil {
			t.Error("empty path accepted")
		}
	})
	t.Run("directory", func(t *testing.T) {
		dir := t.TempDir()
		_, _, err := secrets.LoadOrCreateKey(dir, nil)
		wantErr(t, err, nil, dir, "not a regular file")
	})
	t.Run("unwritable directory", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root ignores directory permissions")
		}
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
		path := filepath.Join(dir, "edgegw.key")
		_, _, err := secrets.LoadOrCreateKey(path, nil)
		wantErr(t, err, fs.ErrPermission, path)
	})
	t.Run("group readable warns", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "edgegw.key")
		if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 32), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o644); err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		if _, _, err := secrets.LoadOrCreateKey(path, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), "group or others") || !strings.Contains(logs.String(), path) {
			t.Errorf("no permission warning: %q", logs.String())
		}
	})
	t.Run("exists error is not ErrNotExist", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "edgegw.key")
		os.WriteFile(path, []byte("short"), 0o600)
		_, _, err := secrets.LoadOrCreateKey(path, nil)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("err = %v", err)
		}
	})
}

func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	// Several racing creators must all end up with the one key on disk.
	path := filepath.Join(t.TempDir(), "edgegw.key")
	const n = 8
	keys := make([][]byte, n)
	errs := make([]error, n)
	created := make([]bool, n)
	start := make(chan struct{})
	done := make(chan int, n)
	for i := range n {
		go func() {
			<-start
			keys[i], created[i], errs[i] = secrets.LoadOrCreateKey(path, nil)
			done <- i
		}()
	}
	close(start)
	for range n {
		<-done
	}
	onDisk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	nCreated := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("creator %d: %v", i, errs[i])
		}
		if !bytes.Equal(keys[i], onDisk) {
			t.Errorf("creator %d got a key that is not the one on disk", i)
		}
		if created[i] {
			nCreated++
		}
	}
	if nCreated != 1 {
		t.Errorf("%d callers report creating the key, want 1", nCreated)
	}
}
