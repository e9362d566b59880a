package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/edgegw/edgegw/uplink/cloudsim"
)

var sessionsScenario = scenario{
	Scenario: Scenario{Name: "sessions", Summary: "fleets of idle devices, each with its local connection and its cloud session up: " +
		"RSS and goroutines per device, idle CPU, time to bring every session up"},
	defaults: func(o *Options) {
		if len(o.Sessions) == 0 {
			o.Sessions = []int{1000, 5000, 9000}
			if o.Quick {
				o.Sessions = []int{20}
			}
		}
		def(&o.Idle, 10*time.Second, time.Second, o.Quick)
		def(&o.ConnectRate, 1000, 1000, o.Quick)
		def(&o.ConnectBurst, 1000, 1000, o.Quick)
	},
	flags: func(o *Options) string {
		var s []string
		for _, n := range o.Sessions {
			s = append(s, strconv.Itoa(n))
		}
		return fmt.Sprintf(" -sessions %s -idle %v -connect-rate %g -connect-burst %d", strings.Join(s, ","), o.Idle, o.ConnectRate, o.ConnectBurst)
	},
	run: runSessions,
}

// SessionsResult holds the sessions scenario's figures.
type SessionsResult struct {
	ConnectRate  float64 `json:"connectRate"`
	ConnectBurst int     `json:"connectBurst"`
	IdleSeconds  float64 `json:"idleSeconds"`
	// Baseline is edgegw with an empty registry.
	BaselineRSSMiB     float64        `json:"baselineRssMiB"`
	BaselineGoroutines int            `json:"baselineGoroutines"`
	Fleets             []SessionFleet `json:"fleets"`
}

// SessionFleet is one fleet size.
type SessionFleet struct {
	Devices int `json:"devices"`
	// UpSeconds: from exec of edgegw until the cloud counts every session;
	// ReadySeconds: from exec until the local broker accepts.
	UpSeconds    float64 `json:"upSeconds"`
	ReadySeconds float64 `json:"readySeconds"`
	// LocalSeconds: connecting every device to the local broker.
	LocalSeconds float64 `json:"localSeconds"`
	RSSMiB       float64 `json:"rssMiB"`
	PeakRSSMiB   float64 `json:"peakRssMiB"`
	// RSSPerDeviceKiB is (RSS − baseline RSS) / devices.
	RSSPerDeviceKiB float64 `json:"rssPerDeviceKiB"`
	Goroutines      int     `json:"goroutines"`
	// GoroutinesPerDevice is (goroutines − baseline) / devices.
	GoroutinesPerDevice float64 `json:"goroutinesPerDevice"`
	Threads             int     `json:"threads"`
	// IdleCPUPercent is edgegw's CPU over the idle window, in % of one core.
	IdleCPUPercent float64 `json:"idleCpuPercent"`
}

func runSessions(ctx context.Context, e *env) (any, []Table, error) {
	o := e.opts
	res := &SessionsResult{ConnectRate: o.ConnectRate, ConnectBurst: o.ConnectBurst, IdleSeconds: o.Idle.Seconds()}

	// Baseline: the same gateway without devices.
	base, err := baselineGateway(ctx, e)
	if err != nil {
		return nil, nil, err
	}
	res.BaselineRSSMiB, res.BaselineGoroutines = mib(base.rss), base.goroutines
	e.logf("baseline (no devices): RSS %.1f MiB, %d goroutines", res.BaselineRSSMiB, res.BaselineGoroutines)

	for _, n := range o.Sessions {
		fl, err := sessionsFleet(ctx, e, n, base)
		if err != nil {
			return nil, nil, fmt.Errorf("%d devices: %w", n, err)
		}
		res.Fleets = append(res.Fleets, fl)
	}
	return res, []Table{res.table()}, nil
}

// baseline is what an edgegw with an empty registry holds.
type baseline struct {
	rss        int64
	goroutines int
}

// baselineGateway measures an edgegw with an empty registry.
func baselineGateway(ctx context.Context, e *env) (baseline, error) {
	local, err := freePort()
	if err != nil {
		return baseline{}, err
	}
	g := gatewaySetup{Dir: e.subdir("sessions-baseline"), Admin: e.socket("baseline"), Local: local, Cloud: "127.0.0.1:1", ConnectRate: 1, ConnectBurst: 1}
	if err := g.seedRegistry(nil); err != nil {
		return baseline{}, err
	}
	if err := g.writeConfig(); err != nil {
		return baseline{}, err
	}
	gw, _, err := startGateway(ctx, e.opts.Executable, g, e.echo())
	if err != nil {
		return baseline{}, err
	}
	defer gw.kill()
	m, err := gw.mem()
	if err != nil {
		return baseline{}, err
	}
	n, err := gw.goroutines(time.Minute)
	return baseline{rss: m.RSS, goroutines: n}, err
}

func sessionsFleet(ctx context.Context, e *env, n int, base baseline) (fl SessionFleet, err error) {
	o := e.opts
	fl.Devices = n
	devs := makeDevices(n)
	dir := e.subdir(fmt.Sprintf("sessions-%d", n))
	sim, err := startSimChild(ctx, o.Executable, dir, devs, e.echo())
	if err != nil {
		return fl, err
	}
	defer func() { err = errors.Join(err, sim.stop(30*time.Second)) }()
	local, err := freePort()
	if err != nil {
		return fl, err
	}
	g := gatewaySetup{Dir: dir, Admin: e.socket(fmt.Sprintf("sessions-%d", n)), Local: local, Cloud: sim.addr, ConnectRate: o.ConnectRate, ConnectBurst: o.ConnectBurst}
	if err := g.seedRegistry(devs); err != nil {
		return fl, err
	}
	if err := g.writeConfig(); err != nil {
		return fl, err
	}
	start := time.Now()
	gw, ready, err := startGateway(ctx, o.Executable, g, e.echo())
	if err != nil {
		return fl, err
	}
	defer gw.kill()
	fl.ReadySeconds = ready.Seconds()
	budget := time.Duration(float64(n)/o.ConnectRate*float64(time.Second)) + 2*time.Minute
	uctx, cancel := context.WithTimeout(ctx, budget)
	_, err = sim.waitStats(uctx, "every cloud session up", func(s cloudsim.Stats) bool { return s.Connected >= n })
	cancel()
	if err != nil {
		return fl, err
	}
	fl.UpSeconds = time.Since(start).Seconds()
	e.logf("%d devices: READY after %s, every cloud session up after %s", n, fmtSeconds(ready), fmtSeconds(time.Since(start)))

	start = time.Now()
	f, err := connectFleet(ctx, fleetConfig{Addr: local, Devices: devs, Keepalive: 5 * time.Minute})
	if err != nil {
		return fl, err
	}
	defer f.close()
	fl.LocalSeconds = time.Since(start).Seconds()
	e.logf("%d devices: connected locally in %s; idle for %v", n, fmtSeconds(time.Since(start)), o.Idle)

	// Let the connection bursts settle (GC, buffers) before measuring.
	settle := min(2*time.Second, o.Idle/2)
	select {
	case <-time.After(settle):
	case <-ctx.Done():
		return fl, ctx.Err()
	}
	cpu0, err := gw.cpu()
	if err != nil {
		return fl, err
	}
	t0 := time.Now()
	select {
	case <-time.After(o.Idle):
	case <-ctx.Done():
		return fl, ctx.Err()
	}
	cpu1, err := gw.cpu()
	if err != nil {
		return fl, err
	}
	fl.IdleCPUPercent = 100 * (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds()
	if st, err := sim.stats(ctx); err != nil || st.Connected < n {
		return fl, fmt.Errorf("cloud sessions went down while idle (%d of %d up, %v)", st.Connected, n, err)
	}
	if err := f.err(); err != nil {
		return fl, fmt.Errorf("local connections went down while idle: %w", err)
	}
	m, err := gw.mem()
	if err != nil {
		return fl, err
	}
	fl.RSSMiB, fl.PeakRSSMiB, fl.Threads = mib(m.RSS), mib(m.HWM), m.Threads
	fl.RSSPerDeviceKiB = float64(m.RSS-base.rss) / 1024 / float64(n)
	if fl.Goroutines, err = gw.goroutines(2 * time.Minute); err != nil {
		return fl, err
	}
	fl.GoroutinesPerDevice = float64(fl.Goroutines-base.goroutines) / float64(n)
	e.logf("%d devices: RSS %.0f MiB (%.1f KiB/device), %d goroutines (%.1f/device), idle CPU %.1f%% of a core",
		n, fl.RSSMiB, fl.RSSPerDeviceKiB, fl.Goroutines, fl.GoroutinesPerDevice, fl.IdleCPUPercent)
	return fl, nil
}

func (r *SessionsResult) table() Table {
	t := Table{
		Title:  fmt.Sprintf("sessions: idle devices, each with its local connection and its own cloud session (connect budget %g/s, burst %d)", r.ConnectRate, r.ConnectBurst),
		Header: []string{"metric"},
	}
	for _, f := range r.Fleets {
		t.Header = append(t.Header, commas(int64(f.Devices))+" devices")
	}
	row := func(name string, fn func(SessionFleet) string) {
		cells := []string{name}
		for _, f := range r.Fleets {
			cells = append(cells, fn(f))
		}
		t.Rows = append(t.Rows, cells)
	}
	secs := func(s float64) string { return fmtSeconds(time.Duration(s * float64(time.Second))) }
	row("start to READY (local broker accepting)", func(f SessionFleet) string { return secs(f.ReadySeconds) })
	row("start to every cloud session up", func(f SessionFleet) string { return secs(f.UpSeconds) })
	row("devices connected locally in", func(f SessionFleet) string { return secs(f.LocalSeconds) })
	row("RSS (peak), MiB", func(f SessionFleet) string { return fmt.Sprintf("%.0f (%.0f)", f.RSSMiB, f.PeakRSSMiB) })
	row("RSS per device, KiB", func(f SessionFleet) string { return fmt.Sprintf("%.1f", f.RSSPerDeviceKiB) })
	row("goroutines (per device)", func(f SessionFleet) string {
		return fmt.Sprintf("%s (%.1f)", commas(int64(f.Goroutines)), f.GoroutinesPerDevice)
	})
	row("OS threads", func(f SessionFleet) string { return strconv.Itoa(f.Threads) })
	row(fmt.Sprintf("idle CPU over %gs, %% of one core", r.IdleSeconds), func(f SessionFleet) string { return fmt.Sprintf("%.2f", f.IdleCPUPercent) })
	t.Notes = append(t.Notes, fmt.Sprintf("edgegw runs as a child process (plain TCP on both sides, cloud keepalive 300 s, device keepalive 300 s); "+
		"the cloud simulator is another child process and the devices live in the benchmark process. Per-device figures subtract an edgegw "+
		"with an empty registry (RSS %.1f MiB, %d goroutines). Goroutines are counted from a SIGQUIT dump of the child.",
		r.BaselineRSSMiB, r.BaselineGoroutines))
	return t
}
