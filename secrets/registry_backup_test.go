package secrets_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
)

// blockingWriter's first Write waits until release is closed.
type blockingWriter struct {
	started, release chan struct{}
	buf              bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	if w.started != nil {
		close(w.started)
		w.started = nil
		<-w.release
	}
	return w.buf.Write(p)
}

// TestRegistryBackup: a backup is the registry of one moment, made while
// changes keep committing; the copy opens with the same key (devices and
// secrets intact), holds no secret in clear, and refuses another key.
func TestRegistryBackup(t *testing.T) {
	e := newEnv(t)
	r := e.mustOpen(t)
	if _, err := r.PutProduct(secrets.Product{ProductKey: "a1Prod", Dialect: secrets.Aliyun}); err != nil {
		t.Fatal(err)
	}
	sec := secrets.NewSecret("backup-secret-0123456789abcdef")
	if err := r.AddDevice(secrets.Device{ProductKey: "a1Prod", DeviceName: "dev1", DeviceSecret: sec}); err != nil {
		t.Fatal(err)
	}
	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	started := w.started
	type res struct {
		s   secrets.Snapshot
		err error
	}
	done := make(chan res, 1)
	go func() {
		s, err := r.Backup(w)
		done <- res{s, err}
	}()
	<-started
	added := make(chan error, 1)
	go func() {
		added <- r.AddDevice(secrets.Device{ProductKey: "a1Prod", DeviceName: "dev2", DeviceSecret: sec})
	}()
	select {
	case err := <-added:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(20 * time.Second):
		t.Error("AddDevice blocked by a backup in progress")
	}
	close(w.release)
	got := <-done
	if got.err != nil {
		t.Fatal(got.err)
	}
	if got.s.Devices != 1 || got.s.Products != 1 || got.s.Bytes != int64(w.buf.Len()) {
		t.Errorf("snapshot %+v, want 1 product and 1 device", got.s)
	}
	if bytes.Contains(w.buf.Bytes(), []byte(sec.Reveal())) {
		t.Error("the backup holds a deviceSecret in clear")
	}

	cp := filepath.Join(t.TempDir(), "registry.db")
	if err := os.WriteFile(cp, w.buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.OpenRegistry(cp, newKey(t), nil); !errors.Is(err, secrets.ErrWrongKey) {
		t.Errorf("copy opened with another key: %v", err)
	}
	c, err := secrets.OpenRegistry(cp, e.key, nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.GetDevice("a1Prod", "dev1")
	if err != nil || !d.DeviceSecret.Equal(sec) {
		t.Errorf("restored device: %v (secret intact: %v)", err, err == nil && d.DeviceSecret.Equal(sec))
	}
	c.Close()

	// The live file is locked; offline copies need the daemon stopped.
	if _, err := secrets.BackupFile(e.path, &bytes.Buffer{}, 100*time.Millisecond); !errors.Is(err, secrets.ErrLocked) {
		t.Errorf("BackupFile of an open registry: %v, want ErrLocked", err)
	}
	r.Close()
	var buf bytes.Buffer
	if s, err := secrets.BackupFile(e.path, &buf, 0); err != nil || s.Devices != 2 {
		t.Errorf("BackupFile: %+v, %v; want 2 devices", s, err)
	}
	if _, err := secrets.BackupFile(cp+".missing", &buf, 0); err == nil {
		t.Error("BackupFile of a missing file succeeded")
	}
}
