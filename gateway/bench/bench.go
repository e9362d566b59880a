// Package bench measures edgegw on loopback: forwarding against a direct
// path and a mosquitto bridge, replay after an outage, idle sessions at
// scale and reconnect storms. Each scenario starts what it needs — the real
// edgegw binary as a child process, a cloud (Debian's mosquitto or the
// cloud simulator, also as a child) and a load generator in this process —
// runs, and returns a Report with tables (markdown) and the raw figures
// (JSON). "edgegw bench SCENARIO" is the command line; docs/benchmarks.md
// holds the latest results.
//
// The load generator is a minimal MQTT 3.1.1 client rather than paho so
// that it costs little CPU on the small boxes edgegw runs on: the same
// generator drives every path, so their ratios are fair.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Options configure a run. Zero values take the scenario's defaults (see
// Scenarios); Quick shrinks every default to a few seconds' work for tests.
type Options struct {
	// Executable is the edgegw binary started for the gateway ("edgegw
	// run") and the cloud simulator ("edgegw cloudsim"). Required.
	Executable string
	// Mosquitto is Debian's mosquitto broker; empty looks it up.
	Mosquitto string

	// Quick runs a tiny version of the scenario (CI keeps the code working).
	Quick bool

	Devices     int           // forward, replay, storm: simulated devices
	Duration    time.Duration // forward: publishing time
	Window      int           // forward: QoS 1 messages in flight per device
	Rate        float64       // forward: fixed offered load, msg/s over all devices (0: as fast as the window allows)
	PayloadSize int           // forward: bytes per message
	Messages    int           // replay: messages per device spooled during the outage
	DeviceRate  float64       // replay: per-device cap (messages/s) of the capped run
	Sessions    []int         // sessions: fleet sizes
	Idle        time.Duration // sessions: window for idle CPU
	// Transports are the sessions scenario's cloud transports, "tcp"
	// and/or "tls", each measured for every fleet size.
	Transports []string
	// ConnectRate and ConnectBurst are the gateway's connect budget
	// (cloud.connect_rate, cloud.connect_burst).
	ConnectRate  float64
	ConnectBurst int

	// WorkDir is where temporary state goes (default: the system's).
	WorkDir string
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
	// Verbose also copies the children's output to Progress.
	Verbose bool
}

// Scenario describes one benchmark.
type Scenario struct {
	Name    string
	Summary string
}

type scenario struct {
	Scenario
	defaults func(o *Options)
	flags    func(o *Options) string // the flags that reproduce a run
	run      func(ctx context.Context, e *env) (any, []Table, error)
}

// scenarios, in priority order.
var scenarios = []scenario{forwardScenario, replayScenario, sessionsScenario, stormScenario}

// Scenarios lists the benchmarks.
func Scenarios() []Scenario {
	out := make([]Scenario, len(scenarios))
	for i, s := range scenarios {
		out[i] = s.Scenario
	}
	return out
}

// Report is the outcome of one run.
type Report struct {
	Scenario       string    `json:"scenario"`
	Command        string    `json:"command"` // reproduces the run
	Machine        Machine   `json:"machine"`
	Started        time.Time `json:"started"`
	ElapsedSeconds float64   `json:"elapsedSeconds"`
	// LoadBefore and LoadAfter are the 1-minute load averages at the start
	// and the end: a busy machine makes every figure worse.
	LoadBefore float64 `json:"loadBefore"`
	LoadAfter  float64 `json:"loadAfter"`
	Result     any     `json:"result"` // the scenario's figures
	Tables     []Table `json:"tables"`
}

// Table is one result table.
type Table struct {
	Title  string     `json:"title"`
	Header []string   `json:"header"`
	Rows   [][]string `json:"rows"`
	Notes  []string   `json:"notes,omitempty"`
}

// Machine describes where a run took place.
type Machine struct {
	CPUs      int     `json:"cpus"`
	CPUModel  string  `json:"cpuModel"`
	MemoryGiB float64 `json:"memoryGiB"`
	Kernel    string  `json:"kernel"`
	Go        string  `json:"go"`
	Mosquitto string  `json:"mosquitto,omitempty"`
}

// Run runs scenario name. Missing third-party programs are errors that
// wrap ErrPeerMissing.
func Run(ctx context.Context, name string, opts Options) (*Report, error) {
	var sc *scenario
	for i := range scenarios {
		if scenarios[i].Name == name {
			sc = &scenarios[i]
		}
	}
	if sc == nil {
		return nil, fmt.Errorf("run benchmark %q: unknown scenario (have %s)", name, strings.Join(names(), ", "))
	}
	if opts.Executable == "" {
		return nil, errors.New("run benchmark: no edgegw executable given")
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	sc.defaults(&opts)
	if err := opts.check(); err != nil {
		return nil, fmt.Errorf("run benchmark %s: %w", name, err)
	}
	if _, err := raiseFileLimit(); err != nil {
		return nil, fmt.Errorf("run benchmark %s: %w", name, err)
	}
	dir, err := os.MkdirTemp(opts.WorkDir, "edgegw-bench-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("run benchmark %s: %w", name, err)
	}
	defer os.RemoveAll(dir)
	// Unix socket paths must stay short, whatever WorkDir is.
	sockets, err := os.MkdirTemp("", "egwb-")
	if err != nil {
		return nil, fmt.Errorf("run benchmark %s: %w", name, err)
	}
	defer os.RemoveAll(sockets)
	e := &env{opts: opts, dir: dir, sockets: sockets}
	r := &Report{Scenario: name, Command: "edgegw bench " + name + sc.flags(&opts), Machine: describeMachine(),
		Started: time.Now(), LoadBefore: loadAverage()}
	if opts.Quick {
		r.Command += " -quick"
	}
	e.logf("%s: %s", name, r.Command)
	r.Result, r.Tables, err = sc.run(ctx, e)
	r.ElapsedSeconds = time.Since(r.Started).Seconds()
	r.LoadAfter = loadAverage()
	if err != nil {
		return nil, fmt.Errorf("run benchmark %s: %w", name, err)
	}
	if m, err := FindMosquitto(opts.Mosquitto); err == nil && name == "forward" {
		r.Machine.Mosquitto = mosquittoVersion(m)
	}
	return r, nil
}

func names() []string {
	var s []string
	for _, sc := range scenarios {
		s = append(s, sc.Name)
	}
	return s
}

func (o *Options) check() error {
	switch {
	case o.Devices < 0 || o.Devices > 19000:
		return fmt.Errorf("devices %d: want 1 to 19,000 (each device needs file descriptors in several processes)", o.Devices)
	case o.Rate < 0 || o.Rate > 1e7:
		return fmt.Errorf("rate %g: want 0 (no pacing) to 10,000,000 msg/s", o.Rate)
	case o.Window < 0 || o.Window > 65535:
		return fmt.Errorf("window %d: want 1 to 65,535", o.Window)
	case o.PayloadSize < 0 || o.PayloadSize > 256<<10:
		return fmt.Errorf("payload %d: want at most 256 KiB", o.PayloadSize)
	case o.Messages < 0, o.DeviceRate < 0, o.ConnectRate < 0, o.ConnectBurst < 0, o.Duration < 0, o.Idle < 0:
		return errors.New("negative values are not allowed")
	}
	for _, n := range o.Sessions {
		if n < 1 || n > 19000 {
			return fmt.Errorf("sessions %d: want 1 to 19,000", n)
		}
	}
	for i, t := range o.Transports {
		switch {
		case t != transportTCP && t != transportTLS:
			return fmt.Errorf("transport %q: want %s or %s", t, transportTCP, transportTLS)
		case slices.Contains(o.Transports[:i], t):
			return fmt.Errorf("transport %s given twice", t)
		}
	}
	return nil
}

// env is the state shared by a scenario's steps.
type env struct {
	opts    Options
	dir     string
	sockets string // a short directory for unix sockets
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.opts.Progress, "%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// echo is where children's output goes (nil unless Verbose).
func (e *env) echo() io.Writer {
	if e.opts.Verbose {
		return e.opts.Progress
	}
	return nil
}

// socket returns a unix socket path for name.
func (e *env) socket(name string) string { return filepath.Join(e.sockets, name+".sock") }

// subdir returns a fresh directory under the run's directory.
func (e *env) subdir(name string) string { return filepath.Join(e.dir, name) }

// describeMachine reads the CPU model, memory and kernel from /proc.
func describeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kib, _ := strconv.ParseFloat(f[1], 64)
				m.MemoryGiB = kib / (1 << 20)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// loadAverage returns the 1-minute load average (0 if unknown).
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// String describes the machine in one line.
func (m Machine) String() string {
	s := fmt.Sprintf("%d CPUs (%s), %.1f GiB RAM, Linux %s, %s", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go)
	if m.Mosquitto != "" {
		s += ", " + m.Mosquitto
	}
	return s
}

// WriteMarkdown writes the report as markdown: the command, the machine
// and the tables.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "`%s`  \n%s; %s, took %.0f s, load average %.1f before, %.1f after\n", r.Command, r.Machine,
		r.Started.UTC().Format("2006-01-02 15:04 MST"), r.ElapsedSeconds, r.LoadBefore, r.LoadAfter)
	for _, t := range r.Tables {
		b.WriteString("\n")
		t.writeMarkdown(&b)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (t Table) writeMarkdown(b *strings.Builder) {
	if t.Title != "" {
		fmt.Fprintf(b, "**%s**\n\n", t.Title)
	}
	row := func(cells []string) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" " + strings.ReplaceAll(c, "|", "\\|") + " |")
		}
		b.WriteString("\n")
	}
	row(t.Header)
	b.WriteString("|")
	for i := range t.Header {
		if i == 0 {
			b.WriteString("---|")
		} else {
			b.WriteString("--:|")
		}
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		row(r)
	}
	for _, n := range t.Notes {
		b.WriteString("\n" + n + "\n")
	}
}

// ---- formatting helpers ----

func fmtRate(v float64) string {
	switch {
	case v >= 100:
		return commas(int64(v + 0.5))
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtSeconds(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + " s"
	case d >= time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + " s"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 0, 64) + " ms"
}

func fmtMS(ns float64) string {
	ms := ns / 1e6
	switch {
	case ms >= 100:
		return strconv.FormatFloat(ms, 'f', 0, 64)
	case ms >= 10:
		return strconv.FormatFloat(ms, 'f', 1, 64)
	}
	return strconv.FormatFloat(ms, 'f', 2, 64)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// percentile returns the q-quantile (0..1) of sorted values (nearest rank).
func percentile(sorted []int64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return float64(sorted[min(max(i, 0), len(sorted)-1)])
}
