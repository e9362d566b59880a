package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
)

var forwardScenario = scenario{
	Scenario: Scenario{Name: "forward", Summary: "devices publishing QoS 1 as fast as their window allows through edgegw (durable), " +
		"straight to the cloud broker, and through a mosquitto bridge; the cloud is Debian's mosquitto"},
	defaults: func(o *Options) {
		def(&o.Devices, 1000, 10, o.Quick)
		def(&o.Duration, 20*time.Second, 2*time.Second, o.Quick)
		if o.Rate > 0 {
			// Paced devices keep a window that never throttles them, so
			// that a slow PUBACK shows as latency, not as a lower rate.
			def(&o.Window, 16, 16, o.Quick)
		}
		def(&o.Window, 1, 1, o.Quick)
		def(&o.PayloadSize, 200, 200, o.Quick)
		def(&o.ConnectRate, 1000, 1000, o.Quick)
		def(&o.ConnectBurst, 1000, 1000, o.Quick)
	},
	flags: func(o *Options) string {
		rate := ""
		if o.Rate > 0 {
			rate = fmt.Sprintf(" -rate %g", o.Rate)
		}
		return fmt.Sprintf(" -devices %d -duration %v -window %d -payload %d%s", o.Devices, o.Duration, o.Window, o.PayloadSize, rate)
	},
	run: runForward,
}

// def sets *v to the default (or the quick default) when it is zero.
func def[T comparable](v *T, normal, quick T, isQuick bool) {
	var zero T
	if *v != zero {
		return
	}
	if isQuick {
		*v = quick
	} else {
		*v = normal
	}
}

// ForwardResult holds the forward scenario's figures.
type ForwardResult struct {
	Devices int `json:"devices"`
	Window  int `json:"window"`
	// Rate is the fixed offered load, messages/s over all devices (0:
	// every device publishes as fast as its window allows).
	Rate            float64      `json:"rate,omitempty"`
	PayloadBytes    int          `json:"payloadBytes"`
	DurationSeconds float64      `json:"durationSeconds"`
	WarmupSeconds   float64      `json:"warmupSeconds"`
	Paths           []PathResult `json:"paths"` // direct, edgegw, mosquitto bridge
}

// PathResult is one path of the forward scenario.
type PathResult struct {
	Path string `json:"path"`
	// DeliveredPerSecond is end to end: the messages published in the
	// timed phase over the time from its start until the last of them
	// reached the cloud broker's subscriber (so a path that acknowledges
	// fast and delivers later is not flattered).
	DeliveredPerSecond float64 `json:"deliveredPerSecond"`
	// WindowPerSecond counts arrivals at the cloud during the measurement
	// window (publishing time without the warm-up).
	WindowPerSecond float64 `json:"windowPerSecond"`
	// AckedPerSecond counts PUBACKs the devices received in the window.
	AckedPerSecond float64 `json:"ackedPerSecond"`
	// Latency (device send to cloud subscriber) of every message arriving
	// after the warm-up, those arriving after publishing stopped included,
	// milliseconds.
	LatencyP50MS  float64 `json:"latencyP50ms"`
	LatencyP99MS  float64 `json:"latencyP99ms"`
	LatencyP999MS float64 `json:"latencyP999ms"`
	LatencyMaxMS  float64 `json:"latencyMaxMs"`
	Samples       int     `json:"samples"`
	// PUBACK latency seen by the devices (from when a message was due,
	// when paced) for messages sent after the warm-up, milliseconds.
	AckP50MS  float64 `json:"ackP50ms"`
	AckP99MS  float64 `json:"ackP99ms"`
	AckP999MS float64 `json:"ackP999ms"`
	AckMaxMS  float64 `json:"ackMaxMs"`
	// Acknowledged is every message the devices got a PUBACK for;
	// Undelivered those of them that never reached the cloud.
	Acknowledged int64 `json:"acknowledged"`
	Undelivered  int64 `json:"undelivered"`
	Duplicates   int64 `json:"duplicates"`
	Reordered    int64 `json:"reordered"`
	// DrainSeconds is the time from the end of publishing until the
	// cloud had every acknowledged message.
	DrainSeconds float64 `json:"drainSeconds"`
	// The broker the devices connect to (edgegw or the bridging
	// mosquitto; none for the direct path): CPU from the first timed
	// message to the end of the drain, and peak RSS.
	BrokerCPUSeconds float64 `json:"brokerCpuSeconds,omitempty"`
	// BrokerCores is BrokerCPUSeconds over that time: the share of one
	// core the ingress broker used.
	BrokerCores      float64 `json:"brokerCores,omitempty"`
	BrokerPeakRSSMiB float64 `json:"brokerPeakRssMiB,omitempty"`
	CloudCPUSeconds  float64 `json:"cloudCpuSeconds"`
	ConnectSeconds   float64 `json:"connectSeconds"`
	// edgegw only: spool write transactions (each one fsync) from the
	// first timed message to the end of the drain, messages appended per
	// commit, and commit latency since edgegw started.
	SpoolCommits      uint64  `json:"spoolCommits,omitempty"`
	MessagesPerCommit float64 `json:"messagesPerCommit,omitempty"`
	CommitAvgMS       float64 `json:"commitAvgMs,omitempty"`
	CommitMaxMS       float64 `json:"commitMaxMs,omitempty"`
}

func runForward(ctx context.Context, e *env) (any, []Table, error) {
	o := e.opts
	mosq, err := FindMosquitto(o.Mosquitto)
	if err != nil {
		return nil, nil, err
	}
	devs := makeDevices(o.Devices)
	cloud, cloudAddr, err := startMosquitto(ctx, mosq, e.subdir("cloud"), "cloud-mosquitto", cloudMosquittoConf, e.echo())
	if err != nil {
		return nil, nil, err
	}
	defer cloud.stop(10 * time.Second)
	e.logf("cloud broker: %s at %s", mosquittoVersion(mosq), cloudAddr)

	res := &ForwardResult{Devices: o.Devices, Window: o.Window, Rate: o.Rate, PayloadBytes: o.PayloadSize,
		DurationSeconds: o.Duration.Seconds(), WarmupSeconds: warmup(o.Duration).Seconds()}
	var status statusFunc
	paths := []struct {
		name  string
		start func() (ingress string, broker *child, err error)
	}{
		{"direct", func() (string, *child, error) { status = nil; return cloudAddr, nil, nil }},
		{"edgegw", func() (string, *child, error) {
			local, err := freePort()
			if err != nil {
				return "", nil, err
			}
			g := gatewaySetup{Dir: e.subdir("edgegw"), Admin: e.socket("edgegw"), Local: local, Cloud: cloudAddr,
				ConnectRate: o.ConnectRate, ConnectBurst: o.ConnectBurst, DeviceRate: 0}
			if err := g.seedRegistry(devs); err != nil {
				return "", nil, err
			}
			if err := g.writeConfig(); err != nil {
				return "", nil, err
			}
			c, _, err := startGateway(ctx, o.Executable, g, e.echo())
			status = func(ctx context.Context) (*adminapi.Status, error) { return gatewayStatus(ctx, g) }
			return local, c, err
		}},
		{"mosquitto bridge", func() (string, *child, error) {
			status = nil
			dir := e.subdir("bridge")
			c, addr, err := startMosquitto(ctx, mosq, dir, "bridge-mosquitto", bridgeMosquittoConf(dir, cloudAddr), e.echo())
			return addr, c, err
		}},
	}
	for _, p := range paths {
		e.logf("%s: starting", p.name)
		ingress, broker, err := p.start()
		if err != nil {
			return nil, nil, fmt.Errorf("%s path: %w", p.name, err)
		}
		pr, err := forwardPath(ctx, e, p.name, devs, ingress, broker, status, cloud, cloudAddr)
		if broker != nil {
			err = errors.Join(err, broker.stop(30*time.Second))
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s path: %w", p.name, err)
		}
		res.Paths = append(res.Paths, pr)
	}
	return res, []Table{res.table()}, nil
}

// warmup is the part of the publishing time left out of the measurement.
func warmup(d time.Duration) time.Duration { return min(2*time.Second, d/10) }

// statusFunc asks edgegw for its status (nil for the other paths).
type statusFunc func(ctx context.Context) (*adminapi.Status, error)

// forwardPath runs the load through one path and measures it.
func forwardPath(ctx context.Context, e *env, name string, devs []device, ingress string, broker *child, status statusFunc, cloud *child, cloudAddr string) (PathResult, error) {
	o := e.opts
	pr := PathResult{Path: name}
	t, err := startTap(ctx, cloudAddr, connectParams{ClientID: fmt.Sprintf("bench-tap-%d", time.Now().UnixNano()), Keepalive: 60 * time.Second}, "/sys/#")
	if err != nil {
		return pr, err
	}
	defer t.close()

	start := time.Now()
	f, err := connectFleet(ctx, fleetConfig{Addr: ingress, Devices: devs, Window: o.Window})
	if err != nil {
		return pr, err
	}
	defer f.close()
	pr.ConnectSeconds = time.Since(start).Seconds()
	e.logf("%s: %d devices connected in %s", name, len(devs), fmtSeconds(time.Since(start)))

	// One message per device first: the path is up end to end (for
	// edgegw: every device's cloud session) before the clock starts.
	if err := f.publishAll(ctx, nil, 1, o.PayloadSize, time.Minute, 0); err != nil {
		return pr, fmt.Errorf("first message of every device: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = t.waitUntil(pctx, "the first message of every device at the cloud", func(s tapStats) bool { return s.Unique >= int64(len(devs)) })
	cancel()
	if err != nil {
		return pr, err
	}

	cpu0, err := cpuOf(broker)
	if err != nil {
		return pr, err
	}
	var st0 *adminapi.Status
	if status != nil {
		if st0, err = status(ctx); err != nil {
			return pr, err
		}
	}
	cloud0, err := cloud.cpu()
	if err != nil {
		return pr, err
	}
	stop := make(chan struct{})
	begin := time.Now()
	warm := warmup(o.Duration)
	t.window(begin.Add(warm), begin.Add(o.Duration))
	f.recordAcks(begin.Add(warm), begin.Add(o.Duration))
	done := make(chan error, 1)
	go func() { done <- f.publishAll(ctx, stop, 0, o.PayloadSize, time.Minute, o.Rate) }()
	var ackedWarm, ackedEnd int64
	select {
	case <-time.After(warm):
		ackedWarm = f.acked.Load()
	case err := <-done:
		return pr, fmt.Errorf("publishing ended early: %w", err)
	}
	select {
	case <-time.After(time.Until(begin.Add(o.Duration))):
		ackedEnd = f.acked.Load()
		close(stop)
	case err := <-done:
		return pr, fmt.Errorf("publishing ended early: %w", err)
	}
	end := time.Now()
	if err := <-done; err != nil {
		return pr, err
	}
	e.logf("%s: published for %v; waiting for the cloud to have every acknowledged message", name, o.Duration)
	acked := f.acked.Load()
	dctx, cancel := context.WithTimeout(ctx, max(time.Minute, 3*o.Duration))
	err = t.waitUntil(dctx, "every acknowledged message at the cloud", func(s tapStats) bool { return s.Unique >= acked })
	cancel()
	drained := time.Since(end)
	last := t.lastArrival()
	st := t.stats()
	if err != nil && st.Unique >= acked { // raced with the deadline
		err = nil
	}
	if err != nil {
		e.logf("%s: %v", name, err)
	}
	pr.DrainSeconds = drained.Seconds()
	pr.Acknowledged = acked
	pr.Undelivered = max(0, acked-st.Unique)
	pr.Duplicates, pr.Reordered = st.Dups, st.Reordered
	measured := (o.Duration - warm).Seconds()
	pr.WindowPerSecond = float64(st.WindowCount) / measured
	if timed := st.Unique - int64(len(devs)); timed > 0 && last.After(begin) {
		pr.DeliveredPerSecond = float64(timed) / last.Sub(begin).Seconds()
	}
	pr.AckedPerSecond = float64(ackedEnd-ackedWarm) / measured
	lat := t.latencies()
	pr.Samples = len(lat)
	pr.LatencyP50MS = percentile(lat, 0.50) / 1e6
	pr.LatencyP99MS = percentile(lat, 0.99) / 1e6
	pr.LatencyP999MS = percentile(lat, 0.999) / 1e6
	if len(lat) > 0 {
		pr.LatencyMaxMS = float64(lat[len(lat)-1]) / 1e6
	}
	if acks := f.ackLatencies(); len(acks) > 0 {
		pr.AckP50MS = percentile(acks, 0.50) / 1e6
		pr.AckP99MS = percentile(acks, 0.99) / 1e6
		pr.AckP999MS = percentile(acks, 0.999) / 1e6
		pr.AckMaxMS = float64(acks[len(acks)-1]) / 1e6
	}
	if broker != nil {
		cpu1, err := cpuOf(broker)
		if err != nil {
			return pr, err
		}
		mem, err := broker.mem()
		if err != nil {
			return pr, err
		}
		pr.BrokerCPUSeconds = (cpu1 - cpu0).Seconds()
		pr.BrokerCores = pr.BrokerCPUSeconds / time.Since(begin).Seconds()
		pr.BrokerPeakRSSMiB = mib(mem.HWM)
	}
	if status != nil {
		st1, err := status(ctx)
		if err != nil {
			return pr, err
		}
		pr.SpoolCommits = st1.Spool.Commits - st0.Spool.Commits
		if pr.SpoolCommits > 0 {
			pr.MessagesPerCommit = float64(st1.Spool.Appended-st0.Spool.Appended) / float64(pr.SpoolCommits)
		}
		pr.CommitAvgMS, pr.CommitMaxMS = st1.Spool.CommitAvgMs, st1.Spool.CommitMaxMs
	}
	cloud1, err := cloud.cpu()
	if err != nil {
		return pr, err
	}
	pr.CloudCPUSeconds = (cloud1 - cloud0).Seconds()
	e.logf("%s: %s msg/s delivered, p50 %.2f ms, p99 %.2f ms, %d undelivered", name, fmtRate(pr.DeliveredPerSecond), pr.LatencyP50MS, pr.LatencyP99MS, pr.Undelivered)
	return pr, nil
}

// rateTitle is the table title's part for a paced run.
func (r *ForwardResult) rateTitle() string {
	if r.Rate <= 0 {
		return ""
	}
	return ", " + commas(int64(r.Rate)) + " msg/s offered"
}

func cpuOf(c *child) (time.Duration, error) {
	if c == nil {
		return 0, nil
	}
	return c.cpu()
}

func (r *ForwardResult) table() Table {
	t := Table{
		Title:  fmt.Sprintf("forward: %s devices, QoS 1, %d-byte payloads, window %d%s, %v (first %v not measured)", commas(int64(r.Devices)), r.PayloadBytes, r.Window, r.rateTitle(), time.Duration(r.DurationSeconds*float64(time.Second)), time.Duration(r.WarmupSeconds*float64(time.Second))),
		Header: []string{"metric"},
	}
	for _, p := range r.Paths {
		t.Header = append(t.Header, p.Path)
	}
	direct := r.Paths[0].DeliveredPerSecond
	row := func(name string, f func(p PathResult) string) {
		cells := []string{name}
		for _, p := range r.Paths {
			cells = append(cells, f(p))
		}
		t.Rows = append(t.Rows, cells)
	}
	row("**delivered end to end, msg/s**", func(p PathResult) string { return "**" + fmtRate(p.DeliveredPerSecond) + "**" })
	row("**ratio to direct**", func(p PathResult) string {
		if direct == 0 {
			return "—"
		}
		return fmt.Sprintf("**%.2f**", p.DeliveredPerSecond/direct)
	})
	row("arriving at the cloud while publishing, msg/s", func(p PathResult) string { return fmtRate(p.WindowPerSecond) })
	row("acknowledged to devices, msg/s", func(p PathResult) string { return fmtRate(p.AckedPerSecond) })
	row("latency device → cloud p50 / p99 / p99.9, ms", func(p PathResult) string {
		return fmt.Sprintf("%s / %s / %s", fmtMS(p.LatencyP50MS*1e6), fmtMS(p.LatencyP99MS*1e6), fmtMS(p.LatencyP999MS*1e6))
	})
	row("latency max, ms", func(p PathResult) string { return fmtMS(p.LatencyMaxMS * 1e6) })
	row("PUBACK latency p50 / p99 / p99.9, ms", func(p PathResult) string {
		return fmt.Sprintf("%s / %s / %s", fmtMS(p.AckP50MS*1e6), fmtMS(p.AckP99MS*1e6), fmtMS(p.AckP999MS*1e6))
	})
	row("PUBACK latency max, ms", func(p PathResult) string { return fmtMS(p.AckMaxMS * 1e6) })
	row("acknowledged / undelivered", func(p PathResult) string {
		return commas(p.Acknowledged) + " / " + commas(p.Undelivered)
	})
	row("duplicates / reordered", func(p PathResult) string { return commas(p.Duplicates) + " / " + commas(p.Reordered) })
	row("drain after publishing stopped", func(p PathResult) string {
		return fmtSeconds(time.Duration(p.DrainSeconds * float64(time.Second)))
	})
	row("ingress broker CPU, s (µs/msg)", func(p PathResult) string {
		if p.BrokerPeakRSSMiB == 0 {
			return "—"
		}
		per := 0.0
		if p.Acknowledged > 0 {
			per = p.BrokerCPUSeconds / float64(p.Acknowledged) * 1e6
		}
		return fmt.Sprintf("%.1f (%.0f)", p.BrokerCPUSeconds, per)
	})
	row("ingress broker CPU, share of one core", func(p PathResult) string {
		if p.BrokerPeakRSSMiB == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f", p.BrokerCores)
	})
	row("ingress broker peak RSS, MiB", func(p PathResult) string {
		if p.BrokerPeakRSSMiB == 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f", p.BrokerPeakRSSMiB)
	})
	row("cloud broker CPU, s", func(p PathResult) string { return fmt.Sprintf("%.1f", p.CloudCPUSeconds) })
	row("spool commits (messages/commit; commit avg / max, ms)", func(p PathResult) string {
		if p.SpoolCommits == 0 {
			return "—"
		}
		return fmt.Sprintf("%s (%.1f; %.1f / %.0f)", commas(int64(p.SpoolCommits)), p.MessagesPerCommit, p.CommitAvgMS, p.CommitMaxMS)
	})
	row("devices connected in", func(p PathResult) string {
		return fmtSeconds(time.Duration(p.ConnectSeconds * float64(time.Second)))
	})
	if r.Rate > 0 {
		t.Notes = append(t.Notes, fmt.Sprintf("Fixed load: every device publishes at %s msg/s (%s msg/s in all), its sends spread over "+
			"the period; latencies count from when a message was due, so a stalled window shows in them.",
			strconv.FormatFloat(r.Rate/float64(r.Devices), 'g', 4, 64), commas(int64(r.Rate))))
	}
	if len(r.Paths) == 3 && r.Paths[2].DeliveredPerSecond > 0 {
		t.Notes = append(t.Notes, fmt.Sprintf("edgegw delivers %.2f× the direct rate and %.2f× the mosquitto bridge's.",
			r.Paths[1].DeliveredPerSecond/max(direct, 1e-9), r.Paths[1].DeliveredPerSecond/r.Paths[2].DeliveredPerSecond))
	}
	t.Notes = append(t.Notes, "End to end: the messages published after the clock started, over the time until the last "+
		"of them reached the cloud (publishing plus drain). Latencies cover every message arriving after the warm-up.")
	t.Notes = append(t.Notes, "direct: devices publish to the cloud broker. edgegw: devices → edgegw (durable spool, fsync before PUBACK; "+
		"one cloud session per device) → cloud broker. mosquitto bridge: devices → local mosquitto (persistence true, "+
		"max_queued_messages 0, bridge `topic # out 1`) → cloud broker. The cloud broker is mosquitto with persistence off; "+
		"a QoS 0 subscriber on it timestamps every arrival. The load generator, the ingress broker and the cloud broker share the machine's CPUs.")
	return t
}
