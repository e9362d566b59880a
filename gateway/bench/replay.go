package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

var replayScenario = scenario{
	Scenario: Scenario{Name: "replay", Summary: "devices × messages spooled while the cloud (simulator) is down, then it returns: " +
		"time to READY with the full spool, drain time and rate unthrottled and with the per-device cap, per-device fairness"},
	defaults: func(o *Options) {
		def(&o.Devices, 1000, 10, o.Quick)
		def(&o.Messages, 1000, 50, o.Quick)
		def(&o.DeviceRate, 30, 30, o.Quick)
		def(&o.ConnectRate, 1000, 1000, o.Quick)
		def(&o.ConnectBurst, 1000, 1000, o.Quick)
	},
	flags: func(o *Options) string {
		return fmt.Sprintf(" -devices %d -messages %d -device-rate %g", o.Devices, o.Messages, o.DeviceRate)
	},
	run: runReplay,
}

// fillWindow is the devices' in-flight window while the spool fills.
const fillWindow = 16

// ReplayResult holds the replay scenario's figures.
type ReplayResult struct {
	Devices  int `json:"devices"`
	Messages int `json:"messagesPerDevice"`
	// FillSeconds and FillPerSecond: devices publishing into edgegw with
	// the cloud down (durable spool, window 16 per device). Both runs
	// start from a copy of the spool this fill produced.
	FillSeconds   float64     `json:"fillSeconds"`
	FillPerSecond float64     `json:"fillPerSecond"`
	SpoolMiB      float64     `json:"spoolMiB"`
	Runs          []ReplayRun `json:"runs"`
}

// ReplayRun is one return of the cloud.
type ReplayRun struct {
	Name string `json:"name"`
	// DeviceRate is the per-device cap in messages/s (0 = none), applied
	// by edgegw and enforced by the simulated cloud.
	DeviceRate float64 `json:"deviceRate"`
	// ReadySeconds: start of edgegw with the full spool, from exec to the
	// local broker accepting connections.
	ReadySeconds float64 `json:"readySeconds"`
	// Drain, measured from the moment the cloud comes back: first message,
	// last message, and the rate over the whole drain.
	FirstSeconds    float64 `json:"firstSeconds"`
	DrainSeconds    float64 `json:"drainSeconds"`
	DrainPerSecond  float64 `json:"drainPerSecond"`
	MinDrainSeconds float64 `json:"minDrainSeconds,omitempty"` // (messages − 1) / cap
	// Per-device finish times (last message of the device at the cloud),
	// seconds after the cloud came back.
	FinishMin   float64 `json:"finishMinSeconds"`
	FinishP50   float64 `json:"finishP50Seconds"`
	FinishP99   float64 `json:"finishP99Seconds"`
	FinishMax   float64 `json:"finishMaxSeconds"`
	Delivered   int64   `json:"delivered"`
	Missing     int64   `json:"missing"`
	Duplicates  int64   `json:"duplicates"`
	Reordered   int64   `json:"reordered"`
	RateDropped int64   `json:"rateDropped"` // messages the cloud dropped for exceeding the cap
	CPUSeconds  float64 `json:"gatewayCpuSeconds"`
	PeakRSSMiB  float64 `json:"gatewayPeakRssMiB"`
	// StopSeconds is how long edgegw took to stop (SIGTERM) after the
	// drain; StopError is set when it did not stop cleanly.
	StopSeconds  float64 `json:"stopSeconds"`
	StopError    string  `json:"stopError,omitempty"`
	RecordMisses int64   `json:"recordMisses,omitempty"` // records the benchmark could not read in time
}

// replayTarget is one run's cloud simulator and gateway state.
type replayTarget struct {
	name string
	rate float64
	sim  *cloudsim.Sim
	g    gatewaySetup
}

// newReplayTarget starts a cloud simulator (down) and prepares a gateway
// state directory for devs.
func newReplayTarget(ctx context.Context, e *env, devs []device, name string, rate float64) (*replayTarget, error) {
	o := e.opts
	simDevs := make([]cloudsim.Device, len(devs))
	for i, d := range devs {
		simDevs[i] = cloudsim.Device{ProductKey: d.ProductKey, DeviceName: d.Name, Secret: d.Secret}
	}
	simRate := float64(cloudsim.RateUnlimited)
	if rate > 0 {
		simRate = rate
	}
	sim, err := cloudsim.New(cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", Devices: simDevs,
		DeviceRate: simRate, MaxRecords: 200_000})
	if err != nil {
		return nil, err
	}
	if err := sim.Start(ctx); err != nil {
		return nil, err
	}
	if err := sim.Down(); err != nil {
		sim.Close()
		return nil, err
	}
	local, err := freePort()
	if err != nil {
		sim.Close()
		return nil, err
	}
	g := gatewaySetup{Dir: e.subdir("replay-" + name), Admin: e.socket("replay-" + name), Local: local, Cloud: sim.Addr(cloudsim.TCP),
		ConnectRate: o.ConnectRate, ConnectBurst: o.ConnectBurst, DeviceRate: rate}
	if err := g.seedRegistry(devs); err == nil {
		err = g.writeConfig()
	}
	if err != nil {
		sim.Close()
		return nil, err
	}
	return &replayTarget{name: name, rate: rate, sim: sim, g: g}, nil
}

func runReplay(ctx context.Context, e *env) (any, []Table, error) {
	o := e.opts
	devs := makeDevices(o.Devices)
	res := &ReplayResult{Devices: o.Devices, Messages: o.Messages}
	var targets []*replayTarget
	defer func() {
		for _, t := range targets {
			t.sim.Close()
		}
	}()
	for _, run := range []struct {
		name string
		rate float64
	}{{"unthrottled", 0}, {"capped", o.DeviceRate}} {
		t, err := newReplayTarget(ctx, e, devs, run.name, run.rate)
		if err != nil {
			return nil, nil, fmt.Errorf("%s run: %w", run.name, err)
		}
		targets = append(targets, t)
	}
	if err := fillSpool(ctx, e, devs, targets[0].g, res); err != nil {
		return nil, nil, err
	}
	for _, t := range targets[1:] {
		if err := copyFile(targets[0].g.spoolPath(), t.g.spoolPath()); err != nil {
			return nil, nil, fmt.Errorf("copy the full spool for the %s run: %w", t.name, err)
		}
	}
	for _, t := range targets {
		r, err := replayDrain(ctx, e, t, len(devs))
		if err != nil {
			return nil, nil, fmt.Errorf("%s run: %w", t.name, err)
		}
		res.Runs = append(res.Runs, r)
	}
	return res, []Table{res.table()}, nil
}

// fillSpool runs edgegw with the cloud down while every device publishes
// its messages, then stops it.
func fillSpool(ctx context.Context, e *env, devs []device, g gatewaySetup, res *ReplayResult) (err error) {
	o := e.opts
	total := int64(len(devs)) * int64(o.Messages)
	gw, _, err := startGateway(ctx, o.Executable, g, e.echo())
	if err != nil {
		return err
	}
	defer gw.kill()
	e.logf("fill: cloud down; %s devices publish %s messages each into edgegw", commas(int64(len(devs))), commas(int64(o.Messages)))
	f, err := connectFleet(ctx, fleetConfig{Addr: g.Local, Devices: devs, Window: fillWindow})
	if err != nil {
		return err
	}
	start := time.Now()
	err = f.publishAll(ctx, nil, int64(o.Messages), 200, 2*time.Minute, 0)
	fill := time.Since(start)
	f.close()
	if err != nil {
		return fmt.Errorf("fill the spool: %w", err)
	}
	if got := f.acked.Load(); got != total {
		return fmt.Errorf("fill the spool: %d of %d messages acknowledged", got, total)
	}
	res.FillSeconds, res.FillPerSecond = fill.Seconds(), float64(total)/fill.Seconds()
	if err := gw.stop(time.Minute); err != nil {
		return fmt.Errorf("fill the spool: %w", err)
	}
	st, err := os.Stat(g.spoolPath())
	if err != nil {
		return fmt.Errorf("fill the spool: %w", err)
	}
	res.SpoolMiB = mib(st.Size())
	e.logf("fill: spooled %s messages in %s (%s msg/s); spool file %.1f MiB", commas(total), fmtSeconds(fill), fmtRate(res.FillPerSecond), res.SpoolMiB)
	return nil
}

// copyFile copies src to dst (created 0600) and syncs it.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// replayDrain starts edgegw on a full spool with the cloud down, brings
// the cloud up and follows the drain.
func replayDrain(ctx context.Context, e *env, t *replayTarget, devices int) (r ReplayRun, err error) {
	o := e.opts
	name := t.name
	r = ReplayRun{Name: name, DeviceRate: t.rate}
	total := int64(devices) * int64(o.Messages)
	gw, ready, err := startGateway(ctx, o.Executable, t.g, e.echo())
	if err != nil {
		return r, err
	}
	defer gw.kill()
	r.ReadySeconds = ready.Seconds()
	e.logf("%s: edgegw started on the full spool: READY (local broker accepting) after %s", name, fmtSeconds(ready))

	// The cloud returns; follow the recorder until every message arrived
	// or nothing moved for a while.
	cpu0, err := gw.cpu()
	if err != nil {
		return r, err
	}
	rec := newReplayRecorder(devices, total)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	var waitErr error
	go func() {
		defer wg.Done()
		waitErr = t.sim.WaitFor(wctx, rec.consume)
	}()
	up := time.Now()
	if err := t.sim.Up(ctx); err != nil {
		cancel()
		wg.Wait()
		return r, err
	}
	e.logf("%s: cloud up; draining", name)
	stalled := watchProgress(wctx, cancel, rec, 20*time.Second)
	wg.Wait()
	if waitErr != nil && !rec.complete() {
		e.logf("%s: drain incomplete: %v (stalled: %v)", name, waitErr, stalled.Load())
	}
	cpu1, err := gw.cpu()
	if err != nil {
		return r, err
	}
	mem, err := gw.mem()
	if err != nil {
		return r, err
	}
	r.CPUSeconds, r.PeakRSSMiB = (cpu1 - cpu0).Seconds(), mib(mem.HWM)
	rec.results(&r, up, total)
	r.RateDropped = t.sim.Stats().RateDropped
	if t.rate > 0 {
		r.MinDrainSeconds = float64(o.Messages-1) / t.rate
	}
	e.logf("%s: drained %s messages in %s (%s msg/s), %d missing", name, commas(r.Delivered),
		fmtSeconds(time.Duration(r.DrainSeconds*float64(time.Second))), fmtRate(r.DrainPerSecond), r.Missing)
	stopStart := time.Now()
	if err := gw.stop(time.Minute); err != nil {
		r.StopError = err.Error()
		e.logf("%s: %v", name, err)
	}
	r.StopSeconds = time.Since(stopStart).Seconds()
	if r.Missing > 0 {
		return r, fmt.Errorf("%d acknowledged messages did not reach the cloud (the cloud dropped %d for rate)", r.Missing, r.RateDropped)
	}
	return r, nil
}

// replayRecorder follows the simulator's recorder incrementally.
type replayRecorder struct {
	total int64

	mu        sync.Mutex
	lastSeq   uint64
	devs      map[string]*replayDevice
	unique    atomic.Int64
	dups      int64
	reordered int64
	misses    int64
	first     time.Time
	last      time.Time
}

type replayDevice struct {
	maxSeq int64
	seen   []uint64
	unique int64
	finish time.Time
}

func newReplayRecorder(devices int, total int64) *replayRecorder {
	return &replayRecorder{total: total, devs: make(map[string]*replayDevice, devices)}
}

func (r *replayRecorder) complete() bool { return r.unique.Load() >= r.total }

// consume is the WaitFor condition: it reads the records it has not seen
// yet and reports whether every message arrived.
func (r *replayRecorder) consume(recs []cloudsim.Record) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := sort.Search(len(recs), func(i int) bool { return recs[i].Seq > r.lastSeq })
	if i < len(recs) && recs[i].Seq > r.lastSeq+1 {
		r.misses += int64(recs[i].Seq - r.lastSeq - 1) // discarded before we read them
	}
	for _, rec := range recs[i:] {
		r.lastSeq = rec.Seq
		seq, _, ok := parsePayload(rec.Payload)
		if !ok || seq <= 0 {
			continue
		}
		d := r.devs[rec.Device.DeviceName]
		if d == nil {
			d = &replayDevice{}
			r.devs[rec.Device.DeviceName] = d
		}
		w, bit := seq/64, uint64(1)<<(seq%64)
		for int(w) >= len(d.seen) {
			d.seen = append(d.seen, 0)
		}
		if d.seen[w]&bit != 0 {
			r.dups++
			continue
		}
		if seq < d.maxSeq {
			r.reordered++
		}
		d.seen[w] |= bit
		d.maxSeq = max(d.maxSeq, seq)
		d.unique++
		d.finish = rec.Time
		if r.first.IsZero() {
			r.first = rec.Time
		}
		r.last = rec.Time
		r.unique.Add(1)
	}
	return r.unique.Load() >= r.total
}

// watchProgress cancels the wait when the count has not moved for limit;
// it returns a flag that is set when it did.
func watchProgress(ctx context.Context, cancel context.CancelFunc, r *replayRecorder, limit time.Duration) *atomic.Bool {
	var stalled atomic.Bool
	go func() {
		last, since := r.unique.Load(), time.Now()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if n := r.unique.Load(); n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > limit {
				stalled.Store(true)
				cancel()
				return
			}
		}
	}()
	return &stalled
}

func (r *replayRecorder) results(out *ReplayRun, up time.Time, total int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out.Delivered = r.unique.Load()
	out.Missing = total - out.Delivered
	out.Duplicates, out.Reordered, out.RecordMisses = r.dups, r.reordered, r.misses
	if r.first.IsZero() {
		return
	}
	out.FirstSeconds = r.first.Sub(up).Seconds()
	out.DrainSeconds = r.last.Sub(up).Seconds()
	out.DrainPerSecond = float64(out.Delivered) / out.DrainSeconds
	var fin []float64
	for _, d := range r.devs {
		fin = append(fin, d.finish.Sub(up).Seconds())
	}
	slices.Sort(fin)
	q := func(p float64) float64 { return fin[min(len(fin)-1, max(0, int(p*float64(len(fin))+0.999999)-1))] }
	out.FinishMin, out.FinishP50, out.FinishP99, out.FinishMax = fin[0], q(0.5), q(0.99), fin[len(fin)-1]
}

func (r *ReplayResult) table() Table {
	t := Table{
		Title:  fmt.Sprintf("replay: %s devices × %s messages (200 bytes) spooled during an outage, then the cloud returns", commas(int64(r.Devices)), commas(int64(r.Messages))),
		Header: []string{"metric"},
	}
	for _, run := range r.Runs {
		h := run.Name
		if run.DeviceRate > 0 {
			h += fmt.Sprintf(" (%g msg/s per device)", run.DeviceRate)
		}
		t.Header = append(t.Header, h)
	}
	row := func(name string, f func(ReplayRun) string) {
		cells := []string{name}
		for _, run := range r.Runs {
			cells = append(cells, f(run))
		}
		t.Rows = append(t.Rows, cells)
	}
	secs := func(s float64) string { return fmtSeconds(time.Duration(s * float64(time.Second))) }
	row("start with the full spool: READY after", func(x ReplayRun) string { return secs(x.ReadySeconds) })
	row("first message at the cloud after it returned", func(x ReplayRun) string { return secs(x.FirstSeconds) })
	row("drain time (all messages at the cloud)", func(x ReplayRun) string {
		s := secs(x.DrainSeconds)
		if x.MinDrainSeconds > 0 {
			s += fmt.Sprintf(" (cap allows ≥ %s)", secs(x.MinDrainSeconds))
		}
		return s
	})
	row("drain rate, msg/s", func(x ReplayRun) string { return fmtRate(x.DrainPerSecond) })
	row("per-device finish min / p50 / p99 / max", func(x ReplayRun) string {
		return fmt.Sprintf("%s / %s / %s / %s", secs(x.FinishMin), secs(x.FinishP50), secs(x.FinishP99), secs(x.FinishMax))
	})
	row("finish spread (max − min)", func(x ReplayRun) string { return secs(x.FinishMax - x.FinishMin) })
	row("delivered / missing", func(x ReplayRun) string { return commas(x.Delivered) + " / " + commas(x.Missing) })
	row("duplicates / reordered", func(x ReplayRun) string { return commas(x.Duplicates) + " / " + commas(x.Reordered) })
	row("dropped by the cloud's rate limit", func(x ReplayRun) string { return commas(x.RateDropped) })
	row("edgegw CPU during the drain, s", func(x ReplayRun) string { return fmt.Sprintf("%.1f", x.CPUSeconds) })
	row("edgegw peak RSS, MiB", func(x ReplayRun) string { return fmt.Sprintf("%.0f", x.PeakRSSMiB) })
	row("edgegw stop (SIGTERM) after the drain", func(x ReplayRun) string {
		if x.StopError != "" {
			return "failed after " + secs(x.StopSeconds) + " (see notes)"
		}
		return secs(x.StopSeconds)
	})
	t.Notes = append(t.Notes, fmt.Sprintf("The spool was filled by the devices through edgegw with the cloud down at %s msg/s "+
		"(durable, %d messages in flight per device; %.1f MiB file); each run starts edgegw on a copy of it.",
		fmtRate(r.FillPerSecond), fillWindow, r.SpoolMiB))
	for _, x := range r.Runs {
		if x.StopError != "" {
			t.Notes = append(t.Notes, fmt.Sprintf("%s run: edgegw did not stop cleanly after the drain: %s", x.Name, x.StopError))
		}
	}
	t.Notes = append(t.Notes, "edgegw runs as a child process with a durable spool; the cloud is the cloud simulator in the benchmark "+
		"process (strict Alibaba dialect; in the capped run it enforces the same per-device limit and counts what exceeds it). "+
		"Times are measured from the moment the cloud listens again, so they include edgegw's reconnect backoff (100 ms–2 s) "+
		"and its connect budget.")
	return t
}
