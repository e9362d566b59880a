package gateway_test

import (
	"crypto/tls"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

const (
	actAliPK       = "a1ActProd01"
	actEnOSPK      = "actEnosProd1"
	actProductKey  = "productSecret-0123456789"
	actWrongSecret = "wrongProductSecret-0001"
)

// actCloud is a simulated cloud with one product that allows dynamic
// activation, and the gateway configuration that reaches it.
type actCloud struct {
	dialect secrets.Dialect
	pk      string
	sim     *cloudsim.Sim
	cfg     *config.Config
}

// newActCloud starts a simulator for dialect d (Alibaba over TLS, since
// dynamic registration needs it; EnOS over TCP) and prepares a gateway
// configuration for it in a fresh state directory. tcpOnly points an
// Alibaba gateway at the plain TCP listener instead.
func newActCloud(t *testing.T, d secrets.Dialect, tcpOnly bool) *actCloud {
	t.Helper()
	dir := t.TempDir()
	c := &actCloud{dialect: d, pk: actEnOSPK}
	simCfg := cloudsim.Config{Dialect: d, Listen: "127.0.0.1:0", DeviceRate: cloudsim.RateUnlimited}
	var caFile string
	if d == secrets.Aliyun {
		c.pk = actAliPK
		pki := testutil.NewPKI(t)
		caFile, simCfg.TLSConfig = pki.CAFile, pki.ServerTLS(tls.NoClientCert)
		simCfg.TLSListen = "127.0.0.1:0"
	}
	simCfg.Products = []cloudsim.Product{{ProductKey: c.pk, Secret: secrets.NewSecret(actProductKey)}}
	sim := gwtest.StartCloud(t, simCfg)
	c.sim = sim

	cfg := config.Default()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0"}
	cfg.Cloud.Dialect = d
	cfg.Cloud.Endpoint = "tcp://" + sim.Addr(cloudsim.TCP)
	if d == secrets.Aliyun {
		if !tcpOnly {
			cfg.Cloud.Endpoint = "tls://" + sim.Addr(cloudsim.TLS)
			cfg.Cloud.CAFile = caFile
		}
		// EnOS keeps its defaults: its backoff floor (30 s) exceeds these.
		cfg.Cloud.BackoffMin = config.Duration(50 * time.Millisecond)
		cfg.Cloud.BackoffMax = config.Duration(500 * time.Millisecond)
	}
	cfg.Metrics.Listen = ""
	cfg.Shutdown.Timeout = config.Duration(15 * time.Second) // roomy: under -race on a loaded CI box a part can take seconds to stop
	c.cfg = cfg
	return c
}

// device returns a simulated device that logs in to the gateway with its
// local password (it has no deviceSecret to sign with).
func (c *actCloud) device(dn string) devsim.Device {
	return devsim.Device{Dialect: c.dialect, ProductKey: c.pk, DeviceName: dn, LocalPassword: secrets.NewSecret("pw-" + dn)}
}

// openRegistry opens the gateway's registry (the gateway must not run).
func (c *actCloud) openRegistry(t *testing.T) *secrets.Registry {
	t.Helper()
	return gwtest.OpenRegistry(t, c.cfg)
}

// addAwaiting registers devices in the cloud (not activated) and in the
// gateway's registry with only the product's productSecret (gwSecret) and
// a local password. The gateway must not run.
func (c *actCloud) addAwaiting(t *testing.T, gwSecret string, dns ...string) {
	t.Helper()
	reg := c.openRegistry(t)
	defer reg.Close()
	if _, err := reg.PutProduct(secrets.Product{ProductKey: c.pk, Dialect: c.dialect, ProductSecret: secrets.NewSecret(gwSecret)}); err != nil {
		t.Fatal(err)
	}
	for _, dn := range dns {
		if err := c.sim.AddDevice(c.pk, dn, secrets.Secret{}); err != nil {
			t.Fatal(err)
		}
		if err := reg.AddDevice(secrets.Device{ProductKey: c.pk, DeviceName: dn}); err != nil {
			t.Fatal(err)
		}
		if err := reg.SetLocalPassword(c.pk, dn, secrets.NewSecret("pw-"+dn)); err != nil {
			t.Fatal(err)
		}
	}
}

func (c *actCloud) rig(t *testing.T) *rig {
	r := &rig{t: t, sim: c.sim, cfg: c.cfg}
	r.start()
	return r
}

// checkActivated verifies that the registry holds exactly the secret the
// cloud issued, obtained once, by the dialect's mechanism.
func checkActivated(t *testing.T, reg *secrets.Registry, sim *cloudsim.Sim, pk, dn, source string) {
	t.Helper()
	d, err := reg.GetDevice(pk, dn)
	if err != nil {
		t.Fatal(err)
	}
	issued := sim.Issued(pk, dn)
	if len(issued) != 1 || d.State != secrets.StateReady || !d.DeviceSecret.Equal(issued[0]) || d.ActivatedAt.IsZero() {
		t.Fatalf("%s: state %s, %d secrets issued, stored secret equals the issued one: %t",
			dn, d.State, len(issued), len(issued) == 1 && d.DeviceSecret.Equal(issued[0]))
	}
	recs, err := reg.Activations(pk, dn)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Source != source || !recs[0].Secret.Equal(issued[0]) {
		t.Fatalf("%s: %d activation records, want one from %s with the issued secret", dn, len(recs), source)
	}
}

// TestActivationEndToEnd: for each cloud, a device registered with only
// its productSecret publishes through the gateway while the cloud is
// unreachable; the gateway then activates it (EnOS securemode=3, Alibaba
// authType=register over TLS), stores exactly the issued secret, logs in
// with securemode=2 and delivers the spooled messages in order; a restart
// does not activate again.
func TestActivationEndToEnd(t *testing.T) {
	for _, tt := range []struct {
		dialect     secrets.Dialect
		source      string
		cloudIsDown bool // EnOS is not taken down: its 30 s backoff floor would dominate the test
	}{
		{secrets.Aliyun, "aliyun-register", true},
		{secrets.EnOS, "enos-activate", false},
	} {
		t.Run(string(tt.dialect), func(t *testing.T) {
			c := newActCloud(t, tt.dialect, false)
			c.addAwaiting(t, actProductKey, "field01")
			dev := c.device("field01")
			if tt.cloudIsDown {
				if err := c.sim.Down(); err != nil {
					t.Fatal(err)
				}
			}
			r := c.rig(t)
			const count = 25
			acks := newAckLog()
			r.fleet(devsim.Config{Devices: []devsim.Device{dev}, QoS: 1, Window: 4, Count: count, OnAck: acks.add})
			if tt.cloudIsDown {
				testutil.Eventually(t, 20*time.Second, func() bool { return len(acks.of(dev.DeviceName)) == count }, "posts acknowledged while awaiting activation")
				d, err := r.gw.Registry().GetDevice(c.pk, dev.DeviceName)
				if err != nil || d.State != secrets.StateAwaitingActivation || !d.DeviceSecret.IsZero() {
					t.Fatalf("while the cloud is down: device %v, err %v", d, err)
				}
				if s := r.gw.Snapshot().Sessions; s["activating"]+s["backoff"] != 1 {
					t.Fatalf("sessions %v, want the device activating or backing off", s)
				}
				if err := c.sim.Up(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 20*time.Second, func() bool { return len(r.seqs(dev)) >= count }, "spooled posts in the cloud")
			if dups := reconcile(t, dev.DeviceName, r.seqs(dev), acks.of(dev.DeviceName)); dups != 0 {
				t.Errorf("%d duplicates", dups)
			}
			checkActivated(t, r.gw.Registry(), c.sim, c.pk, dev.DeviceName, tt.source)
			for _, rec := range c.sim.MessagesFor(c.pk, dev.DeviceName) {
				if rec.Topic == dev.UplinkTopic() && (!strings.Contains(rec.ClientID, "securemode=2") || strings.Contains(rec.ClientID, "authType")) {
					t.Fatalf("post sent on clientId %q, want a normal securemode=2 login", rec.ClientID)
				}
			}
			before := c.sim.Stats()
			r.stop()
			r.start()
			testutil.Eventually(t, 20*time.Second, func() bool {
				return c.sim.Stats().ConnectsAccepted > before.ConnectsAccepted && r.gw.Snapshot().Sessions["connected"] == 1
			}, "session up again after the restart")
			if st := c.sim.Stats(); st.Activations != 1 || len(st.ConnectsRefused) != 0 {
				t.Errorf("after the restart: %d activations (want 1), refusals %v", st.Activations, st.ConnectsRefused)
			}
			checkActivated(t, r.gw.Registry(), c.sim, c.pk, dev.DeviceName, tt.source)
		})
	}
}

// TestActivationRefusedState: a refused activation shows as the device's
// registry state with the reason, is not retried (a restart starts no
// session for it), and starts again once an operator fixes the product
// and puts the device back to awaiting-activation.
func TestActivationRefusedState(t *testing.T) {
	tests := []struct {
		name       string
		dialect    secrets.Dialect
		tcpOnly    bool
		preSecret  string // the device is already activated in the cloud with this secret
		gwSecret   string // the productSecret the gateway has
		wantReason string
		wantRefuse int64 // CONNACK 5 refusals
		fixable    bool
	}{
		{"enos device already activated", secrets.EnOS, false, "activated-elsewhere-0001", actProductKey, "CONNACK 5", 1, false},
		{"enos wrong product secret", secrets.EnOS, false, "", actWrongSecret, "CONNACK 5", 1, true},
		{"aliyun wrong product secret", secrets.Aliyun, false, "", actWrongSecret, "CONNACK 5", 1, true},
		{"aliyun without tls", secrets.Aliyun, true, "", actProductKey, "only over TLS", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newActCloud(t, tt.dialect, tt.tcpOnly)
			c.addAwaiting(t, tt.gwSecret, "field02")
			if tt.preSecret != "" {
				if err := c.sim.AddDevice(c.pk, "field02", secrets.NewSecret(tt.preSecret)); err != nil {
					t.Fatal(err)
				}
			}
			r := c.rig(t)
			var d secrets.Device
			testutil.Eventually(t, 20*time.Second, func() bool {
				var err error
				d, err = r.gw.Registry().GetDevice(c.pk, "field02")
				return err == nil && d.State == secrets.StateActivationFailed
			}, "activation-failed in the registry")
			if !strings.Contains(d.StateReason, tt.wantReason) || !d.DeviceSecret.IsZero() {
				t.Errorf("reason %q (want %q), has a secret: %t", d.StateReason, tt.wantReason, !d.DeviceSecret.IsZero())
			}
			for _, s := range []string{actProductKey, actWrongSecret, tt.preSecret} {
				if s != "" && strings.Contains(d.StateReason, s) {
					t.Fatalf("reason %q contains a secret", d.StateReason)
				}
			}
			testutil.Eventually(t, 10*time.Second, func() bool {
				return r.gw.Snapshot().Sessions["activation-failed"] == 1
			}, "the session parked as activation-failed")
			// Sessions are started before Ready: right after a restart it is
			// settled that none runs for the failed device.
			r.stop()
			r.start()
			if s := r.gw.Snapshot().Sessions; len(s) != 0 {
				t.Errorf("after a restart: sessions %v, want none for an activation-failed device", s)
			}
			st := c.sim.Stats()
			if st.ConnectsRefused[5] != tt.wantRefuse || st.Activations != 0 {
				t.Errorf("cloud saw %d refusals (want %d), %d activations", st.ConnectsRefused[5], tt.wantRefuse, st.Activations)
			}
			if !tt.fixable {
				return
			}
			r.stop()
			reg := c.openRegistry(t)
			if _, err := reg.PutProduct(secrets.Product{ProductKey: c.pk, Dialect: c.dialect, ProductSecret: secrets.NewSecret(actProductKey)}); err != nil {
				t.Fatal(err)
			}
			if _, err := reg.UpdateDevice(c.pk, "field02", func(d *secrets.Device) error {
				d.State, d.StateReason = secrets.StateAwaitingActivation, ""
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			reg.Close()
			r.start()
			testutil.Eventually(t, 20*time.Second, func() bool {
				d, err := r.gw.Registry().GetDevice(c.pk, "field02")
				return err == nil && d.State == secrets.StateReady
			}, "activated after the fix")
			source := "enos-activate"
			if tt.dialect == secrets.Aliyun {
				source = "aliyun-register"
			}
			checkActivated(t, r.gw.Registry(), c.sim, c.pk, "field02", source)
		})
	}
}

// TestActivationCrashKill9 runs the real binary and SIGKILLs it around the
// moment the cloud issues deviceSecrets, many times. After every kill the
// registry holds either exactly the secret the cloud issued last, or no
// secret; never another one. At the end every device logs in with its
// stored secret (securemode=2) and delivers a post.
//
// Alibaba: a secret issued but not yet stored when the process died is
// recovered by registering again (the cloud allows it until the first
// normal login), so every device ends up connected. EnOS: the cloud issues
// a deviceSecret once; a kill between its delivery and the fsync loses it
// and the device ends activation-failed ("already activated", it must be
// reset in the cloud console). That window cannot be closed by the
// gateway; the test counts how often the kills hit it and checks that
// those devices show the refusal instead of retrying. EDGEGW_ACT_CRASH_ITER
// sets the number of kills per cloud (default 8).
func TestActivationCrashKill9(t *testing.T) {
	bin, iters := crashPrelude(t, "EDGEGW_ACT_CRASH_ITER", 8)
	for _, d := range []secrets.Dialect{secrets.Aliyun, secrets.EnOS} {
		t.Run(string(d), func(t *testing.T) { actCrash(t, bin, d, iters) })
	}
}

func actCrash(t *testing.T, bin string, dialect secrets.Dialect, iters int) {
	const perRound = 3
	c := newActCloud(t, dialect, false)
	local := freePort(t)
	conf := filepath.Join(filepath.Dir(c.cfg.StateDir), "edgegw.toml")
	extra := ""
	if c.cfg.Cloud.CAFile != "" {
		extra = fmt.Sprintf("ca_file = %q\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n", c.cfg.Cloud.CAFile)
	}
	err := os.WriteFile(conf, fmt.Appendf(nil, `state_dir = %q
log_format = "text"
log_level = "info"
[broker]
listeners = ["tcp://%s"]
[cloud]
dialect = %q
endpoint = %q
%s[metrics]
listen = ""
`, c.cfg.StateDir, local, dialect, c.cfg.Cloud.Endpoint, extra), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	var child *exec.Cmd
	start := func() {
		child = exec.Command(bin, "run", "-config", conf)
		child.Stdout, child.Stderr = &logs, &logs
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if child != nil && child.ProcessState == nil {
			child.Process.Kill()
			child.Wait()
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})

	var all []string
	lostInWindow, reregistered := map[string]bool{}, map[string]bool{}
	stats := map[string]int{}
	// check verifies the invariant with the gateway dead: the registry
	// holds the secret the cloud issued last, or none. It returns the
	// number of EnOS devices whose secret was lost and that have not been
	// refused yet.
	check := func(final bool) (unrefused int) {
		t.Helper()
		reg := c.openRegistry(t)
		defer reg.Close()
		for _, dn := range all {
			d, err := reg.GetDevice(c.pk, dn)
			if err != nil {
				t.Fatal(err)
			}
			issued := c.sim.Issued(c.pk, dn)
			recs, err := reg.Activations(c.pk, dn)
			if err != nil {
				t.Fatal(err)
			}
			for _, rec := range recs {
				if !actIssued(issued, rec.Secret) {
					t.Fatalf("%s: an activation record holds a secret the cloud never issued", dn)
				}
			}
			switch {
			case !d.DeviceSecret.IsZero():
				if len(issued) == 0 || !d.DeviceSecret.Equal(issued[len(issued)-1]) {
					t.Fatalf("%s: the registry's secret is not the one the cloud issued last (%d issued)", dn, len(issued))
				}
				if final {
					stats["stored"]++
				}
			case len(issued) == 0:
				if d.State != secrets.StateAwaitingActivation {
					t.Fatalf("%s: nothing issued, state %s", dn, d.State)
				}
			case dialect == secrets.EnOS:
				// Issued, not stored: the process died inside the window.
				if !lostInWindow[dn] {
					lostInWindow[dn] = true
					stats["enos window hits"]++
				}
				if d.State == secrets.StateAwaitingActivation {
					unrefused++
				}
				if final && (d.State != secrets.StateActivationFailed || !strings.Contains(d.StateReason, "CONNACK 5")) {
					t.Fatalf("%s: secret lost in the window, but state %s (%q), want activation-failed", dn, d.State, d.StateReason)
				}
			default:
				if final {
					t.Fatalf("%s: Alibaba registration not recovered: %d issued, registry state %s", dn, len(issued), d.State)
				}
				if !reregistered[dn] {
					reregistered[dn] = true
					stats["aliyun devices found issued-but-not-stored after a kill (registered again later)"]++
				}
			}
		}
		return unrefused
	}

	unrefused := 0
	// Kill points after the first secret of a round was issued: cycled, so
	// every run covers before, during and after the store.
	delays := []time.Duration{0, 0, 500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond}
	offset := mrand.IntN(len(delays))
	for i := range iters {
		var dns []string
		for j := range perRound {
			dns = append(dns, fmt.Sprintf("crash%02d%02d", i, j))
		}
		c.addAwaiting(t, actProductKey, dns...)
		all = append(all, dns...)
		before := c.sim.Stats().Activations
		start()
		// Kill right after the cloud issued a secret, plus a delay that
		// lands before, during or after the store.
		deadline := time.Now().Add(20 * time.Second)
		for c.sim.Stats().Activations == before {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no activation within 20 s", i)
			}
			time.Sleep(100 * time.Microsecond)
		}
		if d := delays[(i+offset)%len(delays)]; d > 0 {
			time.Sleep(d) // moves the kill point; nothing waits for it
		}
		if err := child.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		child.Wait()
		unrefused = check(false)
	}

	// The last run: every device that still can activates, then each one
	// posts through the gateway with its local password.
	refusedBefore := c.sim.Stats().ConnectsRefused[5]
	start()
	waitListening(t, local)
	var devs []devsim.Device
	for _, dn := range all {
		if !lostInWindow[dn] {
			devs = append(devs, c.device(dn))
		}
	}
	var fleet *devsim.Fleet
	if len(devs) > 0 {
		if fleet, err = devsim.Start(t.Context(), devsim.Config{Broker: "tcp://" + local, Devices: devs, QoS: 1, Count: 1}); err != nil {
			t.Fatal(err)
		}
		defer fleet.Close() // idempotent
	}
	for _, d := range devs {
		testutil.Eventually(t, 30*time.Second, func() bool {
			for _, rec := range c.sim.MessagesFor(c.pk, d.DeviceName) {
				if rec.Topic == d.UplinkTopic() && strings.Contains(rec.ClientID, "securemode=2") && !strings.Contains(rec.ClientID, "authType") {
					return true
				}
			}
			return false
		}, "%s: a post in the cloud on a securemode=2 login", d.DeviceName)
	}
	if dialect == secrets.EnOS {
		// Devices whose secret was lost and that were not refused yet are
		// refused once now, and parked.
		want := refusedBefore + int64(unrefused)
		// An attempt that failed for another reason first (the killed
		// child's connection still being torn down) waits out EnOS's 30 s
		// backoff floor with jitter before it is refused: allow for one.
		deadline := time.Now().Add(75 * time.Second)
		for got := c.sim.Stats().ConnectsRefused[5]; got != want; got = c.sim.Stats().ConnectsRefused[5] {
			if time.Now().After(deadline) {
				t.Fatalf("lost devices refused: the cloud refused %d activations, want %d (%d before the last run + %d lost and not yet refused)",
					got, want, refusedBefore, unrefused)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if fleet != nil {
		fleet.Close()
	}
	child.Process.Signal(syscall.SIGTERM)
	if err := child.Wait(); err != nil {
		t.Errorf("gateway exit after SIGTERM: %v", err)
	}
	check(true)
	st := c.sim.Stats()
	t.Logf("%s: %d SIGKILLs around activation, %d devices: %v; cloud issued %d secrets, refused %v",
		dialect, iters, len(all), stats, st.Activations, st.ConnectsRefused)
}

func actIssued(issued []secrets.Secret, s secrets.Secret) bool {
	for _, i := range issued {
		if i.Equal(s) {
			return true
		}
	}
	return false
}
