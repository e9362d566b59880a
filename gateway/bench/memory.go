package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"
	"github.com/edgegw/edgegw/internal/memreport"
)

// Where a gateway's memory goes, measured three ways in the child itself:
//   - the memory report edgegw run writes on SIGUSR1 when
//     EDGEGW_PROFILE_DIR is set (internal/memreport): the runtime's memory
//     classes (runtime/metrics, read first: heap objects, free heap,
//     stacks, the runtime's own), then the live heap by the part of the
//     code that allocated it, after a collection, and the goroutine
//     descriptors;
//   - the goroutine dump of SIGQUIT with GOTRACEBACK=system, which gives
//     every goroutine's frames and stack pointers: its part, and the stack
//     it needs at least (Go exposes no goroutine's stack size).

// MemorySample is one gateway's memory, in bytes.
type MemorySample struct {
	RSS        int64 `json:"rss"`
	Goroutines int   `json:"goroutines"` // counted in the dump
	// Runtime is what the memory report read before its collection (in
	// gateway.status's form; Settles is not set).
	Runtime adminapi.Runtime `json:"runtime"`
	// LiveHeapByPart and DescriptorBytes come from the memory report.
	LiveHeapByPart  map[string]uint64 `json:"liveHeapByPart"`
	DescriptorBytes uint64            `json:"descriptorBytes"`
	// GoroutinesByPart and StackByPart come from the goroutine dump;
	// StackByPart is the stack each part's goroutines need at least.
	GoroutinesByPart map[string]int   `json:"goroutinesByPart"`
	StackByPart      map[string]int64 `json:"stackByPart"`
}

// profileDir is where a gateway child writes its memory reports.
func (g gatewaySetup) profileDir() string { return filepath.Join(g.Dir, "profiles") }

// memReport asks a gateway started with profiles for memory report n (1,
// 2, …) and reads it. Writing it collects garbage twice: measure RSS and
// the runtime before.
func (c *child) memReport(ctx context.Context, dir string, n int) (memreport.Report, error) {
	if err := c.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return memreport.Report{}, fmt.Errorf("ask %s for a memory report: %w", c.name, err)
	}
	path := filepath.Join(dir, fmt.Sprintf("memory-%d.json", n))
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(path); err == nil {
			return memreport.Read(path)
		}
		if c.exited() {
			return memreport.Report{}, fmt.Errorf("%s exited before writing its memory report: %v", c.name, c.err)
		}
		if time.Now().After(deadline) {
			return memreport.Report{}, fmt.Errorf("%s wrote no memory report within 2 min (EDGEGW_PROFILE_DIR)", c.name)
		}
		select {
		case <-ctx.Done():
			return memreport.Report{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sampleMemory measures a running gateway child and ends it (the
// goroutine dump makes it exit): RSS first, then the memory report, then
// the dump. Nothing else is asked of the child on the way, so that nothing
// the measurement allocates is measured.
func sampleMemory(ctx context.Context, gw *child, g gatewaySetup) (MemorySample, memreport.Report, error) {
	var s MemorySample
	m, err := gw.mem()
	if err != nil {
		return s, memreport.Report{}, err
	}
	s.RSS = m.RSS
	r, err := gw.memReport(ctx, g.profileDir(), 1)
	if err != nil {
		return s, r, err
	}
	s.Runtime = runtimeOf(r)
	s.LiveHeapByPart, s.DescriptorBytes = r.HeapByPart, r.DescriptorBytes
	d, err := gw.dumpGoroutines(2 * time.Minute)
	if err != nil {
		return s, r, err
	}
	if d.withSP == 0 {
		return s, r, errors.New("the goroutine dump has no stack pointers (GOTRACEBACK=system)")
	}
	s.Goroutines, s.GoroutinesByPart, s.StackByPart = d.count, d.byPart, d.stackByPart
	return s, r, nil
}

// runtimeOf puts a memory report's classes in gateway.status's form.
func runtimeOf(r memreport.Report) adminapi.Runtime {
	c := r.Classes
	rt := adminapi.Runtime{
		Goroutines:        r.Goroutines,
		HeapObjectsBytes:  c["heap/objects"],
		HeapFreeBytes:     c["heap/free"] + c["heap/unused"],
		HeapReleasedBytes: c["heap/released"],
		StackBytes:        c["heap/stacks"] + c["os-stacks"],
		TotalBytes:        c["total"],
		GCCycles:          r.GCCycles,
		AllocBytes:        r.AllocBytes,
	}
	rt.OtherBytes = rt.TotalBytes - min(rt.TotalBytes, rt.HeapObjectsBytes+rt.HeapFreeBytes+rt.HeapReleasedBytes+rt.StackBytes)
	return rt
}

// settleWatch follows the gateway's log for its settles (gateway/memory.go
// logs one at info each time it returns a burst's memory).
type settleWatch struct {
	ch chan settleEvent
}

type settleEvent struct {
	at        time.Time // the gateway's clock
	allocated uint64    // heap allocated since the gateway started
}

const settleMsg = `msg="returned memory after a burst of connections"`

func newSettleWatch() *settleWatch { return &settleWatch{ch: make(chan settleEvent, 16)} }

// line is the child's line watcher (slog's text format).
func (w *settleWatch) line(s string) {
	if !strings.Contains(s, settleMsg) {
		return
	}
	var ev settleEvent
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "time":
			ev.at, _ = time.Parse(time.RFC3339Nano, v)
		case "allocated":
			ev.allocated, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	select {
	case w.ch <- ev:
	default:
	}
}

// wait returns the first settle after since, or false after limit.
func (w *settleWatch) wait(ctx context.Context, since time.Time, limit time.Duration) (settleEvent, bool, error) {
	t := time.NewTimer(limit)
	defer t.Stop()
	for {
		select {
		case ev := <-w.ch:
			if ev.at.After(since) {
				return ev, true, nil
			}
		case <-t.C:
			return settleEvent{}, false, nil
		case <-ctx.Done():
			return settleEvent{}, false, ctx.Err()
		}
	}
}

// goroutineDump is what a SIGQUIT dump tells: goroutines by part and,
// with GOTRACEBACK=system, the stack they need.
type goroutineDump struct {
	count       int
	byPart      map[string]int
	stackByPart map[string]int64
	withSP      int // goroutines whose frames carried stack pointers
}

// dumpedGoroutine is one goroutine of a dump, as it is read.
type dumpedGoroutine struct {
	started bool
	system  bool // goroutine 0: an OS thread's own stack
	funcs   []string
	sp, fp  uint64 // innermost frame's stack pointer, outermost frame's frame pointer
	haveSP  bool
}

func (d *goroutineDump) add(g dumpedGoroutine) {
	if !g.started || g.system {
		return
	}
	if d.byPart == nil {
		d.byPart, d.stackByPart = map[string]int{}, map[string]int64{}
	}
	part := memreport.GoroutinePart(g.funcs)
	d.byPart[part]++
	if g.haveSP && g.fp > g.sp {
		d.withSP++
		d.stackByPart[part] += stackNeeded(g.sp, g.fp)
	}
}

// frame takes one line of a goroutine's traceback and reports whether it
// was one: a function ("pkg.(*T).m(0x1, …)") or its location line
// ("\t/file.go:12 +0x3f fp=0x… sp=0x… pc=0x…").
func (g *dumpedGoroutine) frame(s string) bool {
	if !g.started {
		return false
	}
	if strings.HasPrefix(s, "\t") {
		if i := strings.Index(s, " fp=0x"); i >= 0 {
			f := strings.Fields(s[i:])
			if len(f) >= 2 && strings.HasPrefix(f[1], "sp=0x") {
				fp, err1 := strconv.ParseUint(strings.TrimPrefix(f[0], "fp=0x"), 16, 64)
				sp, err2 := strconv.ParseUint(strings.TrimPrefix(f[1], "sp=0x"), 16, 64)
				if err1 == nil && err2 == nil {
					if !g.haveSP {
						g.sp, g.haveSP = sp, true
					}
					g.fp = fp
				}
			}
		}
		return true
	}
	if strings.HasPrefix(s, "created by ") {
		return true
	}
	if name := funcName(s); name != "" {
		g.funcs = append(g.funcs, name)
		return true
	}
	return false
}

// funcName returns the function of a traceback line "name(args)", or "".
func funcName(s string) string {
	if !strings.HasSuffix(s, ")") {
		return ""
	}
	depth := 0
	for i := len(s) - 1; i >= 0; i-- {
		switch s[i] {
		case ')':
			depth++
		case '(':
			depth--
			if depth == 0 {
				if i == 0 || strings.ContainsAny(s[:i], " \t") {
					return ""
				}
				return s[:i]
			}
		}
	}
	return ""
}

// stackGuardApprox is what a goroutine needs beyond its deepest frame
// before Go grows its stack: the stack guard (928 bytes on linux/amd64)
// less the small frames allowed below it (128).
const stackGuardApprox = 800

// stackNeeded is the smallest stack (a power of two, at least 2 KiB) that
// holds a goroutine blocked at stack pointer sp whose outermost frame
// pointer is fp: a lower bound of the stack it has (one grown during a
// handshake and never shrunk back is larger).
func stackNeeded(sp, fp uint64) int64 {
	hi := (fp + 2047) &^ 2047 // stacks are 2 KiB aligned; the top frame sits just below the top
	used := hi - sp
	size := uint64(2048)
	for size < used+stackGuardApprox {
		size *= 2
	}
	return int64(size)
}

// PartCost is what one part of the code costs per device.
type PartCost struct {
	Part       string  `json:"part"`
	Goroutines float64 `json:"goroutines"`
	HeapKiB    float64 `json:"heapKiB"`  // live heap, including its goroutines' descriptors
	StackKiB   float64 `json:"stackKiB"` // the stack its goroutines need at least
}

// TotalKiB is the part's heap and stacks.
func (p PartCost) TotalKiB() float64 { return p.HeapKiB + p.StackKiB }

// Breakdown is where each KiB of RSS per device goes: the parts of the
// code, then the runtime's overhead. The figures add up to RSSKiB.
type Breakdown struct {
	RSSKiB float64    `json:"rssKiB"`
	Parts  []PartCost `json:"parts"` // paho, mochi, edgegw's own, other code
	// StackSlackKiB: stacks beyond what the goroutines need (grown during
	// a connect and never shrunk back, free room in stack spans).
	StackSlackKiB float64 `json:"stackSlackKiB"`
	// GarbageKiB: heap objects not yet collected.
	GarbageKiB float64 `json:"garbageKiB"`
	// FreeHeapKiB: heap held without objects (free room in spans, free
	// pages not yet returned to the OS).
	FreeHeapKiB float64 `json:"freeHeapKiB"`
	// RuntimeKiB: the runtime's own metadata.
	RuntimeKiB float64 `json:"runtimeKiB"`
	// OutsideKiB: RSS outside the Go runtime's resident memory.
	OutsideKiB float64 `json:"outsideKiB"`
}

// The parts of the breakdown, each a set of memreport parts.
var breakdownParts = []struct {
	name  string
	parts []string
}{
	{"paho.mqtt.golang (cloud sessions)", []string{memreport.PartPaho}},
	{"mochi (local broker)", []string{memreport.PartMochi}},
	{"edgegw's own code", memreport.EdgegwParts},
	{"other code (standard library, runtime)", []string{memreport.PartOther}},
}

// breakdown is (fleet − baseline) / n, by part.
func breakdown(f, b MemorySample, n int) Breakdown {
	per := func(v float64) float64 { return v / float64(n) / 1024 }
	br := Breakdown{RSSKiB: per(float64(f.RSS - b.RSS))}
	gAll := 0
	for p, c := range f.GoroutinesByPart {
		gAll += c - b.GoroutinesByPart[p]
	}
	desc := float64(f.DescriptorBytes) - float64(b.DescriptorBytes)
	var live, stacks float64
	for _, bp := range breakdownParts {
		pc := PartCost{Part: bp.name}
		var heap, stack, g float64
		for _, p := range bp.parts {
			heap += float64(f.LiveHeapByPart[p]) - float64(b.LiveHeapByPart[p])
			stack += float64(f.StackByPart[p] - b.StackByPart[p])
			g += float64(f.GoroutinesByPart[p] - b.GoroutinesByPart[p])
		}
		if gAll > 0 {
			heap += desc * g / float64(gAll) // descriptors by goroutine count
		}
		live += heap
		stacks += stack
		pc.Goroutines, pc.HeapKiB, pc.StackKiB = g/float64(n), per(heap), per(stack)
		br.Parts = append(br.Parts, pc)
	}
	if gAll <= 0 {
		live += desc
	}
	fr, brt := f.Runtime, b.Runtime
	d := func(a, b uint64) float64 { return float64(a) - float64(b) }
	br.StackSlackKiB = per(d(fr.StackBytes, brt.StackBytes) - stacks)
	br.GarbageKiB = per(d(fr.HeapObjectsBytes, brt.HeapObjectsBytes) - live)
	br.FreeHeapKiB = per(d(fr.HeapFreeBytes, brt.HeapFreeBytes))
	br.RuntimeKiB = per(d(fr.OtherBytes, brt.OtherBytes))
	resident := d(fr.TotalBytes-fr.HeapReleasedBytes, brt.TotalBytes-brt.HeapReleasedBytes)
	br.OutsideKiB = br.RSSKiB - per(resident)
	return br
}
