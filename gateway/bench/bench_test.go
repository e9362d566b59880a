package bench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/adminapi"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// buildEdgegw compiles cmd/edgegw once per test binary (without the race
// detector: it is the system under measurement, not under test here).
var buildEdgegw = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "edgegw-bench-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "edgegw")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/edgegw/edgegw/cmd/edgegw").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v: %s", err, out)
	}
	return bin, nil
})

func TestMain(m *testing.M) {
	code := m.Run()
	if bin, err := buildEdgegw(); err == nil {
		os.RemoveAll(filepath.Dir(bin))
	}
	os.Exit(code)
}

// needMosquitto skips (or, with EDGEGW_REQUIRE_PEERS=1, fails) when
// Debian's mosquitto is not installed.
func needMosquitto(t *testing.T) {
	t.Helper()
	if _, err := FindMosquitto(""); err != nil {
		if os.Getenv("EDGEGW_REQUIRE_PEERS") == "1" {
			t.Fatalf("%v and EDGEGW_REQUIRE_PEERS=1", err)
		}
		t.Skipf("%v (set EDGEGW_REQUIRE_PEERS=1 to make this a failure)", err)
	}
}

// TestScenariosQuick runs every scenario in quick mode through the same
// entry point as "edgegw bench", and checks the figures are complete and
// the guarantees held: nothing acknowledged was lost or reordered, the
// connect budget was respected.
func TestScenariosQuick(t *testing.T) {
	bin, err := buildEdgegw()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		mosquitto bool
		opts      Options
		check     func(t *testing.T, r *Report)
	}{
		{"forward", true, Options{Duration: time.Second}, checkForward},
		{"forward", true, Options{Duration: 2 * time.Second, Rate: 200}, checkForwardRate},
		{"replay", false, Options{}, checkReplay},
		{"sessions", false, Options{Idle: 500 * time.Millisecond}, checkSessions},
		{"storm", false, Options{Devices: 100, ConnectRate: 40, ConnectBurst: 5}, checkStorm},
	}
	tested := map[string]bool{}
	for _, tt := range tests {
		tested[tt.name] = true
	}
	if got := len(Scenarios()); got != len(tested) {
		t.Fatalf("%d scenarios, %d tested", got, len(tested))
	}
	for _, tt := range tests {
		name := tt.name
		if tt.opts.Rate > 0 {
			name += "-rate"
		}
		t.Run(name, func(t *testing.T) {
			if tt.mosquitto {
				needMosquitto(t)
			}
			var progress bytes.Buffer
			o := tt.opts
			o.Executable, o.Quick, o.WorkDir, o.Progress = bin, true, t.TempDir(), &lockedBuffer{b: &progress}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			r, err := Run(ctx, tt.name, o)
			if err != nil {
				t.Fatalf("%v\nprogress:\n%s", err, progress.String())
			}
			if !strings.HasPrefix(r.Command, "edgegw bench "+tt.name+" ") || !strings.HasSuffix(r.Command, " -quick") {
				t.Errorf("command %q", r.Command)
			}
			if r.Machine.CPUs < 1 || r.Machine.MemoryGiB <= 0 {
				t.Errorf("machine %+v", r.Machine)
			}
			var md bytes.Buffer
			if err := r.WriteMarkdown(&md); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(md.String(), "| metric |") || !strings.Contains(md.String(), r.Command) {
				t.Errorf("markdown:\n%s", md.String())
			}
			js, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var back map[string]any
			if err := json.Unmarshal(js, &back); err != nil || back["result"] == nil {
				t.Errorf("JSON report %s: %v", js, err)
			}
			tt.check(t, r)
			t.Logf("\n%s", md.String())
		})
	}
}

func checkForward(t *testing.T, r *Report) {
	res := r.Result.(*ForwardResult)
	if len(res.Paths) != 3 {
		t.Fatalf("paths %+v", res.Paths)
	}
	for _, p := range res.Paths {
		if p.DeliveredPerSecond <= 0 || p.WindowPerSecond <= 0 || p.AckedPerSecond <= 0 || p.Samples == 0 || p.LatencyP50MS <= 0 || p.LatencyP99MS < p.LatencyP50MS ||
			p.AckP50MS <= 0 || p.AckP99MS < p.AckP50MS || p.AckMaxMS < p.AckP999MS {
			t.Errorf("%s: incomplete figures %+v", p.Path, p)
		}
		if p.Undelivered != 0 || p.Reordered != 0 {
			t.Errorf("%s: %d acknowledged messages undelivered, %d reordered", p.Path, p.Undelivered, p.Reordered)
		}
		if (p.Path == "edgegw") != (p.SpoolCommits > 0 && p.MessagesPerCommit > 0) {
			t.Errorf("%s: spool commits %d (%.1f messages each)", p.Path, p.SpoolCommits, p.MessagesPerCommit)
		}
		if (p.Path == "direct") != (p.BrokerPeakRSSMiB == 0) {
			t.Errorf("%s: broker RSS %.1f MiB", p.Path, p.BrokerPeakRSSMiB)
		}
	}
}

func checkReplay(t *testing.T, r *Report) {
	res := r.Result.(*ReplayResult)
	if len(res.Runs) != 2 || res.FillPerSecond <= 0 || res.SpoolMiB <= 0 {
		t.Fatalf("result %+v", res)
	}
	want := int64(res.Devices * res.Messages)
	for _, x := range res.Runs {
		if x.Delivered != want || x.Missing != 0 || x.Reordered != 0 || x.RateDropped != 0 || x.RecordMisses != 0 {
			t.Errorf("%s: %+v", x.Name, x)
		}
		if x.ReadySeconds <= 0 || x.DrainSeconds <= 0 || x.FinishMax < x.FinishMin || x.StopError != "" {
			t.Errorf("%s: %+v", x.Name, x)
		}
	}
	if c := res.Runs[1]; c.DeviceRate <= 0 || c.DrainSeconds < c.MinDrainSeconds*0.9 {
		t.Errorf("capped run drained faster than its cap allows: %+v", c)
	}
}

func checkSessions(t *testing.T, r *Report) {
	res := r.Result.(*SessionsResult)
	// Quick mode measures both transports, so the TLS path keeps working.
	want := []string{transportTCP, transportTLS}
	if !slices.Equal(res.Transports, want) || len(res.Baselines) != 2 || len(res.Fleets) != 2 {
		t.Fatalf("result %+v", res)
	}
	if !strings.Contains(r.Command, " -transport tcp,tls ") {
		t.Errorf("command %q does not reproduce the transports", r.Command)
	}
	if h := r.Tables[0].Header; !slices.Equal(h, []string{"metric", "20 devices, cloud over TCP", "20 devices, cloud over TLS"}) {
		t.Errorf("header %q", h)
	}
	for i, f := range res.Fleets {
		b := res.Baselines[i]
		if f.Transport != want[i] || b.Transport != want[i] || b.Goroutines <= 0 || b.RSSMiB <= 0 {
			t.Errorf("fleet %d: %s, baseline %+v", i, f.Transport, b)
			continue
		}
		// Every device holds at least its local connection's and its cloud
		// session's goroutines.
		if f.Goroutines <= b.Goroutines+2*f.Devices || f.RSSMiB <= b.RSSMiB || f.UpSeconds <= 0 || f.Threads <= 0 {
			t.Errorf("%s fleet %+v", f.Transport, f)
		}
		if got := float64(f.Goroutines-b.Goroutines) / float64(f.Devices); f.GoroutinesPerDevice != got {
			t.Errorf("%s: %.2f goroutines per device, want %.2f", f.Transport, f.GoroutinesPerDevice, got)
		}
		// The simulator refuses securemode=2 on plain TCP and 3 on TLS.
		if f.Refused != 0 {
			t.Errorf("%s: the cloud refused %d CONNECTs", f.Transport, f.Refused)
		}
		if (f.Transport == transportTLS) != strings.HasPrefix(f.TLSVersion, "TLS 1.") {
			t.Errorf("%s: TLS version %q", f.Transport, f.TLSVersion)
		}
	}
}

func checkStorm(t *testing.T, r *Report) {
	res := r.Result.(*StormResult)
	if res.Dropped < res.Devices || res.Connects < int64(res.Devices) || res.RecoverySeconds <= 0 {
		t.Errorf("result %+v", res)
	}
	// The connect budget holds across the storm: at most a burst plus one
	// second's rate within any second. The cloud may see CONNECTs bunched
	// by its own queueing, hence the margin; a gateway without a budget
	// would show all of them at once.
	if limit := (float64(res.ConnectBurst)+res.ConnectRate)*1.25 + 2; res.PeakConnectsPerSecond > limit {
		t.Errorf("peak %.0f CONNECT/s exceeds the budget (%g/s, burst %d)", res.PeakConnectsPerSecond, res.ConnectRate, res.ConnectBurst)
	}
	if min := float64(res.Devices-res.ConnectBurst) / res.ConnectRate; res.RecoverySeconds < min*0.9 {
		t.Errorf("sessions back after %.2f s, faster than the budget allows (%.2f s)", res.RecoverySeconds, min)
	}
}

// checkForwardRate checks a paced run: it offered no more than the rate
// (each device sends on its schedule, never ahead of it) and measured the
// PUBACK latency on every path.
func checkForwardRate(t *testing.T, r *Report) {
	checkForward(t, r)
	res := r.Result.(*ForwardResult)
	if res.Rate != 200 || res.Window != 16 || !strings.Contains(r.Command, " -rate 200") {
		t.Errorf("rate %g window %d command %q", res.Rate, res.Window, r.Command)
	}
	// Timed phase: at most one message per device per period, plus the
	// one each sends at time zero.
	most := int64(res.Rate*res.DurationSeconds) + int64(res.Devices)
	for _, p := range res.Paths {
		if timed := p.Acknowledged - int64(res.Devices); timed > most {
			t.Errorf("%s: %d messages acknowledged in the timed phase, more than the %d a rate of %g msg/s allows", p.Path, timed, most, res.Rate)
		}
		if p.Path != "direct" && p.BrokerCores <= 0 {
			t.Errorf("%s: broker CPU share %g", p.Path, p.BrokerCores)
		}
	}
}

func TestRunRejects(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"nope", Options{Executable: "/bin/true"}, "unknown scenario"},
		{"forward", Options{}, "no edgegw executable"},
		{"forward", Options{Executable: "/bin/true", Devices: 20000}, "devices 20000"},
		{"forward", Options{Executable: "/bin/true", Rate: -5}, "rate -5"},
		{"sessions", Options{Executable: "/bin/true", Sessions: []int{0}}, "sessions 0"},
		{"replay", Options{Executable: "/bin/true", Messages: -1}, "negative"},
		{"sessions", Options{Executable: "/bin/true", Transports: []string{"quic"}}, `transport "quic"`},
		{"sessions", Options{Executable: "/bin/true", Transports: []string{"tls", "tcp", "tls"}}, "tls given twice"},
	}
	for _, tt := range tests {
		_, err := Run(t.Context(), tt.name, tt.opts)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s %+v: err %v, want %q", tt.name, tt.opts, err, tt.want)
		}
	}
}

// TestPKI checks the run's throwaway CA: the simulator loads the server
// certificate as "edgegw cloudsim -tls-cert -tls-key" does, a client that
// trusts only the CA completes a handshake with 127.0.0.1, and one that
// trusts another CA does not.
func TestPKI(t *testing.T) {
	dir := t.TempDir()
	p, err := makePKI(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p.KeyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file %v, %v", fi, err)
	}
	cfg, err := cloudsim.LoadTLSConfig(p.CertFile, p.KeyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("server key %T, want ECDSA P-256", leaf.PublicKey)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	})
	defer ln.Close() // before wg.Wait: ends the accept loop
	if v, err := probeTLS(t.Context(), ln.Addr().String(), p.CAFile); err != nil || v != "TLS 1.3" {
		t.Errorf("probe: %q, %v", v, err)
	}
	other, err := makePKI(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := probeTLS(t.Context(), ln.Addr().String(), other.CAFile); err == nil {
		t.Error("a client trusting another CA completed the handshake")
	}
}

// TestGatewayConfigTransport checks that the generated configuration is
// one edgegw accepts, with the cloud endpoint and CA of each transport.
func TestGatewayConfigTransport(t *testing.T) {
	dir := t.TempDir()
	p, err := makePKI(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		g            gatewaySetup
		endpoint, ca string
	}{
		{gatewaySetup{Dir: filepath.Join(dir, "tcp"), Cloud: "127.0.0.1:1883"}, "tcp://127.0.0.1:1883", ""},
		{gatewaySetup{Dir: filepath.Join(dir, "tls"), Cloud: "127.0.0.1:8883", CloudTLS: true, CloudCA: p.CAFile}, "tls://127.0.0.1:8883", p.CAFile},
	} {
		g := tt.g
		g.Admin, g.Local, g.ConnectRate, g.ConnectBurst = filepath.Join(g.Dir, "admin.sock"), "127.0.0.1:1", 10, 10
		if err := g.writeConfig(); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(g.configPath())
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Cloud.Endpoint != tt.endpoint || cfg.Cloud.CAFile != tt.ca {
			t.Errorf("endpoint %q, CA %q; want %q, %q", cfg.Cloud.Endpoint, cfg.Cloud.CAFile, tt.endpoint, tt.ca)
		}
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	for _, size := range []int{0, 50, 200, 1000} {
		p := appendPayload(nil, 12345, 1700000000123456789, size)
		if size >= 150 && len(p) != size {
			t.Errorf("size %d: payload is %d bytes", size, len(p))
		}
		var v map[string]any
		if err := json.Unmarshal(p, &v); err != nil {
			t.Errorf("size %d: not JSON: %v: %s", size, err, p)
		}
		seq, at, ok := parsePayload(p)
		if !ok || seq != 12345 || at != 1700000000123456789 {
			t.Errorf("size %d: parsed %d %d %v", size, seq, at, ok)
		}
	}
	if _, _, ok := parsePayload([]byte(`{"params":{"temp":1}}`)); ok {
		t.Error("a payload without seq parsed")
	}
}

func TestTapCountsDuplicatesAndReorders(t *testing.T) {
	tp := &tap{devs: map[string]*tapDevice{}}
	now := time.Now()
	tp.window(now.Add(-time.Second), now.Add(time.Second))
	topic := []byte("/sys/" + benchPK + "/dev-1/thing/event/property/post")
	for _, seq := range []int64{1, 2, 2, 4, 3, 5, 200} {
		tp.observe(now, topic, appendPayload(nil, seq, now.Add(-time.Millisecond).UnixNano(), 200))
	}
	tp.observe(now, []byte("/other"), []byte("x"))
	st := tp.stats()
	if st.Total != 7 || st.Unique != 6 || st.Dups != 1 || st.Reordered != 1 || st.Foreign != 1 || st.WindowCount != 6 {
		t.Errorf("stats %+v", st)
	}
	if !tp.lastArrival().Equal(now) {
		t.Errorf("last arrival %v, want %v", tp.lastArrival(), now)
	}
	if lat := tp.latencies(); len(lat) != 6 || lat[0] != int64(time.Millisecond) {
		t.Errorf("latencies %v", lat)
	}
	// After the window: latency still recorded, not counted in the window.
	tp.observe(now.Add(2*time.Second), topic, appendPayload(nil, 201, now.UnixNano(), 200))
	if st := tp.stats(); st.WindowCount != 6 || len(tp.latencies()) != 7 {
		t.Errorf("after the window: %+v, %d latencies", st, len(tp.latencies()))
	}
}

func TestPeakCount(t *testing.T) {
	t0 := time.Now()
	var s []connectSample
	// Counter +10 every 100 ms for 3 s, each read taking 10 ms; then +50
	// within 100 ms.
	for i := range 30 {
		at := t0.Add(time.Duration(i) * 100 * time.Millisecond)
		s = append(s, connectSample{at, at.Add(10 * time.Millisecond), int64(10 * i)})
	}
	end := t0.Add(3000 * time.Millisecond)
	s = append(s, connectSample{end, end.Add(10 * time.Millisecond), 340})
	// From the request at 2.1 s to the reply at 3.01 s: 340 − 210.
	if got := peakCount(s, time.Second); got != 130 {
		t.Errorf("peak %d, want 130", got)
	}
	// A slow reply must not shrink the window: the same counts read with
	// 500 ms replies only count what certainly fell within one second.
	for i := range s {
		s[i].after = s[i].before.Add(500 * time.Millisecond)
	}
	if got := peakCount(s, time.Second); got != 90 { // request at 2.5 s, reply at 3.5 s
		t.Errorf("peak with slow replies %d, want 90", got)
	}
	if got := peakCount(s[:1], time.Second); got != 0 {
		t.Errorf("one sample: peak %d", got)
	}
}

func TestPercentile(t *testing.T) {
	v := make([]int64, 1000)
	for i := range v {
		v[i] = int64(i + 1)
	}
	for _, tt := range []struct {
		q    float64
		want float64
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}} {
		if got := percentile(v, tt.q); got != tt.want {
			t.Errorf("q%.3f = %v, want %v", tt.q, got, tt.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("empty")
	}
}

func TestProcReaders(t *testing.T) {
	m, err := procStatus(os.Getpid())
	if err != nil || m.RSS <= 0 || m.HWM < m.RSS || m.Threads < 1 {
		t.Errorf("status %+v %v", m, err)
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Error(err)
	}
	if _, err := procCPU(-1); err == nil {
		t.Error("no error for a missing process")
	}
}

func TestGoroutineDumpCounting(t *testing.T) {
	l := &lineLog{}
	l.resetGoroutines()
	dump := "SIGQUIT: quit\nPC=0x1 m=0 sigcode=0\n\ngoroutine 1 [running]:\nmain.main()\n\t/x.go:1 +0x1\n\n" +
		"goroutine 7 gp=0xc000 m=nil [select, 2 minutes]:\nfoo(...)\n\t/y.go:2\ncreated by bar in goroutine 1\n\t/z.go:3 +0x4\n"
	l.Write([]byte(dump[:40]))
	l.Write([]byte(dump[40:]))
	if got := l.goroutineDump().count; got != 2 {
		t.Errorf("counted %d goroutines, want 2", got)
	}
}

// TestGoroutineDumpStacks reads a GOTRACEBACK=system dump: goroutines by
// part, and the stack each needs from its stack pointers.
func TestGoroutineDumpStacks(t *testing.T) {
	l := &lineLog{}
	l.resetGoroutines()
	dump := `SIGQUIT: quit
PC=0x497be1 m=0 sigcode=0

goroutine 0 gp=0x13bf3e0 m=0 mp=0x13c07a0 [idle]:
runtime.futex(0x13c08f8, 0x80, 0x0, 0x0, 0x0, 0x0)
	/usr/local/go/src/runtime/sys_linux_amd64.s:569 +0x21 fp=0x7fffd7c638c0 sp=0x7fffd7c638b8 pc=0x497be1

goroutine 21 gp=0x300d27980780 m=nil [chan receive]:
runtime.gopark(0x0?, 0x0?, 0x0?, 0x0?, 0x0?)
	/usr/local/go/src/runtime/proc.go:462 +0xce fp=0x300d2793efa8 sp=0x300d2793ef88 pc=0x48e54e
github.com/eclipse/paho%2emqtt%2egolang.startComms.func1()
	/root/go/pkg/mod/github.com/eclipse/paho.mqtt.golang@v1.5.1/net.go:300 +0x1b fp=0x300d2793efe0 sp=0x300d2793efa8 pc=0x831535
runtime.goexit({})
	/usr/local/go/src/runtime/asm_amd64.s:1771 +0x1 fp=0x300d2793efe8 sp=0x300d2793efe0 pc=0x496081
created by github.com/eclipse/paho%2emqtt%2egolang.startComms in goroutine 20
	/root/go/pkg/mod/github.com/eclipse/paho.mqtt.golang@v1.5.1/net.go:290 +0x1a

goroutine 22 gp=0x300d27980781 m=nil [IO wait]:
runtime.gopark(0x0?, 0x0?, 0x0?, 0x0?, 0x0?)
	/usr/local/go/src/runtime/proc.go:462 +0xce fp=0x300d279bb0a8 sp=0x300d279bb088 pc=0x48e54e
github.com/mochi-mqtt/server/v2.(*Client).Read(0x300d2791aa08, 0x300d279bbea0)
	/root/go/pkg/mod/github.com/mochi-mqtt/server/v2@v2.7.9/clients.go:375 +0x7f fp=0x300d279bbec0 sp=0x300d279bb0a8 pc=0x8134bf
github.com/edgegw/edgegw/localbroker.(*listener).handle(0x300d27a458c0, {0xd66918, 0x300d27986010})
	/work/localbroker/listeners.go:352 +0x144 fp=0x300d279bbfe0 sp=0x300d279bbec0 pc=0x8432c4
runtime.goexit({})
	/usr/local/go/src/runtime/asm_amd64.s:1771 +0x1 fp=0x300d279bbfe8 sp=0x300d279bbfe0 pc=0x496081

rax    0x0
rip    0x497be1
`
	l.Write([]byte(dump))
	d := l.goroutineDump()
	if d.count != 2 || d.withSP != 2 {
		t.Fatalf("dump: %+v", d)
	}
	// paho's goroutine uses 0x60 bytes: 2 KiB. mochi's reader uses 0xf78
	// (about 4 KiB) plus the guard: 8 KiB.
	if d.byPart["paho"] != 1 || d.stackByPart["paho"] != 2048 || d.byPart["mochi"] != 1 || d.stackByPart["mochi"] != 8192 {
		t.Errorf("by part %v, stacks %v", d.byPart, d.stackByPart)
	}
}

func TestBreakdownAddsUp(t *testing.T) {
	b := MemorySample{RSS: 20 << 20, Runtime: adminapi.Runtime{HeapObjectsBytes: 4 << 20, StackBytes: 1 << 20, TotalBytes: 8 << 20, OtherBytes: 2 << 20, HeapFreeBytes: 1 << 20},
		LiveHeapByPart: map[string]uint64{"edgegw": 1 << 20}, GoroutinesByPart: map[string]int{"edgegw": 10}, StackByPart: map[string]int64{"edgegw": 40 << 10}}
	f := MemorySample{RSS: 120 << 20, Runtime: adminapi.Runtime{HeapObjectsBytes: 44 << 20, StackBytes: 41 << 20, TotalBytes: 102 << 20, OtherBytes: 5 << 20,
		HeapFreeBytes: 11 << 20, HeapReleasedBytes: 1 << 20},
		LiveHeapByPart:   map[string]uint64{"edgegw": 3 << 20, "paho": 10 << 20, "mochi": 8 << 20, "uplink": 6 << 20},
		DescriptorBytes:  5 << 20,
		GoroutinesByPart: map[string]int{"edgegw": 10, "paho": 10000, "mochi": 2000, "uplink": 1000},
		StackByPart:      map[string]int64{"edgegw": 40 << 10, "paho": 20000 << 10, "mochi": 12000 << 10, "uplink": 4000 << 10}}
	br := breakdown(f, b, 1000)
	sum := br.StackSlackKiB + br.GarbageKiB + br.FreeHeapKiB + br.RuntimeKiB + br.OutsideKiB
	for _, p := range br.Parts {
		sum += p.TotalKiB()
	}
	if math.Abs(sum-br.RSSKiB) > 1e-9 || br.RSSKiB != 100*1024/1000.0 {
		t.Errorf("parts add up to %.3f KiB, RSS %.3f KiB: %+v", sum, br.RSSKiB, br)
	}
	if p := br.Parts[0]; p.Goroutines != 10 || p.StackKiB != 20 {
		t.Errorf("paho %+v", p)
	}
	if p := br.Parts[2]; p.Goroutines != 1 || p.StackKiB != 4 { // edgegw's own: uplink + the baseline's cancelled out
		t.Errorf("edgegw %+v", p)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func TestSettleWatch(t *testing.T) {
	w := newSettleWatch()
	since := time.Date(2026, 12, 7, 20, 52, 40, 0, time.UTC)
	w.line(`time=2026-12-07T20:52:30.100Z level=INFO msg="cloud session up" device=a/b attempt=1`)
	w.line(`time=2026-12-07T20:52:39.500Z level=INFO msg="returned memory after a burst of connections" heap_before=1 heap_after=1 released=0 took=1ms allocated=5`)
	w.line(`time=2026-12-07T20:52:42.811Z level=INFO msg="returned memory after a burst of connections" heap_before=9 heap_after=3 released=2 took=120ms allocated=123456789`)
	ev, ok, err := w.wait(t.Context(), since, time.Second)
	if err != nil || !ok || ev.allocated != 123456789 || !ev.at.Equal(since.Add(2811*time.Millisecond)) {
		t.Fatalf("settle %+v, %v, %v", ev, ok, err)
	}
}
