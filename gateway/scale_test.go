package gateway_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
)

// TestScaleDevices runs 1,000 devices in one process — each with its local
// connection to the gateway and its own cloud session to the simulator —
// and reports the memory per device. The race detector caps a process at
// 8,128 goroutines, so under -race it runs 200 devices.
func TestScaleDevices(t *testing.T) {
	if testing.Short() {
		t.Skip("scale test skipped in -short mode")
	}
	n := 1000
	if raceEnabled {
		n = 200
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()

	r := newRig(t, n, 0, func(c *config.Config) {
		c.Cloud.ConnectRate = 2000
		c.Cloud.ConnectBurst = 2000
		// This test measures size, not stop time (TestShutdownWithManyClients
		// in localbroker bounds that): under -race on a busy 2-core CI box,
		// closing 200 connections has taken over the rig's 2 s broker share.
		c.Shutdown.Timeout = config.Duration(30 * time.Second)
	})
	start := time.Now()
	const count = 3
	f := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Count: count})
	testutil.Eventually(t, 120*time.Second, func() bool {
		return r.gw.Snapshot().Sessions["connected"] == n
	}, "all cloud sessions up")
	up := time.Since(start)
	testutil.Eventually(t, 120*time.Second, func() bool { return len(r.sim.Messages()) >= n*count }, "all messages in the cloud")
	if st := f.Stats(); st.Connected != n {
		t.Errorf("%d of %d devices connected locally", st.Connected, n)
	}
	for _, d := range r.devices[:10] {
		if got := len(r.seqs(d)); got != count {
			t.Errorf("%s: %d messages in the cloud, want %d", d.DeviceName, got, count)
		}
	}

	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	g1 := runtime.NumGoroutine()
	perDev := float64(after.HeapInuse+after.StackInuse-before.HeapInuse-before.StackInuse) / float64(n) / 1024
	t.Logf("%d devices (local connection + cloud session each, plus the simulated device and cloud in the same process): "+
		"all sessions up in %s; heap+stack %.1f KiB per device, %.1f goroutines per device",
		n, up.Round(time.Millisecond), perDev, float64(g1-g0)/float64(n))

	f.Close()
	stopping := time.Now()
	r.stop()
	t.Logf("gateway stopped in %s", time.Since(stopping).Round(time.Millisecond))
}
