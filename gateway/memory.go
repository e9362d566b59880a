package gateway

import (
	"cmp"
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
)

// Returning memory after bursts of connections.
//
// Bringing thousands of devices up — the cloud sessions at start, the
// devices reconnecting after a power cut at the plant, every session after
// a cloud outage — allocates far more than the sessions keep: signatures,
// registry reads, TLS handshakes, paho's and mochi's setup, goroutine stacks
// grown on the way. The Go runtime collects that garbage only once the heap
// has doubled (GOGC) and gives freed pages back to the OS only down to its
// heap goal, so an idle gateway would go on holding the burst's peak. Once a
// burst is over — Options.SettleMinBurst connections (local and cloud)
// since the last settle, then Options.SettleQuiet with at most one new
// connection a second — settleMemory collects the garbage and returns the
// free pages to the OS, once (debug.FreeOSMemory: one full collection, a
// fraction of a second of CPU at 10,000 devices).

const (
	defaultSettleQuiet    = 5 * time.Second
	defaultSettleMinBurst = 32
)

// settler decides when a burst of connections is over.
type settler struct {
	minBurst   uint64
	quiet      time.Duration
	base       uint64 // connections at the last settle
	last       uint64 // connections at the last observation
	quietSince time.Time
}

// observe takes the number of connections made so far, n, at now (called
// about once a second) and reports whether to settle now.
func (s *settler) observe(n uint64, now time.Time) bool {
	if n-s.last > 1 || s.quietSince.IsZero() {
		s.quietSince = now
	}
	s.last = n
	if n-s.base < s.minBurst || now.Sub(s.quietSince) < s.quiet {
		return false
	}
	s.base = n
	return true
}

// settleMemory returns memory after each burst of connections until ctx
// ends.
func (g *Gateway) settleMemory(ctx context.Context) error {
	quiet := cmp.Or(g.opts.SettleQuiet, defaultSettleQuiet)
	s := settler{minBurst: uint64(cmp.Or(g.opts.SettleMinBurst, defaultSettleMinBurst)), quiet: quiet}
	tick := time.NewTicker(min(time.Second, quiet/5))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			if s.observe(g.connects(), now) {
				g.settle()
			}
		}
	}
}

// connects is the number of local and cloud connections made so far.
func (g *Gateway) connects() uint64 {
	g.mu.Lock()
	b, m := g.broker, g.mgr
	g.mu.Unlock()
	if b == nil || m == nil {
		return 0
	}
	return b.Stats().Connects + m.Connects()
}

// settle collects the garbage and returns free memory to the OS.
func (g *Gateway) settle() {
	before := runtimeStatus()
	start := time.Now()
	debug.FreeOSMemory()
	took := time.Since(start)
	after := runtimeStatus()
	g.settles.Add(1)
	g.lastSettle.Store(time.Now().UnixNano())
	g.log.Info("returned memory after a burst of connections",
		"heap_before", before.HeapObjectsBytes, "heap_after", after.HeapObjectsBytes,
		"released", after.HeapReleasedBytes-min(before.HeapReleasedBytes, after.HeapReleasedBytes), "took", took.Round(time.Millisecond),
		"allocated", after.AllocBytes) // the heap allocated since the start: edgegw bench measures the idle rate from here
}

// runtimeStatus reads the Go runtime's view of the process.
func runtimeStatus() adminapi.Runtime {
	const classes = "/memory/classes/"
	s := []metrics.Sample{
		{Name: "/sched/goroutines:goroutines"},
		{Name: classes + "heap/objects:bytes"},
		{Name: classes + "heap/unused:bytes"},
		{Name: classes + "heap/free:bytes"},
		{Name: classes + "heap/released:bytes"},
		{Name: classes + "heap/stacks:bytes"},
		{Name: classes + "os-stacks:bytes"},
		{Name: classes + "total:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/gc/heap/allocs:bytes"},
	}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	r := adminapi.Runtime{
		Goroutines:        int(v(0)),
		HeapObjectsBytes:  v(1),
		HeapFreeBytes:     v(2) + v(3),
		HeapReleasedBytes: v(4),
		StackBytes:        v(5) + v(6),
		TotalBytes:        v(7),
		GCCycles:          v(8),
		AllocBytes:        v(9),
	}
	r.OtherBytes = r.TotalBytes - min(r.TotalBytes, r.HeapObjectsBytes+r.HeapFreeBytes+r.HeapReleasedBytes+r.StackBytes)
	return r
}

// runtimeStatus is the runtime part of gateway.status.
func (g *Gateway) runtimeStatus() adminapi.Runtime {
	r := runtimeStatus()
	r.Settles = g.settles.Load()
	if ns := g.lastSettle.Load(); ns != 0 {
		r.LastSettle = time.Unix(0, ns).UTC()
	}
	return r
}
