package cloudsim_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// TestNoGoroutineLeak: after Close, with its clients gone, a simulator
// leaves no goroutine behind (every transport, a registration, a delayed
// publish and a takeover were in flight).
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("traffic", func(t *testing.T) {
		sim, _ := aliyunSim(t)
		pki := pkiOf(t, sim)
		for _, kind := range []string{cloudsim.TCP, cloudsim.TLS, cloudsim.WS, cloudsim.WSS} {
			mode := 3
			var opts []clientOpt
			if encrypted(kind) {
				mode, opts = 2, []clientOpt{withTLS(pki.ClientTLS())}
			}
			opts = append(opts, withKeepAlive(secondsDuration(300)))
			c := mustConnect(t, urlFor(sim, kind), sign(t, secrets.Aliyun, aliPK, aliDN, aliSecret, mode, ""), opts...)
			mustPublish(t, c, userTopic(aliDN, "data"), 1, kind)
		}
		registerOnce(t, sim, urlFor(sim, cloudsim.TLS), aliNewDN, pki.ClientTLS())
		sim.Delay(time.Hour)
		c := aliTCP(t, sim, aliDN2, aliSecret2)
		c.Publish(userTopic(aliDN2, "data"), 1, false, "held")
		waitRecords(t, sim, 5)
	})
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
