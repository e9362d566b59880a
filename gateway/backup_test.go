package gateway_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/secrets"
)

// TestBackupRestore is issue #14's backup story: a running gateway with
// queued messages (cloud down) is backed up through gateway.backup while
// its devices keep publishing (and keep getting PUBACKs); the backup is
// restored into a fresh state directory with the same key; the gateway
// started there lets the devices log in with their secrets and delivers
// every message acknowledged before the backup, in order.
func TestBackupRestore(t *testing.T) {
	r := newRig(t, 2, 1, nil)
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	acks := newAckLog()
	f := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Window: 2, Interval: 2 * time.Millisecond, OnAck: acks.add})
	testutil.Eventually(t, 20*time.Second, func() bool { return f.Stats().Acked >= 40 }, "posts acknowledged while the cloud is down")

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	api, err := adminapi.Dial(ctx, adminapi.Options{URL: "unix://" + gwtest.Socket(r.cfg), Name: "backup-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()

	// Unusable paths are refused before anything is written.
	for _, bad := range []string{"relative/dir", filepath.Join(r.cfg.StateDir, "bk"), t.TempDir(), filepath.Join(t.TempDir(), "no", "parent")} {
		err := api.Call(ctx, adminapi.MethodGatewayBackup, adminapi.BackupParams{Path: bad, Spool: true}, nil)
		var ae *adminapi.Error
		if !errors.As(err, &ae) || ae.Code != adminapi.CodeBadRequest {
			t.Errorf("backup to %q: %v, want a 400", bad, err)
		}
	}

	before := map[string]map[int64]bool{}
	for _, d := range r.devices {
		before[d.DeviceName] = acks.of(d.DeviceName)
	}
	ackedBefore := f.Stats().Acked
	dir := filepath.Join(t.TempDir(), "backup")
	var m adminapi.Backup
	if err := api.Call(ctx, adminapi.MethodGatewayBackup, adminapi.BackupParams{Path: dir, Spool: true}, &m); err != nil {
		t.Fatal(err)
	}
	// Publishing went on: more posts are acknowledged after the backup.
	testutil.Eventually(t, 20*time.Second, func() bool { return f.Stats().Acked > ackedBefore+20 },
		"posts acknowledged after the backup")
	if m.Path != dir || m.Registry.Devices != 2 || m.Registry.Products != 1 || m.Spool == nil || m.Spool.Messages < 40 || m.Key != adminapi.BackupKeyNote {
		t.Errorf("backup reply %+v", m)
	}
	man, err := os.ReadFile(filepath.Join(dir, gateway.BackupManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range r.devices {
		for _, f := range []string{gateway.BackupManifestFile, gateway.BackupRegistryFile} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			if strings.Contains(string(b), d.Secret.Reveal()) {
				t.Errorf("%s holds a deviceSecret in clear", f)
			}
		}
	}
	t.Logf("manifest: %s", man)
	f.Close()
	r.stop()

	// Restore into a fresh state directory, with the same key.
	key, _, err := secrets.LoadOrCreateKey(r.cfg.EffectiveKeyFile(), nil)
	if err != nil {
		t.Fatal(err)
	}
	fresh := *r.cfg
	fresh.StateDir = filepath.Join(t.TempDir(), "restored")
	if err := os.MkdirAll(fresh.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	keyFile, _ := os.ReadFile(r.cfg.EffectiveKeyFile())
	if err := os.WriteFile(filepath.Join(fresh.StateDir, secrets.KeyFileName), keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := gateway.Restore(dir, fresh.StateDir, "", key); err != nil {
		t.Fatal(err)
	}
	if _, err := gateway.Restore(dir, fresh.StateDir, "", key); err == nil {
		t.Error("a second restore into the same state directory was not refused")
	}
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	r.cfg = &fresh
	r.start()

	for _, d := range r.devices {
		want := before[d.DeviceName]
		testutil.Eventually(t, 30*time.Second, func() bool {
			seen := map[int64]bool{}
			for _, s := range r.seqs(d) {
				seen[s] = true
			}
			for s := range want {
				if !seen[s] {
					return false
				}
			}
			return true
		}, "%s: messages acknowledged before the backup delivered from the restored spool", d.DeviceName)
		reconcile(t, d.DeviceName, r.seqs(d), want)
	}

	// The devices log in with their secrets: signed credentials (the fleet)
	// and the local password.
	f2 := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Window: 1, Count: 2})
	testutil.Eventually(t, 20*time.Second, func() bool { return f2.Stats().Acked >= 4 }, "devices log in to the restored gateway")
	if n := f2.Stats().Refused; n != 0 {
		t.Errorf("%d logins refused by the restored gateway", n)
	}
	d0 := r.devices[0]
	o := mqtt.NewClientOptions().AddBroker("tcp://" + r.local).SetClientID("pw-login").SetUsername(d0.DeviceName + "&" + testPK).
		SetPassword("pw-" + d0.DeviceName).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("local password login to the restored gateway: %v", tok.Error())
	}
	c.Disconnect(0)
}
