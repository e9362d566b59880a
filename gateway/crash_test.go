package gateway_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// buildBinary compiles cmd/edgegw once per test binary.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "edgegw-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "edgegw")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/edgegw").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v: %s", err, out)
	}
	return bin, nil
})

// crashPrelude is the start of every kill -9 test: skipped with -short,
// the real binary built, and the number of kills read from envVar.
func crashPrelude(t *testing.T, envVar string, defaultIters int) (bin string, iters int) {
	t.Helper()
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	iters = defaultIters
	if s := os.Getenv(envVar); s != "" {
		if iters, err = strconv.Atoi(s); err != nil {
			t.Fatalf("%s=%q: %v", envVar, s, err)
		}
	}
	return bin, iters
}

// waitListening waits until a child gateway accepts TCP connections on addr.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "child gateway listening on %s", addr)
}

// freePort returns a loopback port that was free a moment ago. The crash
// test needs the local broker on the same port across restarts.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestCrashKill9 runs the real edgegw binary as a child process with
// devices publishing QoS 1 through it while the cloud goes up and down, and
// kills it with SIGKILL at random moments. After the last restart every
// message the gateway acknowledged must reach the cloud, in order per
// device; duplicates are counted. EDGEGW_CRASH_ITER sets the number of
// kills (default 6).
func TestCrashKill9(t *testing.T) {
	bin, iters := crashPrelude(t, "EDGEGW_CRASH_ITER", 6)
	const ndev = 8
	var devs []devsim.Device
	var simDevs []cloudsim.Device
	for i := range ndev {
		sec := secrets.NewSecret(fmt.Sprintf("crash-secret-%02d-abcdef", i))
		d := devsim.Device{Dialect: secrets.Aliyun, ProductKey: testPK, DeviceName: fmt.Sprintf("crash-%02d", i), Secret: sec}
		devs = append(devs, d)
		simDevs = append(simDevs, cloudsim.Device{ProductKey: testPK, DeviceName: d.DeviceName, Secret: sec})
	}
	sim, err := cloudsim.New(cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", Devices: simDevs, DeviceRate: cloudsim.RateUnlimited})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer sim.Close()

	dir := t.TempDir()
	local := freePort(t)
	cfg := config.Default()
	cfg.StateDir = filepath.Join(dir, "state")
	seedRegistry(t, cfg, devs, 0)
	conf := filepath.Join(dir, "edgegw.toml")
	err = os.WriteFile(conf, fmt.Appendf(nil, `state_dir = %q
log_format = "text"
log_level = "warn"
[broker]
listeners = ["tcp://%s"]
[cloud]
endpoint = "tcp://%s"
backoff_min = "50ms"
backoff_max = "500ms"
ack_timeout = "5s"
[metrics]
listen = ""
`, cfg.StateDir, local, sim.Addr(cloudsim.TCP)), 0o600)
	if err != nil {
		t.Fatal(err)
	}

	var logs testutil.SyncBuffer
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "run", "-config", conf)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitListening(t, local)
		return cmd
	}
	var child *exec.Cmd
	t.Cleanup(func() {
		if child != nil && child.ProcessState == nil {
			child.Process.Kill()
			child.Wait()
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})

	acks := newAckLog()
	child = start()
	f, err := devsim.Start(t.Context(), devsim.Config{Broker: "tcp://" + local, Devices: devs, QoS: 1, Window: 4,
		Interval: 5 * time.Millisecond, OnAck: acks.add})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for i := range iters {
		// Let a random amount of traffic through, sometimes with the cloud
		// down, then kill -9.
		cloudDown := i%3 == 1
		if cloudDown {
			if err := sim.Down(); err != nil {
				t.Fatal(err)
			}
		}
		target := f.Stats().Acked + int64(20+rng.IntN(200))
		testutil.Eventually(t, 30*time.Second, func() bool { return f.Stats().Acked >= target }, "traffic before the kill")
		if err := child.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		child.Wait()
		if cloudDown {
			if err := sim.Up(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		child = start()
	}
	// Stop the devices, then wait until everything acknowledged arrived.
	acked := f.Stats().Acked
	f.Close()
	total := 0
	for _, d := range devs {
		total += len(acks.of(d.DeviceName))
	}
	dups := 0
	for _, d := range devs {
		want := acks.of(d.DeviceName)
		testutil.Eventually(t, 60*time.Second, func() bool {
			seen := map[int64]bool{}
			for _, rec := range sim.MessagesFor(d.ProductKey, d.DeviceName) {
				seen[devsim.SeqOf(rec.Payload)] = true
			}
			for s := range want {
				if !seen[s] {
					return false
				}
			}
			return true
		}, "%s: every acknowledged message in the cloud", d.DeviceName)
		var arrived []int64
		for _, rec := range sim.MessagesFor(d.ProductKey, d.DeviceName) {
			arrived = append(arrived, devsim.SeqOf(rec.Payload))
		}
		dups += reconcile(t, d.DeviceName, arrived, want)
	}
	t.Logf("%d SIGKILLs survived: %d acknowledged messages (%d acks counted), all delivered in order; %d duplicates (%.2f%%)",
		iters, total, acked, dups, 100*float64(dups)/float64(max(total, 1)))
	child.Process.Signal(syscall.SIGTERM)
	child.Wait()
}
