package gateway_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// jumpClock is the system clock plus an offset that a test changes: a
// wall clock stepped by NTP, an RTC that lost its battery, an operator
// setting the date. Timers keep real durations. Times it hands out are
// shifted with their monotonic reading, so a jump shows up in every
// difference between readings taken before and after it — harsher than
// a real step, which Go's monotonic clock hides from durations.
type jumpClock struct{ off atomic.Int64 }

func (c *jumpClock) Now() time.Time { return time.Now().Add(time.Duration(c.off.Load())) }

func (c *jumpClock) NewTimer(d time.Duration) uplink.Timer { return uplink.SystemClock{}.NewTimer(d) }

func (c *jumpClock) jump(d time.Duration) { c.off.Add(int64(d)) }

// The clock jumps backwards and forwards while devices publish: traffic
// keeps flowing after every jump, sessions signed with the jumped time are
// accepted (the clouds do not check freshness), no session is dropped by
// a jump (no false stall, no backoff measured in hours) and every
// acknowledged message reaches the cloud in order.
func TestClockJumps(t *testing.T) {
	const ndev = 6
	clk := &jumpClock{}
	r := newRigWith(t, rigOptions{devices: ndev, simRate: cloudsim.RateUnlimited, clock: clk, mutate: func(c *config.Config) {
		c.Cloud.AckTimeout = config.Duration(2 * time.Second)
		perDevice := 200.0
		c.Cloud.DeviceRate = &perDevice
		c.Cloud.ConnectRate, c.Cloud.ConnectBurst = 50, 2
	}})
	acks := newAckLog()
	f := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Window: 4, Interval: 5 * time.Millisecond, OnAck: acks.add})

	stats := func() cloudsim.Stats { return r.sim.Stats() }
	flowing := func(what string, n int64) {
		t.Helper()
		target := stats().Messages + n
		testutil.Eventually(t, 30*time.Second, func() bool { return stats().Messages >= target }, "%s", what)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return stats().Connected == ndev }, "every cloud session up")
	flowing("traffic before the jumps", 200)

	drops := 0
	for _, j := range []time.Duration{-time.Hour, time.Hour, 25 * time.Hour, -25 * time.Hour, -30 * 24 * time.Hour, 30 * 24 * time.Hour} {
		before := stats()
		clk.jump(j)
		flowing("traffic after a jump of "+j.String(), 200)
		if st := stats(); st.ConnectsAccepted != before.ConnectsAccepted {
			t.Errorf("a jump of %v made %d sessions reconnect", j, st.ConnectsAccepted-before.ConnectsAccepted)
		}
		// New sessions sign with the jumped time.
		before = stats()
		drops += r.sim.Drop()
		testutil.Eventually(t, 30*time.Second, func() bool {
			st := stats()
			return st.ConnectsAccepted >= before.ConnectsAccepted+ndev && st.Connected == ndev
		}, "every session back after a jump of %s", j)
		flowing("traffic on the new sessions after a jump of "+j.String(), 200)
	}

	f.Close()
	total, dups := r.reconcileAll(t, acks, 30*time.Second)
	st := stats()
	if st.RecordsDiscarded > 0 {
		t.Fatalf("the cloud's recorder discarded %d records: reconciliation incomplete", st.RecordsDiscarded)
	}
	if want := int64(ndev + drops); st.ConnectsAccepted != want {
		t.Errorf("the cloud accepted %d CONNECTs, want %d (one per device, then one per dropped session)", st.ConnectsAccepted, want)
	}
	t.Logf("%d devices, 6 jumps (±1 h, ±25 h, ±30 days): %d acknowledged messages all delivered in order; %d duplicates; %d CONNECTs",
		ndev, total, dups, st.ConnectsAccepted)
}
