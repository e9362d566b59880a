package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/edgegw/edgegw/uplink/cloudsim"
)

var stormScenario = scenario{
	Scenario: Scenario{Name: "storm", Summary: "the cloud (simulator) drops every session at once: time until all are back, " +
		"highest CONNECT rate the cloud sees in any second"},
	defaults: func(o *Options) {
		def(&o.Devices, 9000, 30, o.Quick)
		def(&o.ConnectRate, 500, 100, o.Quick)
		def(&o.ConnectBurst, 50, 10, o.Quick)
	},
	flags: func(o *Options) string {
		return fmt.Sprintf(" -devices %d -connect-rate %g -connect-burst %d", o.Devices, o.ConnectRate, o.ConnectBurst)
	},
	run: runStorm,
}

// StormResult holds the storm scenario's figures.
type StormResult struct {
	Devices      int     `json:"devices"`
	ConnectRate  float64 `json:"connectRate"`
	ConnectBurst int     `json:"connectBurst"`
	// InitialUpSeconds: from exec of edgegw until every session is up.
	InitialUpSeconds float64 `json:"initialUpSeconds"`
	Dropped          int     `json:"dropped"`
	// RecoverySeconds: from the drop until every session is back.
	RecoverySeconds float64 `json:"recoverySeconds"`
	// PeakConnectsPerSecond is the most CONNECTs (accepted or refused) the
	// cloud saw within one second during the recovery, from counter
	// samples every 50 ms (a lower bound: see peakCount).
	PeakConnectsPerSecond float64 `json:"peakConnectsPerSecond"`
	Connects              int64   `json:"connects"` // CONNECTs during the recovery
	Refused               int64   `json:"refused"`
	Takeovers             int64   `json:"takeovers"`
	CPUSeconds            float64 `json:"gatewayCpuSeconds"` // edgegw, during the recovery
	PeakRSSMiB            float64 `json:"gatewayPeakRssMiB"`
}

func runStorm(ctx context.Context, e *env) (_ any, _ []Table, err error) {
	o := e.opts
	n := o.Devices
	res := &StormResult{Devices: n, ConnectRate: o.ConnectRate, ConnectBurst: o.ConnectBurst}
	devs := makeDevices(n)
	dir := e.subdir("storm")
	sim, err := startSimChild(ctx, o.Executable, dir, devs, nil, e.echo())
	if err != nil {
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, sim.stop(30*time.Second)) }()
	local, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	g := gatewaySetup{Dir: dir, Admin: e.socket("storm"), Local: local, Cloud: sim.addr, ConnectRate: o.ConnectRate, ConnectBurst: o.ConnectBurst}
	if err := g.seedRegistry(devs); err != nil {
		return nil, nil, err
	}
	if err := g.writeConfig(); err != nil {
		return nil, nil, err
	}
	start := time.Now()
	gw, _, err := startGateway(ctx, o.Executable, g, e.echo())
	if err != nil {
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, gw.stop(30*time.Second)) }()
	budget := time.Duration(float64(n)/o.ConnectRate*float64(time.Second))*2 + time.Minute
	uctx, cancel := context.WithTimeout(ctx, budget)
	before, err := sim.waitStats(uctx, "every cloud session up", func(s cloudsim.Stats) bool { return s.Connected >= n })
	cancel()
	if err != nil {
		return nil, nil, err
	}
	res.InitialUpSeconds = time.Since(start).Seconds()
	e.logf("storm: %d sessions up after %s; dropping them all", n, fmtSeconds(time.Since(start)))

	cpu0, err := gw.cpu()
	if err != nil {
		return nil, nil, err
	}
	connects := func(s cloudsim.Stats) int64 {
		c := s.ConnectsAccepted
		for _, r := range s.ConnectsRefused {
			c += r
		}
		return c
	}
	// Sample the cloud's CONNECT counter while the sessions come back.
	sctx, stopSampling := context.WithCancel(ctx)
	t1 := time.Now()
	first, err := sim.stats(ctx)
	if err != nil {
		stopSampling()
		return nil, nil, err
	}
	samples := []connectSample{{t1, time.Now(), connects(first)}}
	var sampleErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			t1 := time.Now()
			st, err := sim.stats(sctx)
			if err != nil {
				if sctx.Err() == nil {
					sampleErr = err
				}
				return
			}
			samples = append(samples, connectSample{t1, time.Now(), connects(st)})
		}
	}()
	t0 := time.Now()
	res.Dropped, err = sim.drop(ctx)
	if err != nil {
		stopSampling()
		wg.Wait()
		return nil, nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, budget)
	after, err := sim.waitStats(rctx, "every session back", func(s cloudsim.Stats) bool {
		return s.ConnectsAccepted >= before.ConnectsAccepted+int64(n) && s.Connected >= n
	})
	cancel()
	recovered := time.Since(t0)
	stopSampling()
	wg.Wait()
	if err != nil {
		return nil, nil, err
	}
	if sampleErr != nil {
		return nil, nil, sampleErr
	}
	cpu1, err := gw.cpu()
	if err != nil {
		return nil, nil, err
	}
	mem, err := gw.mem()
	if err != nil {
		return nil, nil, err
	}
	res.RecoverySeconds = recovered.Seconds()
	res.PeakConnectsPerSecond = float64(peakCount(samples, time.Second))
	res.Connects = connects(after) - connects(before)
	res.Refused = connects(after) - after.ConnectsAccepted - (connects(before) - before.ConnectsAccepted)
	res.Takeovers = after.Takeovers - before.Takeovers
	res.CPUSeconds, res.PeakRSSMiB = (cpu1 - cpu0).Seconds(), mib(mem.HWM)
	e.logf("storm: %d dropped, all back after %s; peak %.0f CONNECT/s", res.Dropped, fmtSeconds(recovered), res.PeakConnectsPerSecond)
	return res, []Table{res.table()}, nil
}

// connectSample is the cloud's CONNECT counter, read at some moment
// between before and after (the request and its reply).
type connectSample struct {
	before, after time.Time
	count         int64
}

// peakCount returns the largest counter increase between two samples
// whose reads were certainly at most w apart (from the earlier request to
// the later reply): a lower bound of the most CONNECTs the cloud saw
// within any window of w, never an overestimate caused by slow replies.
func peakCount(s []connectSample, w time.Duration) int64 {
	var peak int64
	j := 0
	for i := range s {
		for j < i && s[i].after.Sub(s[j].before) > w {
			j++
		}
		peak = max(peak, s[i].count-s[j].count)
	}
	return peak
}

func (r *StormResult) table() Table {
	secs := func(s float64) string { return fmtSeconds(time.Duration(s * float64(time.Second))) }
	return Table{
		Title:  fmt.Sprintf("storm: %s cloud sessions dropped at once (connect budget %g/s, burst %d)", commas(int64(r.Devices)), r.ConnectRate, r.ConnectBurst),
		Header: []string{"metric", "value"},
		Rows: [][]string{
			{"sessions up after start", secs(r.InitialUpSeconds)},
			{"connections dropped by the cloud", commas(int64(r.Dropped))},
			{"all sessions back after", secs(r.RecoverySeconds)},
			{"budget allows at best", secs(float64(r.Devices-r.ConnectBurst) / r.ConnectRate)},
			{"highest CONNECT rate at the cloud in any second", fmt.Sprintf("%.0f/s", r.PeakConnectsPerSecond)},
			{"CONNECTs during the recovery (refused)", fmt.Sprintf("%s (%s)", commas(r.Connects), commas(r.Refused))},
			{"takeovers (a second session for one device)", commas(r.Takeovers)},
			{"edgegw CPU during the recovery, s", fmt.Sprintf("%.1f", r.CPUSeconds)},
			{"edgegw peak RSS, MiB", fmt.Sprintf("%.0f", r.PeakRSSMiB)},
		},
		Notes: []string{"edgegw and the cloud simulator run as child processes; the simulator's control API closes every device " +
			"connection at once (POST /drop) and its counters are sampled every 50 ms; the peak counts only CONNECTs certainly " +
			"within one second (from a sample's request to a later sample's reply). No local devices are connected: " +
			"the sessions are edgegw's own. The connect budget lets at most burst + rate CONNECTs through in any second: a token bucket orders the attempts, a one-second window counts them after the dial, just before the CONNECT is written."},
	}
}
