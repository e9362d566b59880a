// Package memreport says where a process's memory and goroutines go: the
// Go runtime's memory classes (runtime/metrics), and the in-use heap and
// the goroutines attributed to the code that owns them — paho (the cloud
// client), mochi (the local broker), edgegw's own packages, the rest.
//
// It is a debugging aid: `edgegw run` writes a report, with heap and
// goroutine profiles, on SIGUSR1 when EDGEGW_PROFILE_DIR is set
// (cmd/edgegw/run.go), and `edgegw bench sessions` reads it to print the
// memory per device by part. Nothing in the daemon's normal operation
// calls it.
package memreport

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"sort"
	"strings"
	"time"
)

// The parts memory and goroutines are attributed to.
const (
	PartPaho        = "paho"        // github.com/eclipse/paho.mqtt.golang
	PartMochi       = "mochi"       // github.com/mochi-mqtt/server/v2
	PartUplink      = "uplink"      // edgegw/uplink (spool excluded)
	PartSpool       = "spool"       // edgegw/uplink/spool
	PartLocalBroker = "localbroker" // edgegw/localbroker
	PartEdgegw      = "edgegw"      // edgegw's other packages (gateway, secrets, cmd)
	PartOther       = "other"       // the runtime, the standard library alone, other modules
)

// EdgegwParts are the parts that are edgegw's own code.
var EdgegwParts = []string{PartUplink, PartSpool, PartLocalBroker, PartEdgegw}

const module = "github.com/edgegw/edgegw/"

// partOf returns the part a function (as runtime.Frame.Function names it)
// belongs to, or "" for the runtime, the standard library and other
// modules.
func partOf(fn string) string {
	switch {
	case strings.HasPrefix(fn, "github.com/eclipse/paho.mqtt.golang"),
		strings.HasPrefix(fn, "github.com/eclipse/paho%2emqtt%2egolang"): // the symbol escapes the dots
		return PartPaho
	case strings.HasPrefix(fn, "github.com/mochi-mqtt/server/v2"):
		return PartMochi
	case strings.HasPrefix(fn, module+"uplink/spool"):
		return PartSpool
	case strings.HasPrefix(fn, module+"uplink"):
		return PartUplink
	case strings.HasPrefix(fn, module+"localbroker"):
		return PartLocalBroker
	case strings.HasPrefix(fn, module), strings.HasPrefix(fn, "main."):
		return PartEdgegw
	}
	return ""
}

// heapPart attributes an allocation to the innermost frame of a known part:
// the code that asked for the memory (bufio.NewReaderSize called from
// uplink is uplink's; a hook mochi calls allocates as localbroker).
func heapPart(stk []uintptr) string {
	frames := runtime.CallersFrames(stk)
	for {
		f, more := frames.Next()
		if p := partOf(f.Function); p != "" {
			return p
		}
		if !more {
			return PartOther
		}
	}
}

// goroutinePart attributes a goroutine to the part it runs in (see
// GoroutinePart).
func goroutinePart(stk []uintptr) string {
	var funcs []string
	frames := runtime.CallersFrames(stk)
	for {
		f, more := frames.Next()
		funcs = append(funcs, f.Function)
		if !more {
			return GoroutinePart(funcs)
		}
	}
}

// GoroutinePart attributes a goroutine, given the functions on its stack
// (innermost first, as runtime.Frame.Function or a traceback names them),
// to the library it runs in: a goroutine with paho frames is paho's even
// while it reads through an edgegw net.Conn wrapper; then mochi; then the
// innermost edgegw part; else PartOther.
func GoroutinePart(funcs []string) string {
	own := ""
	mochi := false
	for _, fn := range funcs {
		switch p := partOf(fn); p {
		case PartPaho:
			return PartPaho
		case PartMochi:
			mochi = true
		case "":
		default:
			if own == "" {
				own = p
			}
		}
	}
	switch {
	case mochi:
		return PartMochi
	case own != "":
		return own
	}
	return PartOther
}

// Report is a snapshot of a process's memory.
type Report struct {
	Time       time.Time `json:"time"`
	Goroutines int       `json:"goroutines"`
	GCCycles   uint64    `json:"gcCycles"`
	// StackStartBytes is the stack new goroutines start with (Go adapts
	// it to the average stack scanned, GODEBUG adaptivestackstart).
	StackStartBytes uint64 `json:"stackStartBytes"`
	// AllocBytes is the heap allocated since the start (for rates);
	// HeapLiveBytes the heap marked live by the last GC; HeapGoalBytes the
	// heap size at which the next GC ends.
	AllocBytes    uint64 `json:"allocBytes"`
	HeapLiveBytes uint64 `json:"heapLiveBytes"`
	HeapGoalBytes uint64 `json:"heapGoalBytes"`
	// Classes are runtime/metrics' /memory/classes/… in bytes, keyed by
	// the name without the prefix and unit ("heap/objects", "total").
	Classes map[string]uint64 `json:"classes"`
	// HeapByPart is the live heap by part, estimated from the heap
	// profile (sampled every HeapProfileRate bytes, scaled as pprof does)
	// after a garbage collection.
	HeapByPart      map[string]uint64 `json:"heapByPart"`
	HeapProfileRate int               `json:"heapProfileRate"`
	// DescriptorBytes is the live heap of goroutine descriptors (the
	// runtime's g structures, which it keeps for reuse after a goroutine
	// ends); it is not in HeapByPart.
	DescriptorBytes uint64 `json:"descriptorBytes"`
	// GoroutinesByPart counts goroutines by part.
	GoroutinesByPart map[string]int `json:"goroutinesByPart"`
	// TopHeap are the largest allocation sites by in-use bytes.
	TopHeap []Site `json:"topHeap"`
}

// Site is one allocation site: the innermost frame of a known part.
type Site struct {
	Part     string `json:"part"`
	Function string `json:"function"`
	Bytes    uint64 `json:"bytes"`
	Objects  uint64 `json:"objects"`
}

// Take returns a report of the process now. The memory classes and the
// goroutines are read first, as they are; then the heap is garbage
// collected (twice: the heap profile lags a cycle) so that HeapByPart
// shows what is live. It stops the world briefly for the profiles.
func Take() Report {
	r := Report{
		Time:             time.Now(),
		Goroutines:       runtime.NumGoroutine(),
		Classes:          map[string]uint64{},
		HeapByPart:       map[string]uint64{},
		GoroutinesByPart: map[string]int{},
		HeapProfileRate:  runtime.MemProfileRate,
	}
	readMetrics(&r)
	goroutinesByPart(&r)
	runtime.GC()
	runtime.GC()
	heapByPart(&r)
	return r
}

func readMetrics(r *Report) {
	const prefix = "/memory/classes/"
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, prefix) && d.Kind == metrics.KindUint64 {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	samples = append(samples,
		metrics.Sample{Name: "/gc/cycles/total:gc-cycles"},
		metrics.Sample{Name: "/gc/stack/starting-size:bytes"},
		metrics.Sample{Name: "/gc/heap/allocs:bytes"},
		metrics.Sample{Name: "/gc/heap/live:bytes"},
		metrics.Sample{Name: "/gc/heap/goal:bytes"})
	metrics.Read(samples)
	for _, s := range samples {
		if s.Value.Kind() != metrics.KindUint64 {
			continue
		}
		v := s.Value.Uint64()
		switch s.Name {
		case "/gc/cycles/total:gc-cycles":
			r.GCCycles = v
		case "/gc/stack/starting-size:bytes":
			r.StackStartBytes = v
		case "/gc/heap/allocs:bytes":
			r.AllocBytes = v
		case "/gc/heap/live:bytes":
			r.HeapLiveBytes = v
		case "/gc/heap/goal:bytes":
			r.HeapGoalBytes = v
		default:
			name, _, _ := strings.Cut(strings.TrimPrefix(s.Name, prefix), ":")
			r.Classes[name] = v
		}
	}
}

func heapByPart(r *Report) {
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, false)
	for {
		recs = make([]runtime.MemProfileRecord, n+50)
		var ok bool
		if n, ok = runtime.MemProfile(recs, false); ok {
			recs = recs[:n]
			break
		}
	}
	type key struct{ part, fn string }
	sites := map[key]*Site{}
	for i := range recs {
		rec := &recs[i]
		objs, bytes := scaleHeapSample(rec.InUseObjects(), rec.InUseBytes(), int64(r.HeapProfileRate))
		if bytes == 0 {
			continue
		}
		stk := rec.Stack()
		if isDescriptor(stk) {
			r.DescriptorBytes += uint64(bytes)
			continue
		}
		part := heapPart(stk)
		r.HeapByPart[part] += uint64(bytes)
		fn := siteFunction(stk, part)
		s := sites[key{part, fn}]
		if s == nil {
			s = &Site{Part: part, Function: fn}
			sites[key{part, fn}] = s
		}
		s.Bytes += uint64(bytes)
		s.Objects += uint64(objs)
	}
	for _, s := range sites {
		r.TopHeap = append(r.TopHeap, *s)
	}
	sort.Slice(r.TopHeap, func(i, j int) bool { return r.TopHeap[i].Bytes > r.TopHeap[j].Bytes })
	if len(r.TopHeap) > 25 {
		r.TopHeap = r.TopHeap[:25]
	}
}

// isDescriptor reports whether an allocation is a goroutine descriptor.
func isDescriptor(stk []uintptr) bool {
	frames := runtime.CallersFrames(stk)
	for {
		f, more := frames.Next()
		if f.Function == "runtime.malg" {
			return true
		}
		if !more {
			return false
		}
	}
}

// siteFunction names an allocation site: the innermost frame of part (or
// the innermost frame outside the runtime, for PartOther; the runtime's
// own allocations, such as goroutine descriptors, show runtime frames
// only).
func siteFunction(stk []uintptr, part string) string {
	frames := runtime.CallersFrames(stk)
	first, rt := "", ""
	for {
		f, more := frames.Next()
		if rt == "" {
			rt = f.Function
		}
		if first == "" && !strings.HasPrefix(f.Function, "runtime.") {
			first = f.Function
		}
		if part != PartOther && partOf(f.Function) == part {
			return f.Function
		}
		if !more {
			if first == "" {
				return rt
			}
			return first
		}
	}
}

// scaleHeapSample turns a heap profile record's sampled figures into an
// estimate of the real ones, as runtime/pprof does.
func scaleHeapSample(count, size, rate int64) (int64, int64) {
	if count == 0 || size == 0 {
		return 0, 0
	}
	if rate <= 1 {
		return count, size
	}
	avg := float64(size) / float64(count)
	scale := 1 / (1 - math.Exp(-avg/float64(rate)))
	return int64(float64(count) * scale), int64(float64(size) * scale)
}

// Goroutines counts the goroutines by part now (without the rest of Take's
// work, and without collecting garbage).
func Goroutines() map[string]int {
	r := Report{GoroutinesByPart: map[string]int{}}
	goroutinesByPart(&r)
	return r.GoroutinesByPart
}

func goroutinesByPart(r *Report) {
	var recs []runtime.StackRecord
	n, _ := runtime.GoroutineProfile(nil)
	for {
		recs = make([]runtime.StackRecord, n+n/10+10)
		var ok bool
		if n, ok = runtime.GoroutineProfile(recs); ok {
			recs = recs[:n]
			break
		}
	}
	for i := range recs {
		r.GoroutinesByPart[goroutinePart(recs[i].Stack())]++
	}
}

// WriteFiles writes a report (memory-N.json) and the heap and goroutine
// profiles (heap-N.pb.gz, goroutine-N.pb.gz, for go tool pprof) to dir.
// The report is renamed into place last, so a reader that sees it sees
// all three.
func WriteFiles(dir string, n int) error {
	r := Take()
	for _, p := range []string{"heap", "goroutine"} {
		if err := writeFile(filepath.Join(dir, fmt.Sprintf("%s-%d.pb.gz", p, n)), func(f *os.File) error {
			return pprof.Lookup(p).WriteTo(f, 0)
		}); err != nil {
			return err
		}
	}
	return writeFile(filepath.Join(dir, fmt.Sprintf("memory-%d.json", n)), func(f *os.File) error {
		enc := json.NewEncoder(f)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	})
}

func writeFile(path string, write func(*os.File) error) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Read reads a report WriteFiles wrote.
func Read(path string) (Report, error) {
	var r Report
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("read memory report %s: %w", path, err)
	}
	return r, nil
}
