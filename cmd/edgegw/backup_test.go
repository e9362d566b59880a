package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// TestBackupRestoreCommands: edgegw backup through the running daemon,
// -state refused while it runs and working once it stopped, and edgegw
// restore into a fresh state directory checked against the key.
func TestBackupRestoreCommands(t *testing.T) {
	sim := gwtest.StartCloud(t, cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0"})
	cfg := gwtest.Config(t, sim)
	reg := gwtest.OpenRegistry(t, cfg)
	if _, err := reg.PutProduct(secrets.Product{ProductKey: "a1BkProd", Dialect: secrets.Aliyun}); err != nil {
		t.Fatal(err)
	}
	if err := reg.AddDevice(secrets.Device{ProductKey: "a1BkProd", DeviceName: "dev1", DeviceSecret: secrets.NewSecret("BkSecret-0123456789")}); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	gw := gwtest.Start(t, cfg, gateway.Options{})
	edgegw := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(args, strings.NewReader(""), &out, &errb)
		if strings.Contains(out.String()+errb.String(), "BkSecret") {
			t.Errorf("edgegw %q printed a secret", args)
		}
		return code, out.String(), errb.String()
	}
	tmp := t.TempDir()
	online := filepath.Join(tmp, "online")
	if code, out, errOut := edgegw("backup", "-socket", gwtest.Socket(cfg), "-o", online, "-spool"); code != 0 || !strings.Contains(out, "1 devices") || !strings.Contains(out, "NOT in the backup") {
		t.Fatalf("backup: exit %d, %q, %q", code, out, errOut)
	}
	if code, _, errOut := edgegw("backup", "-state", cfg.StateDir, "-o", filepath.Join(tmp, "offline")); code != 1 || !strings.Contains(errOut, "running") {
		t.Errorf("backup -state of a running gateway: exit %d, %q", code, errOut)
	}
	gw.Stop()
	if code, out, errOut := edgegw("backup", "-state", cfg.StateDir, "-o", filepath.Join(tmp, "offline"), "-spool"); code != 0 || !strings.Contains(out, "1 devices") {
		t.Errorf("backup -state: exit %d, %q, %q", code, out, errOut)
	}
	fresh := filepath.Join(tmp, "fresh")
	if code, out, errOut := edgegw("restore", "-from", online, "-state", fresh, "-key", cfg.EffectiveKeyFile()); code != 0 || !strings.Contains(out, "1 devices") {
		t.Fatalf("restore: exit %d, %q, %q", code, out, errOut)
	}
	if code, _, errOut := edgegw("restore", "-from", online, "-state", fresh); code != 1 || !strings.Contains(errOut, "not empty") {
		t.Errorf("restore over a restored state dir: exit %d, %q", code, errOut)
	}
	other := filepath.Join(tmp, "other.key")
	if _, _, err := secrets.LoadOrCreateKey(other, nil); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := edgegw("restore", "-from", online, "-state", filepath.Join(tmp, "fresh2"), "-key", other); code != 1 || !strings.Contains(errOut, "wrong key") {
		t.Errorf("restore with another key: exit %d, %q", code, errOut)
	}
}
