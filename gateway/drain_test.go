package gateway_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// gwRig is the shared rig; the drain tests and the benchmark choose the
// simulator's rate limit.
type gwRig = rig

type gwRigOptions struct {
	devices int
	// simRate is cloudsim.Config.DeviceRate: 0 is the dialect's default
	// (Alibaba 30/s), cloudsim.RateUnlimited turns the limit off.
	simRate    float64
	maxRecords int
	mutate     func(*config.Config)
}

func newGWRig(tb testing.TB, o gwRigOptions) *gwRig {
	tb.Helper()
	return newRigWith(tb, rigOptions{devices: o.devices, simRate: o.simRate, maxRecords: o.maxRecords,
		nameFormat: "dr-%04d", mutate: o.mutate})
}

// seqTimes returns the sequence numbers the cloud recorded for d, in
// arrival order, and their arrival times.
func (r *gwRig) seqTimes(d devsim.Device) ([]int64, []time.Time) {
	var seqs []int64
	var times []time.Time
	for _, rec := range r.sim.MessagesFor(d.ProductKey, d.DeviceName) {
		if s := devsim.SeqOf(rec.Payload); s >= 0 {
			seqs = append(seqs, s)
			times = append(times, rec.Time)
		}
	}
	return seqs, times
}

// backlog takes the cloud down, has every device publish count QoS 1
// messages through the gateway and waits until the gateway acknowledged
// them all (they are in the spool). It returns the acknowledgements.
func (r *gwRig) backlog(count int) *ackLog {
	tb := r.t
	tb.Helper()
	if err := r.sim.Down(); err != nil {
		tb.Fatal(err)
	}
	acks := newAckLog()
	f := r.fleet(devsim.Config{Devices: r.devices, QoS: 1, Window: 8, Count: count, OnAck: acks.add})
	want := int64(len(r.devices) * count)
	testutil.Eventually(tb, 60*time.Second, func() bool { return f.Stats().Acked >= want }, "the backlog acknowledged by the gateway while the cloud is down")
	f.Close()
	if n := len(r.sim.Messages()); n != 0 {
		tb.Fatalf("the cloud is down but recorded %d messages", n)
	}
	return acks
}

// maxInWindow returns the most arrivals within any window of length w.
func maxInWindow(times []time.Time, w time.Duration) int {
	best, j := 0, 0
	for i := range times {
		for j < len(times) && times[j].Sub(times[i]) < w {
			j++
		}
		best = max(best, j-i)
	}
	return best
}

// TestDrainRespectsDeviceRate: after an outage, each device's backlog
// drains within cloud.device_rate as the simulator recorded it: no more
// than rate+burst messages in any 1 s window (plus a quarter of the rate
// for scheduling jitter between the gateway and the recorder), and no
// faster than the rate on average. Only upper bounds are asserted.
func TestDrainRespectsDeviceRate(t *testing.T) {
	const (
		rate    = 20
		burst   = 1 // newManager's per-device burst
		ndev    = 4
		backlog = 60
	)
	r := newGWRig(t, gwRigOptions{devices: ndev, simRate: cloudsim.RateUnlimited, mutate: func(c *config.Config) {
		rt := float64(rate)
		c.Cloud.DeviceRate = &rt
	}})
	acks := r.backlog(backlog)
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, d := range r.devices {
		testutil.Eventually(t, 30*time.Second, func() bool { s, _ := r.seqTimes(d); return len(s) >= backlog }, "%s backlog drained", d.DeviceName)
	}
	for _, d := range r.devices {
		seqs, times := r.seqTimes(d)
		if dups := reconcile(t, d.DeviceName, seqs, acks.of(d.DeviceName)); dups != 0 {
			t.Errorf("%s: %d duplicates without a fault", d.DeviceName, dups)
		}
		peak := maxInWindow(times, time.Second)
		if limit := rate + burst + rate/4; peak > limit {
			t.Errorf("%s: %d messages within 1 s, the device rate is %d/s (burst %d; at most %d tolerated)", d.DeviceName, peak, rate, burst, limit)
		}
		span := times[len(times)-1].Sub(times[0])
		mean := float64(len(times)-1) / span.Seconds()
		if mean > rate*1.15 {
			t.Errorf("%s: drained %d messages in %v: %.1f msg/s, above the rate of %d/s", d.DeviceName, len(times), span, mean, rate)
		}
		t.Logf("%s: %d messages in %v (%.1f msg/s), at most %d in any 1 s", d.DeviceName, len(times), span.Round(time.Millisecond), mean, peak)
	}
}

// TestDrainFairAcrossDevices: 20 devices with equal backlogs drain under a
// gateway-wide rate (and the default per-device rate) round-robin: while
// all of them are draining each gets a similar share, and they finish
// close together relative to the whole drain; none starves.
func TestDrainFairAcrossDevices(t *testing.T) {
	const (
		ndev    = 20
		backlog = 20
		gwRate  = 100
	)
	devRate := 10.0 // above the fair share (gwRate/ndev): the gateway rate binds
	r := newGWRig(t, gwRigOptions{devices: ndev, simRate: cloudsim.RateUnlimited, mutate: func(c *config.Config) {
		c.Cloud.GatewayRate = gwRate
		c.Cloud.DeviceRate = &devRate
		// Reconnect together after the outage: the gateway bucket's
		// burst (one second's worth) goes to whoever is connected first.
		c.Cloud.BackoffMax = config.Duration(100 * time.Millisecond)
		c.Cloud.ConnectRate, c.Cloud.ConnectBurst = 1000, 1000
	}})
	acks := r.backlog(backlog)
	up := time.Now()
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, func() bool { return len(r.sim.Messages()) >= ndev*backlog }, "all backlogs drained")

	var starts, finishes []time.Time
	all := map[string][]time.Time{}
	for _, d := range r.devices {
		seqs, times := r.seqTimes(d)
		reconcile(t, d.DeviceName, seqs, acks.of(d.DeviceName))
		all[d.DeviceName] = times
		t.Logf("%s: first %v, last %v", d.DeviceName, times[0].Sub(up).Round(time.Millisecond), times[len(times)-1].Sub(up).Round(time.Millisecond))
		starts = append(starts, times[0])
		finishes = append(finishes, times[len(times)-1])
	}
	// The contended period: every device is draining and none is done.
	t0, t1 := slices.MaxFunc(starts, time.Time.Compare), slices.MinFunc(finishes, time.Time.Compare)
	if !t0.Before(t1) {
		t.Fatalf("a device finished (%v) before the last one started (%v): no contention to measure", t1.Sub(up), t0.Sub(up))
	}
	counts := map[string]int{}
	total := 0
	for name, times := range all {
		for _, tm := range times {
			if !tm.Before(t0) && !tm.After(t1) {
				counts[name]++
				total++
			}
		}
	}
	mean := float64(total) / ndev
	lo, hi := ndev*backlog, 0
	for _, d := range r.devices {
		n := counts[d.DeviceName]
		lo, hi = min(lo, n), max(hi, n)
		if float64(n) < mean/2 {
			t.Errorf("%s: %d messages while all devices were draining, the mean is %.1f: starved", d.DeviceName, n, mean)
		}
	}
	first, last := slices.MinFunc(finishes, time.Time.Compare), slices.MaxFunc(finishes, time.Time.Compare)
	drain := last.Sub(up)
	spread := last.Sub(first)
	if spread > drain*35/100 {
		t.Errorf("finish times spread over %v of a %v drain: not round-robin", spread, drain)
	}
	var times []time.Time
	for _, ts := range all {
		times = append(times, ts...)
	}
	slices.SortFunc(times, time.Time.Compare)
	// The gateway-wide bucket holds one second's worth (burst = rate).
	if peak, limit := maxInWindow(times, time.Second), 2*gwRate+gwRate/4; peak > limit {
		t.Errorf("%d messages within 1 s, the gateway rate is %d/s (burst %d)", peak, gwRate, gwRate)
	}
	t.Logf("%d devices × %d messages at %d/s gateway-wide: drained in %v; while all drained (%v) %d–%d messages per device (mean %.1f); finish times spread %v",
		ndev, backlog, gwRate, drain.Round(time.Millisecond), t1.Sub(t0).Round(time.Millisecond), lo, hi, mean, spread.Round(time.Millisecond))
}

// TestDrainWithinCloudRateLimit: with the defaults (Alibaba's 30 msg/s per
// device on both sides) the simulator's rate limiter, which acknowledges
// and silently drops what exceeds it, drops nothing while the gateway
// drains a backlog.
func TestDrainWithinCloudRateLimit(t *testing.T) {
	const ndev, backlog = 3, 90
	r := newGWRig(t, gwRigOptions{devices: ndev}) // simRate 0: the aliyun default
	if r.cfg.Cloud.EffectiveDeviceRate() != cloudsim.DefaultAliyunDeviceRate {
		t.Fatalf("gateway device rate %v, want the default %d", r.cfg.Cloud.EffectiveDeviceRate(), cloudsim.DefaultAliyunDeviceRate)
	}
	acks := r.backlog(backlog)
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// The gateway counts PUBACKs, which the simulator sends for dropped
	// messages too: wait for those, then look at what was recorded.
	testutil.Eventually(t, 30*time.Second, func() bool { return r.gw.Snapshot().Sent >= ndev*backlog }, "all backlogs acknowledged by the cloud")
	st := r.sim.Stats()
	if st.RateDropped != 0 {
		t.Errorf("the cloud's rate limiter dropped %d messages", st.RateDropped)
	}
	for _, d := range r.devices {
		seqs, _ := r.seqTimes(d)
		reconcile(t, d.DeviceName, seqs, acks.of(d.DeviceName))
	}
	t.Logf("%d devices × %d messages drained in %v; %d recorded, %d rate-dropped", ndev, backlog, time.Since(start).Round(time.Millisecond), st.Messages, st.RateDropped)
}

// localClient connects d to the local broker with the firmware's signed
// credentials (as devsim does).
func (r *gwRig) localClient(d devsim.Device) mqtt.Client {
	r.t.Helper()
	c, err := r.dialLocal(d)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// dialLocal is localClient for any goroutine: it returns the error, and
// the caller disconnects the client.
func (r *gwRig) dialLocal(d devsim.Device) (mqtt.Client, error) {
	c, err := secrets.Sign(secrets.SignParams{Dialect: d.Dialect, ProductKey: d.ProductKey, DeviceName: d.DeviceName,
		ClientID: d.ProductKey + "." + d.DeviceName, Timestamp: "2524608000000", SecureMode: 3}, d.Secret)
	if err != nil {
		return nil, fmt.Errorf("sign for %s: %w", d.DeviceName, err)
	}
	o := mqtt.NewClientOptions().AddBroker("tcp://" + r.local).SetClientID(c.ClientID).SetUsername(c.Username).
		SetPassword(c.Password.Reveal()).SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).
		SetConnectTimeout(10 * time.Second).SetKeepAlive(60 * time.Second).SetOrderMatters(false)
	cl := mqtt.NewClient(o)
	tok := cl.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		cl.Disconnect(0)
		return nil, fmt.Errorf("connect %s to the local broker: no CONNACK within 30 s", d.DeviceName)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect %s to the local broker: %w", d.DeviceName, err)
	}
	return cl, nil
}

// post is a devsim-style property post carrying seq, padded to size bytes
// (when size is larger than the bare post).
func post(seq int64, size int) []byte {
	p := devsim.Post{ID: fmt.Sprint(seq), Version: "1.0", Method: "thing.event.property.post", Params: map[string]any{"seq": seq, "pad": ""}}
	b, _ := json.Marshal(p)
	if pad := size - len(b); pad > 0 {
		p.Params["pad"] = strings.Repeat("x", pad)
		b, _ = json.Marshal(p)
	}
	return b
}

// publish sends one QoS 1 post and waits for the gateway's PUBACK.
func publish(tb testing.TB, c mqtt.Client, d devsim.Device, seq int64) {
	tb.Helper()
	tok := c.Publish(d.UplinkTopic(), 1, false, post(seq, 0))
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		tb.Fatalf("%s: publish %d: %v", d.DeviceName, seq, tok.Error())
	}
}

// TestLiveFirstEndToEnd: with spool.live_first, a device's messages
// published after its cloud session came up overtake the backlog it built
// while the cloud was down; each lane arrives complete and in order.
func TestLiveFirstEndToEnd(t *testing.T) {
	const (
		backlog   = 60
		live      = 15
		liveStart = 1001 // live posts carry seqs from here
	)
	r := newGWRig(t, gwRigOptions{devices: 1, simRate: cloudsim.RateUnlimited, mutate: func(c *config.Config) {
		c.Spool.LiveFirst = true
		rt := 20.0
		c.Cloud.DeviceRate = &rt
	}})
	d := r.devices[0]
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	c := r.localClient(d)
	acked := map[bool]map[int64]bool{false: {}, true: {}} // by lane: live?
	for s := int64(1); s <= backlog; s++ {
		publish(t, c, d, s)
		acked[false][s] = true
	}
	if err := r.sim.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Once the cloud has a message the drain runs: what is published from
	// now on was appended after the session came up.
	testutil.Eventually(t, 30*time.Second, func() bool { s, _ := r.seqTimes(d); return len(s) > 0 }, "the drain started")
	arrived := func() int { s, _ := r.seqTimes(d); return len(s) }
	for s := int64(liveStart); s < liveStart+live; s++ {
		n := arrived()
		publish(t, c, d, s)
		acked[true][s] = true
		testutil.Eventually(t, 30*time.Second, func() bool { return arrived() >= n+2 }, "progress")
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return arrived() >= backlog+live }, "everything delivered")
	seqs, _ := r.seqTimes(d)
	var old, fresh []int64
	for _, s := range seqs {
		if s >= liveStart {
			fresh = append(fresh, s)
		} else {
			old = append(old, s)
		}
	}
	reconcile(t, d.DeviceName+" backlog lane", old, acked[false])
	reconcile(t, d.DeviceName+" live lane", fresh, acked[true])
	lastOld := slices.Index(seqs, backlog)
	for s := int64(liveStart); s < liveStart+live; s++ {
		if i := slices.Index(seqs, s); i > lastOld {
			t.Errorf("live message %d arrived at position %d, after the backlog finished at %d", s, i, lastOld)
		}
	}
	t.Logf("arrival order: %v", seqs)
}
