package uplink

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// TestActivateNow: Manager.Activate, for a device that asks the gateway
// for its deviceSecret itself. While the cloud is down it returns the
// failed attempt's error promptly (not at its deadline); once the cloud is
// up it makes the session's next attempt happen at once, although the
// session's backoff after the failures is a minute, and returns the secret
// the store holds; later calls return the same secret without another
// activation. Unknown devices are ErrUnknownDevice.
func TestActivateNow(t *testing.T) {
	sim := startActSim(t, secrets.EnOS, actEnOSPK, actEnOSSecret, nil, map[string]string{"meter09": ""}, nil)
	r := newRig(t, "tcp://"+sim.Addr(cloudsim.TCP), func(c *ManagerConfig) {
		l := DefaultLimits(secrets.EnOS)
		l.Backoff = Backoff{Initial: 5 * time.Millisecond, Max: 2 * time.Minute, Floor: time.Minute}
		c.Limits[secrets.EnOS] = l
	})
	store := newMemActivation()
	dev := actDevice(secrets.EnOS, actEnOSPK, "meter09", actEnOSSecret, store)
	if err := sim.Down(); err != nil {
		t.Fatal(err)
	}
	r.add(dev)
	startManager(t, r.m)
	r.waitStatus(dev.ID, "the first attempt failed", func(st SessionStatus) bool { return st.State == StateBackoff })

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := r.m.Activate(ctx, dev.ID); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Activate while the cloud is down: %v, want the attempt's error", err)
	}
	if err := sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	secret, err := r.m.Activate(ctx, dev.ID)
	if err != nil {
		t.Fatalf("Activate with the cloud up: %v", err)
	}
	stored, _, _ := store.get(dev.ID)
	issued := sim.Issued(actEnOSPK, "meter09")
	if len(issued) != 1 || !secret.Equal(issued[0]) || !stored.Equal(secret) {
		t.Fatalf("%d issued; returned secret is the issued one: %t, the stored one: %t",
			len(issued), len(issued) == 1 && secret.Equal(issued[0]), stored.Equal(secret))
	}
	again, err := r.m.Activate(ctx, dev.ID)
	if err != nil || !again.Equal(secret) || sim.Stats().Activations != 1 {
		t.Fatalf("second Activate: err %v, same secret %t, %d activations", err, again.Equal(secret), sim.Stats().Activations)
	}
	if _, err := r.m.Activate(ctx, secrets.DeviceID{ProductKey: actEnOSPK, DeviceName: "nobody"}); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("unknown device: %v", err)
	}
}
