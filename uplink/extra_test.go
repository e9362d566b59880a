package uplink

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// A device's extension parameters are signed into every attempt after
// edgegw's own securemode, signmethod and timestamp; UpdateExtra changes
// them with exactly one reconnect (never two sessions for the identity),
// when they change what the cloud does (_ss, ext), only the next connection
// carries a change of the informational ones (_v, lan, gw),
// and the cloud then treats the session as that firmware: with _ss=1 it
// pushes system downlinks without a SUBSCRIBE (docs/protocol.md §2.2, §7.9).
func TestUpdateExtraReconnectsOnce(t *testing.T) {
	dev := testDevice(1)
	dev.Extra = []secrets.Param{{Key: "_v", Value: "sdk-c-3.0.1"}, {Key: "lan", Value: "C"}}
	sim, err := cloudsim.New(cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", DeviceRate: cloudsim.RateUnlimited,
		Devices: []cloudsim.Device{{ProductKey: dev.ID.ProductKey, DeviceName: dev.ID.DeviceName, Secret: dev.Secret}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	r := newRig(t, "tcp://"+sim.Addr(cloudsim.TCP))
	r.add(dev)
	startManager(t, r.m)
	r.waitStatus(dev.ID, "connected", func(st SessionStatus) bool { return st.State == StateConnected })

	cid, ok := sim.SessionClientID(dev.ID.ProductKey, dev.ID.DeviceName)
	if !ok || !strings.HasPrefix(cid, dev.ID.DeviceName+"|securemode=3,signmethod=hmacsha256,timestamp=") ||
		!strings.HasSuffix(cid, ",_v=sdk-c-3.0.1,lan=C|") {
		t.Fatalf("cloud session clientId %q (connected %v), want edgegw's params then _v=sdk-c-3.0.1,lan=C", cid, ok)
	}
	property := "/sys/" + dev.ID.ProductKey + "/" + dev.ID.DeviceName + "/thing/service/property/set"
	if err := sim.Publish(dev.ID.ProductKey, dev.ID.DeviceName, property, []byte(`{"id":"1"}`), 1); !errors.Is(err, cloudsim.ErrNotSubscribed) {
		t.Fatalf("without _ss=1 the cloud pushed a system downlink: %v", err)
	}

	linkSDK := []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "_v", Value: "sdk-c-4.1.0"}, {Key: "ext", Value: "3"}}
	up, err := r.m.UpdateExtra(dev.ID, linkSDK)
	if err != nil || !up.Changed || !up.Reconnected || secrets.FormatConnectParams(up.Prev) != "_v=sdk-c-3.0.1,lan=C" {
		t.Fatalf("UpdateExtra = %+v, %v", up, err)
	}
	testutil.Eventually(t, 15*time.Second, func() bool {
		cid, ok = sim.SessionClientID(dev.ID.ProductKey, dev.ID.DeviceName)
		return ok && strings.HasSuffix(cid, ",_ss=1,_v=sdk-c-4.1.0,ext=3|")
	}, "cloud session with the Link SDK's params (last %q)", cid)
	if !strings.Contains(cid, "|securemode=3,signmethod=hmacsha256,timestamp=") {
		t.Errorf("clientId %q: edgegw's own params missing", cid)
	}
	// The cloud now pushes the property set without a SUBSCRIBE.
	if err := sim.Publish(dev.ID.ProductKey, dev.ID.DeviceName, property, []byte(`{"id":"2"}`), 1); err != nil {
		t.Fatalf("server-side subscribed session: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, d := range r.downlinks() {
			if d.topic == property && d.payload == `{"id":"2"}` {
				return true
			}
		}
		return false
	}, "property set delivered on the session")

	// The same parameters again: nothing happens.
	r.mu.Lock()
	dials := r.dials[dev.ID]
	r.mu.Unlock()
	if up, err := r.m.UpdateExtra(dev.ID, []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "_v", Value: "sdk-c-4.1.0"}, {Key: "ext", Value: "3"}}); err != nil || up.Changed || up.Reconnected {
		t.Fatalf("UpdateExtra with the same params = %+v, %v", up, err)
	}
	// A new firmware version alone changes nothing the cloud does: no
	// reconnect now, the next connection carries it.
	if up, err := r.m.UpdateExtra(dev.ID, []secrets.Param{{Key: "_ss", Value: "1"}, {Key: "_v", Value: "sdk-c-4.1.1"}, {Key: "ext", Value: "3"}}); err != nil || !up.Changed || up.Reconnected {
		t.Fatalf("UpdateExtra with a new _v = %+v, %v", up, err)
	}
	r.mu.Lock()
	if r.dials[dev.ID] != dials || dials != 2 {
		t.Errorf("%d dials before, %d after UpdateExtra without a reconnect; want 2 in all", dials, r.dials[dev.ID])
	}
	r.mu.Unlock()
	if n := sim.Drop(); n != 1 {
		t.Fatalf("dropped %d sessions", n)
	}
	testutil.Eventually(t, 15*time.Second, func() bool {
		cid, ok = sim.SessionClientID(dev.ID.ProductKey, dev.ID.DeviceName)
		return ok && strings.HasSuffix(cid, ",_ss=1,_v=sdk-c-4.1.1,ext=3|")
	}, "the next connection carries the new _v (last %q)", cid)
	// The old socket was closed before the new one was dialled (the cloud
	// may still count a takeover: it can read the new CONNECT before it
	// notices the old connection's end).
	if r.overlaps.Load() != 0 {
		t.Errorf("%d dials while another socket of the identity was open", r.overlaps.Load())
	}

	if _, err := r.m.UpdateExtra(testDevice(99).ID, linkSDK); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("UpdateExtra(unknown) = %v", err)
	}
	if _, err := r.m.UpdateExtra(dev.ID, []secrets.Param{{Key: "ext", Value: "a,b"}}); err == nil {
		t.Error("UpdateExtra accepted a value that breaks the clientId block")
	}
}
