package gateway_test

import (
	"context"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/internal/testutil/gwtest"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// TestMemorySettlesAfterConnectBursts checks that the gateway returns
// memory once each burst of connections is over — the cloud sessions at
// start, then the devices connecting locally — and that gateway.status
// shows it with the runtime's figures.
func TestMemorySettlesAfterConnectBursts(t *testing.T) {
	// Enough connections for a burst (SettleMinBurst), few enough for a
	// test rig.
	const n = 120
	r := newRigWith(t, rigOptions{devices: n, simRate: cloudsim.RateUnlimited,
		opts: gateway.Options{SettleMinBurst: n, SettleQuiet: 300 * time.Millisecond}})
	testutil.Eventually(t, 30*time.Second, func() bool { return r.gw.Snapshot().Sessions["connected"] == n }, "all cloud sessions up")

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	a, err := adminapi.Dial(ctx, adminapi.Options{URL: "unix://" + gwtest.Socket(r.cfg)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	status := func() adminapi.Runtime {
		var st adminapi.Status
		if err := a.Call(ctx, adminapi.MethodGatewayStatus, nil, &st); err != nil {
			t.Fatal(err)
		}
		return st.Runtime
	}
	var rt adminapi.Runtime
	testutil.Eventually(t, 30*time.Second, func() bool { rt = status(); return rt.Settles == 1 }, "a settle after the cloud sessions came up")
	if rt.Goroutines < n || rt.HeapObjectsBytes == 0 || rt.StackBytes == 0 || rt.LastSettle.IsZero() ||
		rt.TotalBytes != rt.HeapObjectsBytes+rt.HeapFreeBytes+rt.HeapReleasedBytes+rt.StackBytes+rt.OtherBytes {
		t.Fatalf("runtime status %+v", rt)
	}
	first := rt.LastSettle

	f := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Count: 1})
	testutil.Eventually(t, 30*time.Second, func() bool { return f.Stats().Acked == n }, "every device's post acknowledged")
	testutil.Eventually(t, 30*time.Second, func() bool { rt = status(); return rt.Settles == 2 }, "a settle after the devices connected")
	if !rt.LastSettle.After(first) {
		t.Errorf("last settle %v, first %v", rt.LastSettle, first)
	}
}

// TestAdminRepliesBurst sends many admin requests at once: their replies
// go through mochi's per-client outbound queue (broker.writes_pending,
// default 128), which must not drop any of them. It holds the whole burst:
// with 32 slots, replies were dropped whenever mochi's write loop fell
// behind (a CI run under load lost some and the calls timed out).
func TestAdminRepliesBurst(t *testing.T) {
	r := newRig(t, 1, 0, nil)
	if got := r.cfg.Broker.WritesPending; got != 128 {
		t.Fatalf("writes_pending %d, want the default 128", got)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	a, err := adminapi.Dial(ctx, adminapi.Options{URL: "unix://" + gwtest.Socket(r.cfg)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Nearly writes_pending, and below the admin client's QoS 1 messages
	// the broker keeps in flight (localbroker MaxInflight, 128), the other
	// bound on what one client can be sent at once.
	const n = 120
	errs := make(chan error, n)
	for range n {
		go func() {
			var st adminapi.Status
			errs <- a.Call(ctx, adminapi.MethodGatewayStatus, nil, &st)
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
