//go:build linux

package gateway_test

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// mountSpoolTmpfs mounts a tmpfs of the given size (mount's size=, e.g.
// "1m") in a TempDir and unmounts it when the test ends. Mounting needs
// root (CAP_SYS_ADMIN): without it the test is skipped, as the spool's own
// tmpfs test is, unless EDGEGW_REQUIRE_PEERS=1 (CI) makes it a failure.
func mountSpoolTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "spool")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		if os.Getenv(testutil.RequirePeersEnv) == "1" {
			t.Fatalf("cannot mount a %s tmpfs for the spool (%v) and %s=1: run as root (CAP_SYS_ADMIN)", size, err, testutil.RequirePeersEnv)
		}
		t.Skipf("cannot mount a %s tmpfs for the spool (%v): needs root (CAP_SYS_ADMIN); set %s=1 to make this a failure",
			size, err, testutil.RequirePeersEnv)
	}
	// Registered after TempDir's removal, so it runs before it; and
	// before the gateway's start, so it runs after the gateway stopped.
	t.Cleanup(func() {
		err := syscall.Unmount(dir, 0)
		if errors.Is(err, syscall.EBUSY) {
			t.Errorf("unmount %s: %v (the spool file is still open); detaching it", dir, err)
			err = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		if err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// resumeLog records, per device, when the gateway acknowledged its posts
// after a mark: how long each device took to publish again.
type resumeLog struct {
	mu    sync.Mutex
	mark  time.Time
	first map[string]time.Time // first acknowledgement at or after mark
	count map[string]int       // acknowledgements since mark
}

func (l *resumeLog) ack(d devsim.Device) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mark.IsZero() {
		return
	}
	if _, ok := l.first[d.DeviceName]; !ok {
		l.first[d.DeviceName] = now
	}
	l.count[d.DeviceName]++
}

// start marks now; acknowledgements from here on count.
func (l *resumeLog) start() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mark = time.Now()
	l.first, l.count = map[string]time.Time{}, map[string]int{}
	return l.mark
}

// resumed reports whether every device had n acknowledgements since the mark.
func (l *resumeLog) resumed(devs []devsim.Device, n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range devs {
		if l.count[d.DeviceName] < n {
			return false
		}
	}
	return true
}

// delays returns each device's wait from the mark to its first
// acknowledgement, sorted.
func (l *resumeLog) delays() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []time.Duration
	for _, at := range l.first {
		out = append(out, at.Sub(l.mark))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// TestFaultDiskFull: the disk under the spool fills while the cloud is
// down, then the cloud returns (design §7, "a full buffer never
// recovers"). The spool sits on a 1 MiB tmpfs, so the file system, not
// the byte budget, runs out. While it is full the gateway acknowledges
// nothing it could not commit: it withholds the PUBACK and disconnects the
// device, which reconnects and goes on (invariants 1 and 7), and reports
// DiskFull. Once the cloud is back the backlog drains, appends commit
// again, DiskFull clears, every device publishes again, and every message
// the gateway acknowledged reaches the cloud in order.
func TestFaultDiskFull(t *testing.T) {
	const (
		ndev   = 20
		resume = 20 // acknowledged posts per device that prove it is back
	)
	mnt := mountSpoolTmpfs(t, "1m")
	r := newRigWith(t, rigOptions{devices: ndev, simRate: cloudsim.RateUnlimited,
		// Room for every record of the run: reconciliation needs them all.
		maxRecords: 1 << 20,
		mutate: func(c *config.Config) {
			c.Spool.Path = filepath.Join(mnt, "spool.db")
			c.Metrics.Listen = "127.0.0.1:0"
			unlimited := 0.0
			c.Cloud.DeviceRate = &unlimited
			c.Cloud.ConnectRate, c.Cloud.ConnectBurst = 200, 200
		}})
	acks := newAckLog()
	var after resumeLog
	f := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Window: 4, Interval: 2 * time.Millisecond,
		OnAck: func(d devsim.Device, seq int64) {
			acks.add(d, seq)
			after.ack(d)
		}})
	stats := func() cloudsim.Stats { return r.sim.Stats() }
	testutil.Eventually(t, 30*time.Second, func() bool { return stats().Connected == ndev }, "every cloud session up")
	testutil.Eventually(t, 30*time.Second, func() bool { return stats().Messages >= 10*ndev }, "traffic before the outage")

	// The cloud goes down; the devices fill the disk.
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	testutil.Eventually(t, 60*time.Second, func() bool { return r.gw.Snapshot().Spool.DiskFull }, "the spool reports a full disk")
	full := time.Now()
	atFull := r.gw.Snapshot().Spool
	// The devices run into the full disk, a few times each on average:
	// a publish the spool could not commit is not acknowledged, and its
	// device is disconnected so that it sends again. It comes back after
	// its reconnect backoff, not in a tight loop.
	withheld0, connects0, acked0 := r.metric("edgegw_broker_withheld_disconnects_total"), r.metric("edgegw_broker_connects_total"), f.Stats().Acked
	refused0 := r.metric("edgegw_broker_messages_refused_total")
	testutil.Eventually(t, 30*time.Second, func() bool {
		return r.metric("edgegw_broker_withheld_disconnects_total") >= withheld0+3*ndev
	}, "devices disconnected after a withheld PUBACK")
	held := time.Since(full)

	// The cloud returns: the backlog drains, the disk has room again and
	// every device publishes again.
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	up := after.start()
	backlog := map[string]map[int64]bool{}
	for _, d := range r.devices {
		backlog[d.DeviceName] = acks.of(d.DeviceName)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return !r.gw.Snapshot().Spool.DiskFull }, "the spool's disk-full state cleared")
	cleared := time.Now()
	for _, d := range r.devices {
		testutil.Eventually(t, 30*time.Second, func() bool {
			for _, s := range r.seqs(d) {
				delete(backlog[d.DeviceName], s)
			}
			return len(backlog[d.DeviceName]) == 0
		}, "%s: the backlog of the outage in the cloud", d.DeviceName)
	}
	drained := time.Now()
	testutil.Eventually(t, 20*time.Second, func() bool { return after.resumed(r.devices, resume) },
		"every device publishing again (%d acknowledged posts each) after the cloud returned", resume)
	resumed := time.Now()
	full2 := r.gw.Snapshot().Spool
	withheld := r.metric("edgegw_broker_withheld_disconnects_total") - withheld0
	refused := r.metric("edgegw_broker_messages_refused_total") - refused0
	connects := r.metric("edgegw_broker_connects_total") - connects0

	f.Close()
	total, dups := r.reconcileAll(t, acks, 60*time.Second)
	st := stats()
	if st.RecordsDiscarded > 0 {
		t.Fatalf("the cloud's recorder discarded %d records: reconciliation incomplete", st.RecordsDiscarded)
	}
	for reason, n := range r.gw.Snapshot().Spool.Dropped {
		if n > 0 {
			t.Errorf("the spool dropped %d messages (%s): a full disk must refuse new messages, not drop stored ones", n, reason)
		}
	}
	fs := f.Stats()
	delays := after.delays()
	t.Logf("disk full %v after the cloud went down (%d messages, %d KiB in the spool, %q); "+
		"full for %v, then the cloud returned; from the full disk to the devices' return: %d publishes refused, "+
		"%d withheld-PUBACK disconnects, %d reconnects, %d posts acknowledged",
		full.Sub(down).Round(time.Millisecond), atFull.Depth, atFull.Bytes>>10, atFull.LastError,
		held.Round(time.Millisecond), int(refused), int(withheld), int(connects), fs.Acked-acked0)
	t.Logf("cloud back: disk-full cleared after %v, backlog in the cloud after %v, every device publishing again after %v "+
		"(first post per device: median %v, max %v); spool then %d messages",
		cleared.Sub(up).Round(time.Millisecond), drained.Sub(up).Round(time.Millisecond), resumed.Sub(up).Round(time.Millisecond),
		delays[len(delays)/2].Round(time.Millisecond), delays[len(delays)-1].Round(time.Millisecond), full2.Depth)
	t.Logf("%d devices: %d acknowledged messages all delivered in order; %d duplicates; devices: %v; cloud: %d CONNECTs, %d messages",
		ndev, total, dups, fs, st.ConnectsAccepted, st.Messages)
}
