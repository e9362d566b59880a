package memreport

import (
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

func TestPartOf(t *testing.T) {
	for fn, want := range map[string]string{
		"github.com/eclipse/paho%2emqtt%2egolang.keepalive":       PartPaho,
		"github.com/eclipse/paho.mqtt.golang/packets.ReadPacket":  PartPaho,
		"github.com/mochi-mqtt/server/v2.(*Client).WriteLoop":     PartMochi,
		"github.com/edgegw/edgegw/uplink.(*session).run":          PartUplink,
		"github.com/edgegw/edgegw/uplink/spool.(*Spool).run":      PartSpool,
		"github.com/edgegw/edgegw/localbroker.(*listener).handle": PartLocalBroker,
		"github.com/edgegw/edgegw/gateway.(*Gateway).Run":         PartEdgegw,
		"main.runDaemon":      PartEdgegw,
		"bufio.NewReaderSize": "",
		"runtime.malg":        "",
		"github.com/edgegw/edgegw/internal/memreport.goroutinesByPart":  PartEdgegw,
		"github.com/mochi-mqtt/server/v2/listeners.(*Listeners).Serve":  PartMochi,
		"go.etcd.io/bbolt.(*DB).beginTx":                                "",
		"github.com/eclipse/paho%2emqtt%2egolang.(*client).startCommsW": PartPaho,
	} {
		if got := partOf(fn); got != want {
			t.Errorf("partOf(%q) = %q, want %q", fn, got, want)
		}
	}
}

func TestScaleHeapSample(t *testing.T) {
	if c, s := scaleHeapSample(0, 0, 512<<10); c != 0 || s != 0 {
		t.Errorf("empty sample scaled to %d, %d", c, s)
	}
	if c, s := scaleHeapSample(3, 300, 1); c != 3 || s != 300 {
		t.Errorf("rate 1 (every allocation sampled) scaled to %d, %d", c, s)
	}
	// One sampled 512 KiB object at the default rate stands for
	// 1/(1-e^-1) ≈ 1.58 of them.
	if c, s := scaleHeapSample(1, 512<<10, 512<<10); c != 1 || s < 829000 || s > 829500 {
		t.Errorf("scaled to %d objects, %d bytes; want 1, ≈829 KB", c, s)
	}
}

// TestTake checks that goroutines and heap this test creates are found
// under "edgegw", the part this package belongs to.
func TestTake(t *testing.T) {
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = old }()

	const n = 50
	keep := make([][]byte, n)
	for i := range keep {
		keep[i] = make([]byte, 4096)
	}
	stop := make(chan struct{})
	var wg, started sync.WaitGroup
	started.Add(n)
	for range n {
		wg.Go(func() {
			started.Done()
			<-stop
		})
	}
	started.Wait() // a goroutine not yet started shows only its entry function
	r := Take()
	close(stop)
	wg.Wait()
	runtime.KeepAlive(keep)

	if r.GoroutinesByPart[PartEdgegw] < n {
		t.Errorf("goroutines by part %v: want at least %d under %s", r.GoroutinesByPart, n, PartEdgegw)
	}
	if r.HeapByPart[PartEdgegw] < n*4096 {
		t.Errorf("heap by part %v: want at least %d bytes under %s", r.HeapByPart, n*4096, PartEdgegw)
	}
	if r.DescriptorBytes < n*300 { // a runtime.g is several hundred bytes
		t.Errorf("goroutine descriptors %d bytes for at least %d goroutines", r.DescriptorBytes, n)
	}
	if r.Classes["heap/stacks"] == 0 || r.Classes["total"] == 0 || r.Goroutines < n {
		t.Errorf("runtime figures missing: %+v", r)
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFiles(dir, 3); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"heap-3.pb.gz", "goroutine-3.pb.gz", "memory-3.json"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	r, err := Read(filepath.Join(dir, "memory-3.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Goroutines == 0 || len(r.Classes) == 0 {
		t.Errorf("report read back empty: %+v", r)
	}
}

func TestGoroutinePart(t *testing.T) {
	for _, tt := range []struct {
		funcs []string
		want  string
	}{
		// paho's reader, reading through edgegw's connection wrapper
		{[]string{"runtime.gopark", "github.com/edgegw/edgegw/uplink.(*pooledReader).Read", "github.com/eclipse/paho.mqtt.golang/packets.ReadPacket",
			"github.com/eclipse/paho%2emqtt%2egolang.startIncoming.func1"}, PartPaho},
		// mochi's reader, started by edgegw's listener
		{[]string{"runtime.gopark", "github.com/mochi-mqtt/server/v2.(*Client).Read", "github.com/edgegw/edgegw/localbroker.(*listener).handle"}, PartMochi},
		{[]string{"runtime.gopark", "runtime.selectgo", "github.com/edgegw/edgegw/uplink.(*drainer).wait", "github.com/edgegw/edgegw/uplink.(*Manager).startLocked.func1"}, PartUplink},
		{[]string{"runtime.gopark", "os/signal.loop"}, PartOther},
		{nil, PartOther},
	} {
		if got := GoroutinePart(tt.funcs); got != tt.want {
			t.Errorf("GoroutinePart(%q) = %q, want %q", tt.funcs, got, tt.want)
		}
	}
}
