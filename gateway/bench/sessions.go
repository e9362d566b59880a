package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgegw/edgegw/internal/memreport"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

var sessionsScenario = scenario{
	Scenario: Scenario{Name: "sessions", Summary: "fleets of idle devices, each with its local connection and its cloud session up " +
		"(plain TCP and TLS): RSS and goroutines per device and where they go, idle CPU, time to bring every session up"},
	defaults: func(o *Options) {
		if len(o.Sessions) == 0 {
			o.Sessions = []int{1000, 5000, 9000}
			if o.Quick {
				o.Sessions = []int{20}
			}
		}
		if len(o.Transports) == 0 {
			o.Transports = []string{transportTCP, transportTLS}
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
		return fmt.Sprintf(" -sessions %s -transport %s -idle %v -connect-rate %g -connect-burst %d",
			strings.Join(s, ","), strings.Join(o.Transports, ","), o.Idle, o.ConnectRate, o.ConnectBurst)
	},
	run: runSessions,
}

// SessionsResult holds the sessions scenario's figures.
type SessionsResult struct {
	ConnectRate  float64 `json:"connectRate"`
	ConnectBurst int     `json:"connectBurst"`
	IdleSeconds  float64 `json:"idleSeconds"`
	// Transports are the cloud transports measured, in column order.
	Transports []string `json:"transports"`
	// Baselines are edgegw with an empty registry, one per transport,
	// configured as for the fleets.
	Baselines []SessionBaseline `json:"baselines"`
	// Fleets: for each fleet size, one per transport.
	Fleets []SessionFleet `json:"fleets"`
}

// SessionBaseline is an edgegw with an empty registry.
type SessionBaseline struct {
	Transport  string       `json:"transport"`
	RSSMiB     float64      `json:"rssMiB"`
	Goroutines int          `json:"goroutines"`
	Memory     MemorySample `json:"memory"`
}

// SessionFleet is one fleet size over one cloud transport.
type SessionFleet struct {
	Devices   int    `json:"devices"`
	Transport string `json:"transport"` // tcp or tls
	// TLSVersion is what a probe handshake with the simulator negotiated
	// (the gateway's TLS settings: Go's defaults, at least TLS 1.2).
	TLSVersion string `json:"tlsVersion,omitempty"`
	// UpSeconds: from exec of edgegw until the cloud counts every session;
	// ReadySeconds: from exec until the local broker accepts.
	UpSeconds    float64 `json:"upSeconds"`
	ReadySeconds float64 `json:"readySeconds"`
	// UpCPUSeconds is edgegw's CPU time from exec until every session is up.
	UpCPUSeconds float64 `json:"upCpuSeconds"`
	// Refused counts the CONNECTs the cloud refused (a securemode that does
	// not fit the transport would be refused).
	Refused int64 `json:"refused"`
	// LocalSeconds: connecting every device to the local broker.
	LocalSeconds float64 `json:"localSeconds"`
	RSSMiB       float64 `json:"rssMiB"`
	PeakRSSMiB   float64 `json:"peakRssMiB"`
	// RSSPerDeviceKiB is (RSS − baseline RSS) / devices, with the baseline
	// of the same transport.
	RSSPerDeviceKiB float64 `json:"rssPerDeviceKiB"`
	Goroutines      int     `json:"goroutines"`
	// GoroutinesPerDevice is (goroutines − baseline) / devices.
	GoroutinesPerDevice float64 `json:"goroutinesPerDevice"`
	Threads             int     `json:"threads"`
	// IdleCPUPercent is edgegw's CPU over the idle window, in % of one core.
	IdleCPUPercent float64 `json:"idleCpuPercent"`
	// Settled says the gateway returned the connect burst's memory to the
	// OS (gateway.status runtime.settles), SettleSeconds after the last
	// device had connected. The idle window and every memory figure come
	// after it.
	Settled       bool    `json:"settled"`
	SettleSeconds float64 `json:"settleSeconds,omitempty"`
	// IdleAllocKiBPerSecond is the heap edgegw allocated per second while
	// idle: garbage the heap grows by until the next collection.
	IdleAllocKiBPerSecond float64 `json:"idleAllocKiBPerSecond"`
	// Memory is the gateway's memory at the end of the idle window;
	// PerDevice what each device costs, by part, against the baseline.
	Memory    MemorySample `json:"memory"`
	PerDevice Breakdown    `json:"perDevice"`
}

func runSessions(ctx context.Context, e *env) (any, []Table, error) {
	o := e.opts
	res := &SessionsResult{ConnectRate: o.ConnectRate, ConnectBurst: o.ConnectBurst, IdleSeconds: o.Idle.Seconds(), Transports: o.Transports}

	var pki *benchPKI
	if slices.Contains(o.Transports, transportTLS) {
		var err error
		if pki, err = makePKI(e.subdir("pki")); err != nil {
			return nil, nil, err
		}
	}
	// Baselines: the same gateway without devices.
	bases := map[string]baseline{}
	for _, t := range o.Transports {
		base, err := baselineGateway(ctx, e, t, pki)
		if err != nil {
			return nil, nil, fmt.Errorf("baseline over %s: %w", t, err)
		}
		bases[t] = base
		res.Baselines = append(res.Baselines, SessionBaseline{Transport: t, RSSMiB: mib(base.rss), Goroutines: base.goroutines, Memory: base.mem})
		e.logf("baseline over %s (no devices): RSS %.1f MiB, %d goroutines", t, mib(base.rss), base.goroutines)
	}

	for _, n := range o.Sessions {
		for _, t := range o.Transports {
			fl, err := sessionsFleet(ctx, e, n, t, pki, bases[t])
			if err != nil {
				return nil, nil, fmt.Errorf("%d devices over %s: %w", n, t, err)
			}
			res.Fleets = append(res.Fleets, fl)
		}
	}
	return res, []Table{res.table(), res.breakdownTable()}, nil
}

// baseline is what an edgegw with an empty registry holds.
type baseline struct {
	rss        int64
	goroutines int
	mem        MemorySample
}

// baselineGateway measures an edgegw with an empty registry whose cloud
// endpoint uses transport.
func baselineGateway(ctx context.Context, e *env, transport string, pki *benchPKI) (baseline, error) {
	local, err := freePort()
	if err != nil {
		return baseline{}, err
	}
	g := gatewaySetup{Dir: e.subdir("sessions-baseline-" + transport), Admin: e.socket("baseline-" + transport), Local: local,
		Cloud: "127.0.0.1:1", ConnectRate: 1, ConnectBurst: 1, Profiles: true}
	if transport == transportTLS {
		g.CloudTLS, g.CloudCA = true, pki.CAFile
	}
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
	mem, _, err := sampleMemory(ctx, gw, g)
	return baseline{rss: mem.RSS, goroutines: mem.Goroutines, mem: mem}, err
}

// sessionsFleet measures n idle devices whose cloud sessions use
// transport; pki is the run's CA for TLS.
func sessionsFleet(ctx context.Context, e *env, n int, transport string, pki *benchPKI, base baseline) (fl SessionFleet, err error) {
	o := e.opts
	fl.Devices, fl.Transport = n, transport
	devs := makeDevices(n)
	name := fmt.Sprintf("sessions-%d-%s", n, transport)
	dir := e.subdir(name)
	var simPKI *benchPKI
	if transport == transportTLS {
		simPKI = pki
	}
	sim, err := startSimChild(ctx, o.Executable, dir, devs, simPKI, e.echo())
	if err != nil {
		return fl, err
	}
	defer func() { err = errors.Join(err, sim.stop(30*time.Second)) }()
	local, err := freePort()
	if err != nil {
		return fl, err
	}
	settles := newSettleWatch()
	g := gatewaySetup{Dir: dir, Admin: e.socket(name), Local: local, Cloud: sim.addr, ConnectRate: o.ConnectRate, ConnectBurst: o.ConnectBurst,
		Profiles: true, LogLevel: "info", Watch: settles.line}
	if transport == transportTLS {
		// The simulator's certificate must verify against the run's CA
		// the way edgegw checks it.
		if fl.TLSVersion, err = probeTLS(ctx, sim.tlsAddr, pki.CAFile); err != nil {
			return fl, err
		}
		g.Cloud, g.CloudTLS, g.CloudCA = sim.tlsAddr, true, pki.CAFile
	}
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
	upCPU, err := gw.cpu()
	if err != nil {
		return fl, err
	}
	fl.UpCPUSeconds = upCPU.Seconds()
	e.logf("%d devices over %s: READY after %s, every cloud session up after %s (edgegw CPU %.2f s)",
		n, transport, fmtSeconds(ready), fmtSeconds(time.Since(start)), fl.UpCPUSeconds)

	start = time.Now()
	f, err := connectFleet(ctx, fleetConfig{Addr: local, Devices: devs, Keepalive: 5 * time.Minute})
	if err != nil {
		return fl, err
	}
	defer f.close()
	fl.LocalSeconds = time.Since(start).Seconds()
	e.logf("%d devices over %s: connected locally in %s; idle for %v", n, transport, fmtSeconds(time.Since(start)), o.Idle)

	// The gateway returns the connect burst's memory once the burst is
	// over (gateway/memory.go): measure after that. Its log says when.
	localDone := time.Now()
	settle, settled, err := settles.wait(ctx, localDone, time.Minute)
	if err != nil {
		return fl, err
	}
	fl.Settled = settled
	if settled {
		fl.SettleSeconds = settle.at.Sub(localDone).Seconds()
		e.logf("%d devices over %s: memory returned %s after the devices connected", n, transport, fmtSeconds(settle.at.Sub(localDone)))
	} else {
		e.logf("%d devices over %s: no memory returned within a minute of the devices connecting", n, transport)
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
	st, err := sim.stats(ctx)
	if err != nil || st.Connected < n {
		return fl, fmt.Errorf("cloud sessions went down while idle (%d of %d up, %v)", st.Connected, n, err)
	}
	for _, c := range st.ConnectsRefused {
		fl.Refused += c
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
	var rep memreport.Report
	fl.Memory, rep, err = sampleMemory(ctx, gw, g)
	if err != nil {
		return fl, err
	}
	if settled && rep.Time.After(settle.at) {
		fl.IdleAllocKiBPerSecond = float64(rep.AllocBytes-min(settle.allocated, rep.AllocBytes)) / 1024 / rep.Time.Sub(settle.at).Seconds()
	}
	fl.Goroutines = fl.Memory.Goroutines
	fl.GoroutinesPerDevice = float64(fl.Goroutines-base.goroutines) / float64(n)
	fl.PerDevice = breakdown(fl.Memory, base.mem, n)
	e.logf("%d devices over %s: RSS %.0f MiB (%.1f KiB/device), %d goroutines (%.1f/device), idle CPU %.1f%% of a core",
		n, transport, fl.RSSMiB, fl.RSSPerDeviceKiB, fl.Goroutines, fl.GoroutinesPerDevice, fl.IdleCPUPercent)
	return fl, nil
}

// transportName is a transport as the table names it.
func transportName(t string) string {
	if t == transportTLS {
		return "TLS"
	}
	return "TCP"
}

func (r *SessionsResult) table() Table {
	t := Table{
		Title:  fmt.Sprintf("sessions: idle devices, each with its local connection and its own cloud session (connect budget %g/s, burst %d)", r.ConnectRate, r.ConnectBurst),
		Header: []string{"metric"},
	}
	for _, f := range r.Fleets {
		t.Header = append(t.Header, fmt.Sprintf("%s devices, cloud over %s", commas(int64(f.Devices)), transportName(f.Transport)))
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
	row("edgegw CPU until every session is up, s", func(f SessionFleet) string { return fmt.Sprintf("%.2f", f.UpCPUSeconds) })
	row("devices connected locally in", func(f SessionFleet) string { return secs(f.LocalSeconds) })
	row("RSS (peak), MiB", func(f SessionFleet) string { return fmt.Sprintf("%.0f (%.0f)", f.RSSMiB, f.PeakRSSMiB) })
	row("RSS per device, KiB", func(f SessionFleet) string { return fmt.Sprintf("%.1f", f.RSSPerDeviceKiB) })
	row("goroutines (per device)", func(f SessionFleet) string {
		return fmt.Sprintf("%s (%.1f)", commas(int64(f.Goroutines)), f.GoroutinesPerDevice)
	})
	row("OS threads", func(f SessionFleet) string { return strconv.Itoa(f.Threads) })
	row("connect burst's memory returned", func(f SessionFleet) string {
		if !f.Settled {
			return "no"
		}
		return "after " + secs(f.SettleSeconds)
	})
	row(fmt.Sprintf("idle CPU over %gs, %% of one core", r.IdleSeconds), func(f SessionFleet) string { return fmt.Sprintf("%.2f", f.IdleCPUPercent) })
	row("heap allocated while idle, KiB/s", func(f SessionFleet) string { return fmt.Sprintf("%.0f", f.IdleAllocKiBPerSecond) })
	base := func(tr string) MemorySample {
		for _, b := range r.Baselines {
			if b.Transport == tr {
				return b.Memory
			}
		}
		return MemorySample{}
	}
	perDev := func(f SessionFleet, v func(MemorySample) uint64) string {
		return fmt.Sprintf("%.1f", (float64(v(f.Memory))-float64(v(base(f.Transport))))/1024/float64(f.Devices))
	}
	row("Go heap objects per device, KiB", func(f SessionFleet) string {
		return perDev(f, func(m MemorySample) uint64 { return m.Runtime.HeapObjectsBytes })
	})
	row("Go goroutine stacks per device, KiB", func(f SessionFleet) string {
		return perDev(f, func(m MemorySample) uint64 { return m.Runtime.StackBytes })
	})
	row("Go heap held free per device, KiB", func(f SessionFleet) string {
		return perDev(f, func(m MemorySample) uint64 { return m.Runtime.HeapFreeBytes })
	})

	var transports, bases []string
	for _, tr := range r.Transports {
		switch tr {
		case transportTLS:
			v := "TLS"
			for _, f := range r.Fleets {
				if f.Transport == tr && f.TLSVersion != "" {
					v = f.TLSVersion
					break
				}
			}
			transports = append(transports, v+" with securemode=2 (the simulator's ECDSA P-256 certificate is signed by a CA generated for the run, "+
				"which edgegw trusts through cloud.ca_file; edgegw's sessions share one TLS session cache, as a product's devices do in production, "+
				"so connections made once a session ticket has arrived can resume without certificate signatures, still with an ECDHE exchange)")
		default:
			transports = append(transports, "plain TCP with securemode=3")
		}
	}
	for _, b := range r.Baselines {
		bases = append(bases, fmt.Sprintf("%s: RSS %.1f MiB, %d goroutines", transportName(b.Transport), b.RSSMiB, b.Goroutines))
	}
	t.Notes = append(t.Notes, fmt.Sprintf("edgegw runs as a child process: devices connect to it over plain TCP (keepalive 300 s); its cloud sessions "+
		"(keepalive 300 s) use %s. The cloud simulator is another child process and the devices live in the benchmark process. "+
		"Per-device figures subtract an edgegw with an empty registry configured for the same transport (%s). "+
		"Goroutines are counted from a SIGQUIT dump of the child; edgegw's CPU from /proc; the Go figures from runtime/metrics in the child "+
		"(the memory report edgegw run writes on SIGUSR1 with EDGEGW_PROFILE_DIR, read before the report collects garbage). "+
		"Every figure after the connect burst is taken once the gateway has returned the burst's memory (it does so, and logs it, 5 s after a burst of connections), "+
		"then over the idle window; nothing else is asked of the gateway until RSS is read. The idle allocation rate runs from that settle to the report.",
		strings.Join(transports, ", or "), strings.Join(bases, "; ")))
	return t
}

// breakdownTable says where each KiB per device goes.
func (r *SessionsResult) breakdownTable() Table {
	t := Table{
		Title:  "sessions: where each device's memory goes, KiB per device (goroutines per device)",
		Header: []string{"part"},
	}
	for _, f := range r.Fleets {
		t.Header = append(t.Header, fmt.Sprintf("%s devices, cloud over %s", commas(int64(f.Devices)), transportName(f.Transport)))
	}
	row := func(name string, fn func(Breakdown) string) {
		cells := []string{name}
		for _, f := range r.Fleets {
			cells = append(cells, fn(f.PerDevice))
		}
		t.Rows = append(t.Rows, cells)
	}
	for i, bp := range breakdownParts {
		row(bp.name, func(b Breakdown) string {
			if i >= len(b.Parts) {
				return ""
			}
			p := b.Parts[i]
			return fmt.Sprintf("%.1f: heap %.1f + stacks %.1f (%.1f)", p.TotalKiB(), p.HeapKiB, p.StackKiB, p.Goroutines)
		})
	}
	kib := func(v float64) string { return fmt.Sprintf("%.1f", v) }
	row("stacks beyond the goroutines' need", func(b Breakdown) string { return kib(b.StackSlackKiB) })
	row("garbage not yet collected", func(b Breakdown) string { return kib(b.GarbageKiB) })
	row("heap held free (room in spans, pages not yet returned)", func(b Breakdown) string { return kib(b.FreeHeapKiB) })
	row("runtime metadata", func(b Breakdown) string { return kib(b.RuntimeKiB) })
	row("outside the Go runtime", func(b Breakdown) string { return kib(b.OutsideKiB) })
	row("RSS per device", func(b Breakdown) string { return kib(b.RSSKiB) })
	t.Notes = append(t.Notes, "Each figure is (fleet − baseline) / devices, measured in the gateway child at the end of the idle window. "+
		"Heap: the live heap after a collection by the code that allocated it (the heap profile edgegw run writes on SIGUSR1 with "+
		"EDGEGW_PROFILE_DIR, attributed to the innermost frame of paho, mochi or edgegw; an allocation by the standard library on "+
		"behalf of edgegw, such as a socket, counts as edgegw's), plus the goroutine descriptors shared out by goroutine count. "+
		"Stacks: the stack each goroutine needs at least, from its stack pointers in a SIGQUIT dump (GOTRACEBACK=system): the "+
		"smallest power of two of 2 KiB or more that holds its frames and the stack guard; Go does not expose the stack a goroutine "+
		"has, so what stacks hold beyond that (grown during a connect and not shrunk back, free room in stack spans) is its own row. "+
		"Goroutines: a goroutine with paho frames is paho's, then mochi's, then that of the innermost edgegw package. "+
		"Garbage, free heap and metadata come from runtime/metrics as the report starts; the rows add up to the RSS per device.")
	return t
}
