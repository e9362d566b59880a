package gateway_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// benchDevices is the fleet size of BenchmarkForwarding: 100, or
// EDGEGW_BENCH_DEVICES (e.g. 1000). Under the race detector (which caps a
// process at 8,128 goroutines) at most 200.
func benchDevices(b *testing.B) int {
	n := 100
	if s := os.Getenv("EDGEGW_BENCH_DEVICES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			b.Fatalf("EDGEGW_BENCH_DEVICES=%q: want a positive number", s)
		}
		n = v
	}
	if raceEnabled && n > 200 {
		b.Logf("race detector: %d devices instead of %d", 200, n)
		n = 200
	}
	return n
}

// BenchmarkForwarding measures end-to-end forwarding: N devices connected
// to the gateway's local broker publish QoS 1 posts of 200 bytes (each
// waiting for the gateway's PUBACK, up to 16 in flight per device); the
// gateway forwards them over one cloud session per device to the cloud
// simulator on loopback. One op is one message delivered to the cloud; the
// clock runs from the first publish until the simulator recorded all b.N.
// Durability on commits every message to the bbolt spool (fsync) before
// the device's PUBACK; off keeps the queue in memory. Rate limits are off
// on both sides, so this is the gateway's capacity, not a cloud's quota.
//
//	go test -run '^$' -bench Forwarding -benchtime 200000x ./gateway/
//	EDGEGW_BENCH_DEVICES=1000 go test -run '^$' -bench Forwarding -benchtime 200000x ./gateway/
func BenchmarkForwarding(b *testing.B) {
	n := benchDevices(b)
	for _, durable := range []bool{true, false} {
		b.Run(fmt.Sprintf("devices=%d/durable=%v", n, durable), func(b *testing.B) {
			benchForwarding(b, n, durable)
		})
	}
}

const (
	benchPayload = 200
	benchWindow  = 16
)

func benchForwarding(b *testing.B, n int, durable bool) {
	r := newGWRig(b, gwRigOptions{devices: n, simRate: cloudsim.RateUnlimited, maxRecords: 1000, mutate: func(c *config.Config) {
		c.Spool.Durable = durable
		unlimited := 0.0
		c.Cloud.DeviceRate = &unlimited
		c.Cloud.ConnectRate, c.Cloud.ConnectBurst = 5000, 5000
	}})
	testutil.Eventually(b, 120*time.Second, func() bool { return r.gw.Snapshot().Sessions["connected"] == n }, "all cloud sessions up")
	clients := make([]mqtt.Client, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			clients[i], errs[i] = r.dialLocal(r.devices[i])
		}()
	}
	wg.Wait()
	// Before the gateway stops (cleanups run last first): disconnect the
	// devices together and let the broker see them go, so that its
	// shutdown does not race a thousand disconnects.
	b.Cleanup(func() {
		var dw sync.WaitGroup
		for _, c := range clients {
			if c != nil {
				dw.Add(1)
				go func() {
					defer dw.Done()
					c.Disconnect(100)
				}()
			}
		}
		dw.Wait()
		testutil.Eventually(b, 60*time.Second, func() bool { return r.gw.Snapshot().LocalClients == 0 }, "the local broker to see every device gone")
	})
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	payloads := make([][]byte, n) // one per device: the content does not matter here
	for i := range payloads {
		payloads[i] = post(int64(i), benchPayload)
		if len(payloads[i]) != benchPayload {
			b.Fatalf("payload of %d bytes, want %d", len(payloads[i]), benchPayload)
		}
	}
	base := r.sim.Stats()
	var failed atomic.Int64
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()

	b.ResetTimer()
	start := time.Now()
	for i := range n {
		count := b.N / n
		if i < b.N%n {
			count++
		}
		if count == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !publishN(clients[i], r.devices[i], payloads[i], count) {
				failed.Add(1)
				cancel()
			}
		}()
	}
	want := base.Messages + int64(b.N)
	err := r.sim.WaitStats(ctx, func(st cloudsim.Stats) bool { return st.Messages >= want })
	elapsed := time.Since(start)
	b.StopTimer()
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d devices had publishes fail", f)
	}
	if err != nil {
		b.Fatalf("%d of %d messages in the cloud: %v", r.sim.Stats().Messages-base.Messages, b.N, err)
	}
	st := r.sim.Stats()
	if st.RateDropped != base.RateDropped {
		b.Errorf("the simulator dropped %d messages", st.RateDropped-base.RateDropped)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	if extra := st.Messages - want; extra > 0 {
		b.ReportMetric(float64(extra), "duplicates")
	}
}

// publishN publishes count QoS 1 posts with up to benchWindow waiting for
// the gateway's PUBACK, and reports whether all were acknowledged.
func publishN(c mqtt.Client, d devsim.Device, payload []byte, count int) bool {
	topic := d.UplinkTopic()
	toks := make(chan mqtt.Token, benchWindow)
	ok := make(chan bool, 1)
	go func() {
		all := true
		for tok := range toks {
			if !tok.WaitTimeout(time.Minute) || tok.Error() != nil {
				all = false
			}
		}
		ok <- all
	}()
	for range count {
		toks <- c.Publish(topic, 1, false, payload) // blocks while benchWindow are waiting
	}
	close(toks)
	return <-ok
}
