package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/gateway/devsim"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink"
	"github.com/edgegw/edgegw/uplink/cloudsim"
	"github.com/edgegw/edgegw/uplink/spool"
)

const metPK = "a1MetricsPk1"

// metRig is a cloud simulator and a gateway with its metrics server on
// loopback (the pattern of e2e_test.go's rig).
type metRig struct {
	t       *testing.T
	sim     *cloudsim.Sim
	gw      *Gateway
	local   string // tcp host:port of the local broker
	good    []devsim.Device
	bad     devsim.Device // registered with a secret the cloud does not know
	secrets []secrets.Secret
	cancel  context.CancelFunc
	done    <-chan error
}

func newMetRig(t *testing.T, n int) *metRig {
	t.Helper()
	r := &metRig{t: t}
	var simDevs []cloudsim.Device
	var regDevs []secrets.Device
	for i := range n + 1 {
		sec := secrets.NewSecret(fmt.Sprintf("metsecret-%03d-0123456789abcdef", i))
		d := devsim.Device{Dialect: secrets.Aliyun, ProductKey: metPK, DeviceName: fmt.Sprintf("metdev-%03d", i), Secret: sec}
		simDevs = append(simDevs, cloudsim.Device{ProductKey: metPK, DeviceName: d.DeviceName, Secret: sec})
		regSec := sec
		if i == n {
			r.bad = d
			regSec = secrets.NewSecret("metsecret-wrong-0123456789abcdef")
			r.secrets = append(r.secrets, regSec)
		} else {
			r.good = append(r.good, d)
		}
		r.secrets = append(r.secrets, sec)
		regDevs = append(regDevs, secrets.Device{ProductKey: metPK, DeviceName: d.DeviceName, DeviceSecret: regSec})
	}
	sim, err := cloudsim.New(cloudsim.Config{Dialect: secrets.Aliyun, Listen: "127.0.0.1:0", Devices: simDevs, DeviceRate: cloudsim.RateUnlimited})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	r.sim = sim

	dir := t.TempDir()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0"}
	cfg.Cloud.Endpoint = "tcp://" + sim.Addr(cloudsim.TCP)
	cfg.Cloud.BackoffMin = config.Duration(50 * time.Millisecond)
	cfg.Cloud.BackoffMax = config.Duration(500 * time.Millisecond)
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Shutdown.Timeout = config.Duration(15 * time.Second) // roomy: under -race on a loaded CI box a part can take seconds to stop
	metSeedRegistry(t, cfg, regDevs)

	gw, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r.gw = gw
	r.cancel, r.done = runReady(t, gw)
	for id, a := range gw.Addrs() {
		if strings.HasPrefix(id, "tcp://") {
			r.local = a.String()
		}
	}
	t.Cleanup(func() { r.stop() })
	return r
}

// stop ends Run and returns its error (once; later calls return nil).
func (r *metRig) stop() error {
	if r.cancel == nil {
		return nil
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		return err
	case <-time.After(40 * time.Second):
		return errors.New("gateway did not stop within 40 s")
	}
}

func metSeedRegistry(t *testing.T, cfg *config.Config, devs []secrets.Device) {
	t.Helper()
	reg := openTestRegistry(t, cfg)
	defer reg.Close()
	if _, err := reg.PutProduct(secrets.Product{ProductKey: metPK, Dialect: secrets.Aliyun}); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if err := reg.AddDevice(d); err != nil {
			t.Fatal(err)
		}
	}
}

func (r *metRig) fleet(count int) *devsim.Fleet {
	r.t.Helper()
	f, err := devsim.Start(r.t.Context(), devsim.Config{Broker: "tcp://" + r.local, Devices: r.good, QoS: 1, Window: 4, Count: count})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(f.Close)
	return f
}

func (r *metRig) url(path string) string { return "http://" + r.gw.MetricsAddr().String() + path }

// get returns the status and body of a GET.
func get(url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// scrape is one parsed /metrics answer and its raw text.
type scrape struct {
	raw string
	mfs map[string]*dto.MetricFamily
}

func (r *metRig) scrape() scrape {
	r.t.Helper()
	code, body, err := get(r.url("/metrics"))
	if err != nil || code != http.StatusOK {
		r.t.Fatalf("GET /metrics: %d %v", code, err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		r.t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return scrape{raw: body, mfs: mfs}
}

// value returns the value of the series of family name with the given
// label pairs; ok is false when it is missing.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	mf := s.mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue(), true
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue(), true
		case dto.MetricType_UNTYPED:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func (s scrape) must(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.value(name, labels...)
	if !ok {
		t.Fatalf("series %s%v missing from /metrics", name, labels)
	}
	return v
}

// TestMetricsAndHealth runs a gateway with three good devices and one the
// cloud refuses, and checks /metrics, /healthz and /readyz online, offline
// and through shutdown.
func TestMetricsAndHealth(t *testing.T) {
	const n, count = 3, 20
	r := newMetRig(t, n)

	addr := r.gw.MetricsAddr()
	if addr == nil {
		t.Fatal("MetricsAddr is nil with metrics.listen set")
	}
	if ta, ok := addr.(*net.TCPAddr); !ok || !ta.IP.IsLoopback() || ta.Port == 0 {
		t.Fatalf("MetricsAddr = %v, want a bound loopback address", addr)
	}
	if code, body, err := get(r.url("/healthz")); err != nil || code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz after Ready: %d %q %v", code, body, err)
	}
	if code, body, err := get(r.url("/readyz")); err != nil || code != http.StatusOK || !strings.HasPrefix(body, "ready\ncloud: ") {
		t.Errorf("/readyz after Ready: %d %q %v", code, body, err)
	}
	if err := r.gw.Alive(); err != nil {
		t.Errorf("Alive after Ready: %v", err)
	}

	f1 := r.fleet(count)
	for _, d := range r.good {
		testutil.Eventually(t, 30*time.Second, func() bool {
			return len(r.sim.MessagesFor(d.ProductKey, d.DeviceName)) >= count
		}, "%s messages in the cloud", d.DeviceName)
	}
	var s scrape
	testutil.Eventually(t, 30*time.Second, func() bool {
		s = r.scrape()
		up, _ := s.value("edgegw_cloud_sessions", "state", "connected")
		sent, _ := s.value("edgegw_cloud_messages_sent_total")
		depth, _ := s.value("edgegw_spool_messages")
		refused := 0.0
		for _, c := range connackCodes {
			v, _ := s.value("edgegw_cloud_sessions_refused", "code", c)
			refused += v
		}
		return up == n && sent >= n*count && depth == 0 && refused == 1
	}, "metrics to show the sessions up, the refusal and the drained spool")

	// Concurrent scrapes (the race detector watches the collector).
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if code, _, err := get(r.url("/metrics")); err != nil || code != http.StatusOK {
				t.Errorf("concurrent scrape: %d %v", code, err)
			}
		})
	}
	wg.Wait()

	// Sessions: every state has a series, they add up to the devices.
	total := 0.0
	for _, st := range stateSeries {
		total += s.must(t, "edgegw_cloud_sessions", "state", string(st))
	}
	if total != n+1 {
		t.Errorf("sessions over all states = %v, want %d", total, n+1)
	}
	// The refusal is counted under the code the cloud sent.
	var simCode byte
	for code, c := range r.sim.Stats().ConnectsRefused {
		if c > 0 {
			simCode = code
		}
	}
	if simCode == 0 {
		t.Fatal("the cloud simulator recorded no refusal for the device with the wrong secret")
	}
	if v := s.must(t, "edgegw_cloud_sessions_refused", "code", fmt.Sprint(simCode)); v != 1 {
		t.Errorf("edgegw_cloud_sessions_refused{code=%d} = %v, want 1", simCode, v)
	}

	atLeast := map[string]float64{
		"edgegw_cloud_connect_attempts_total": n + 1,
		"edgegw_cloud_connects_total":         n,
		"edgegw_cloud_messages_sent_total":    n * count,
		"edgegw_broker_connects_total":        n,
		"edgegw_broker_messages_in_total":     n * count,
		"edgegw_spool_appended_total":         n * count,
		"edgegw_spool_acked_total":            n * count,
		"edgegw_spool_commits_total":          1,
		"edgegw_spool_file_bytes":             1,
		"edgegw_spool_devices":                n,
		"edgegw_ready":                        1,
	}
	for name, min := range atLeast {
		if v := s.must(t, name); v < min {
			t.Errorf("%s = %v, want at least %v", name, v, min)
		}
	}
	zero := []string{"edgegw_spool_messages", "edgegw_spool_bytes", "edgegw_spool_oldest_message_age_seconds",
		"edgegw_spool_rejected_total", "edgegw_broker_publishes_denied_total", "edgegw_downlink_dropped_total",
		"edgegw_spool_disk_full", "edgegw_spool_commit_errors_total"}
	for _, name := range zero {
		if v := s.must(t, name); v != 0 {
			t.Errorf("%s = %v, want 0", name, v)
		}
	}
	for _, reason := range spool.Reasons {
		if v := s.must(t, "edgegw_spool_dropped_total", "reason", string(reason)); v != 0 {
			t.Errorf("dropped{reason=%s} = %v, want 0", reason, v)
		}
	}
	if v := s.must(t, "edgegw_spool_budget_bytes"); v != float64(config.Default().Spool.Budget) {
		t.Errorf("spool budget = %v", v)
	}
	if v := s.must(t, "edgegw_spool_info", "durable", "true", "overflow", "drop-oldest"); v != 1 {
		t.Errorf("spool_info = %v", v)
	}
	for name, typ := range map[string]dto.MetricType{
		"edgegw_cloud_messages_sent_total":       dto.MetricType_COUNTER,
		"edgegw_spool_messages":                  dto.MetricType_GAUGE,
		"edgegw_spool_commit_duration_seconds":   dto.MetricType_HISTOGRAM,
		"edgegw_cloud_sessions":                  dto.MetricType_GAUGE,
		"edgegw_broker_outbound_dropped_total":   dto.MetricType_COUNTER,
		"go_goroutines":                          dto.MetricType_GAUGE,
		"process_resident_memory_bytes":          dto.MetricType_GAUGE,
		"promhttp_metric_handler_requests_total": dto.MetricType_COUNTER,
	} {
		if mf := s.mfs[name]; mf == nil || mf.GetType() != typ {
			t.Errorf("%s: family %v, want type %v", name, mf, typ)
		}
	}
	h := s.mfs["edgegw_spool_commit_duration_seconds"].GetMetric()[0].GetHistogram()
	commits := s.must(t, "edgegw_spool_commits_total")
	if h.GetSampleCount() == 0 || float64(h.GetSampleCount()) > commits || h.GetSampleSum() <= 0 {
		t.Errorf("commit histogram: count %d sum %v (commits %v)", h.GetSampleCount(), h.GetSampleSum(), commits)
	}
	var prev uint64
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() < prev || b.GetCumulativeCount() > h.GetSampleCount() {
			t.Errorf("commit histogram buckets not cumulative: %v", h.GetBucket())
		}
		prev = b.GetCumulativeCount()
	}

	// Bounded cardinality: only the fixed labels, and nothing that names
	// a device or holds a secret (build_info is one series).
	allowed := []string{"state", "code", "reason", "durable", "overflow", "class", "version", "commit", "goversion"}
	for name, mf := range s.mfs {
		if !strings.HasPrefix(name, "edgegw_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !slices.Contains(allowed, lp.GetName()) {
					t.Errorf("%s has label %q", name, lp.GetName())
				}
			}
		}
	}
	for _, d := range append(slices.Clone(r.good), r.bad) {
		if strings.Contains(s.raw, d.DeviceName) {
			t.Errorf("/metrics names device %s", d.DeviceName)
		}
	}
	for _, sec := range r.secrets {
		if strings.Contains(s.raw, sec.Reveal()) {
			t.Error("/metrics contains a device secret")
		}
	}
	if strings.Contains(s.raw, metPK) {
		t.Error("/metrics names the product key")
	}

	// Offline: the cloud is gone, devices keep publishing into the spool;
	// the gateway stays ready and healthy and says where the cloud is.
	if err := r.sim.Down(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		v, _ := r.scrape().value("edgegw_cloud_sessions", "state", "connected")
		return v == 0
	}, "sessions down")
	sentBefore := r.scrape().must(t, "edgegw_cloud_messages_sent_total")
	f1.Close() // the next fleet logs in as the same devices
	f := r.fleet(5)
	testutil.Eventually(t, 20*time.Second, func() bool { return f.Stats().Acked >= n*5 }, "posts acknowledged into the spool")
	testutil.Eventually(t, 10*time.Second, func() bool {
		s = r.scrape()
		depth, _ := s.value("edgegw_spool_messages")
		age, _ := s.value("edgegw_spool_oldest_message_age_seconds")
		return depth >= n*5 && age > 0
	}, "a backlog with an age")
	if v := s.must(t, "edgegw_spool_bytes"); v <= 0 {
		t.Errorf("spool bytes with a backlog = %v", v)
	}
	if v := s.must(t, "edgegw_cloud_messages_sent_total"); v < sentBefore {
		t.Errorf("sent counter went down: %v after %v", v, sentBefore)
	}
	code, body, err := get(r.url("/readyz"))
	if err != nil || code != http.StatusOK || !strings.Contains(body, fmt.Sprintf("cloud: 0 of %d device sessions connected", n+1)) ||
		!strings.Contains(body, "spool: ") {
		t.Errorf("/readyz with the cloud down: %d %q %v", code, body, err)
	}
	if code, body, err := get(r.url("/healthz")); err != nil || code != http.StatusOK {
		t.Errorf("/healthz with the cloud down: %d %q %v", code, body, err)
	}

	// Shutdown: from the moment it begins, never ready again.
	o := r.gw.observer()
	healthURL, readyURL := r.url("/healthz"), r.url("/readyz")
	cancel := r.cancel
	r.cancel = nil
	cancel()
	rec := httptest.NewRecorder()
	o.serveReadyz(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "shutting down") {
		t.Errorf("/readyz once shutdown began: %d %q", rec.Code, rec.Body.String())
	}
	if err := o.alive(); !errors.Is(err, errShuttingDown) {
		t.Errorf("alive once shutdown began: %v", err)
	}
	seen503 := 0
	testutil.Eventually(t, 15*time.Second, func() bool {
		code, body, err := get(readyURL)
		if err != nil {
			return true
		}
		if code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz during shutdown: %d %q", code, body)
		}
		seen503++
		return false
	}, "the metrics server to close")
	t.Logf("/readyz answered 503 %d times during shutdown", seen503)
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
	if a := r.gw.MetricsAddr(); a != nil {
		t.Errorf("MetricsAddr after Run = %v", a)
	}
	if err := r.gw.Alive(); !errors.Is(err, errNotRunning) {
		t.Errorf("Alive after Run = %v", err)
	}
	if _, _, err := get(healthURL); err == nil {
		t.Error("/healthz still answers after Run returned")
	}
}

// TestMetricsListenInUse: a metrics port that cannot be bound stops Run
// before it serves, naming the key.
func TestMetricsListenInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0", "unix://" + filepath.Join(dir, "admin.sock")}
	cfg.Metrics.Listen = ln.Addr().String()
	gw, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	err = gw.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "metrics.listen "+ln.Addr().String()) {
		t.Fatalf("Run = %v, want the metrics.listen bind error", err)
	}
	select {
	case <-gw.Ready():
		t.Error("Ready closed although Run failed")
	default:
	}
	if err := gw.Alive(); !errors.Is(err, errNotRunning) {
		t.Errorf("Alive = %v", err)
	}
}

// TestMetricsDisabled: metrics.listen = "" serves nothing, and Alive still
// works (the watchdog needs it).
func TestMetricsDisabled(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0"}
	cfg.Metrics.Listen = ""
	gw, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Alive(); !errors.Is(err, errNotRunning) {
		t.Errorf("Alive before Run = %v", err)
	}
	cancel, done := runReady(t, gw)
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	if a := gw.MetricsAddr(); a != nil {
		t.Errorf("MetricsAddr = %v with metrics disabled", a)
	}
	if err := gw.Alive(); err != nil {
		t.Errorf("Alive: %v", err)
	}
}

// sessionValues runs the session part of the collector and returns the values
// by family (and label value, for labelled series).
func sessionValues(t *testing.T, c *collector, sts []uplink.SessionStatus) map[string]float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 100)
	c.collectSessions(ch, sts)
	close(ch)
	out := map[string]float64{}
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		name := m.Desc().String()
		name = name[strings.Index(name, `"`)+1:]
		name = name[:strings.Index(name, `"`)]
		for _, lp := range pb.GetLabel() {
			name += "/" + lp.GetValue()
		}
		switch {
		case pb.Counter != nil:
			out[name] = pb.GetCounter().GetValue()
		case pb.Gauge != nil:
			out[name] = pb.GetGauge().GetValue()
		}
	}
	return out
}

// TestSessionCountersNeverDecrease: counters summed over sessions survive
// a device's removal and re-adding, and refusals are read from the real
// uplink.ConnectError text.
func TestSessionCountersNeverDecrease(t *testing.T) {
	a := secrets.DeviceID{ProductKey: "pk", DeviceName: "a"}
	b := secrets.DeviceID{ProductKey: "pk", DeviceName: "b"}
	refused := func(code byte) string {
		return (&uplink.ConnectError{Code: code, Err: errors.New("connection refused")}).Error()
	}
	network := (&uplink.ConnectError{Err: errors.New("dial tcp: connection refused")}).Error()
	c := newCollector(&Gateway{})
	steps := []struct {
		name string
		sts  []uplink.SessionStatus
		want map[string]float64
	}{
		{"two sessions", []uplink.SessionStatus{
			{Device: a, State: uplink.StateConnected, Attempts: 2, Connects: 1, Sent: 5, LastError: refused(4)},
			{Device: b, State: uplink.StateAuthFailed, Attempts: 1, LastError: refused(4)},
		}, map[string]float64{
			"edgegw_cloud_messages_sent_total": 5, "edgegw_cloud_connect_attempts_total": 3, "edgegw_cloud_connects_total": 1,
			"edgegw_cloud_sessions/connected": 1, "edgegw_cloud_sessions/auth-failed": 1, "edgegw_cloud_sessions/idle": 0,
			"edgegw_cloud_sessions_refused/4": 1, "edgegw_cloud_sessions_refused/3": 0,
		}},
		{"a removed, b up", []uplink.SessionStatus{
			{Device: b, State: uplink.StateConnected, Attempts: 2, Connects: 1, Sent: 2, LastError: refused(4)},
		}, map[string]float64{
			"edgegw_cloud_messages_sent_total": 7, "edgegw_cloud_connect_attempts_total": 4, "edgegw_cloud_connects_total": 2,
			"edgegw_cloud_sessions/connected": 1, "edgegw_cloud_sessions_refused/4": 0,
		}},
		{"a added again, counting from zero", []uplink.SessionStatus{
			{Device: a, State: uplink.StateBackoff, Attempts: 1, LastError: refused(3)},
			{Device: b, State: uplink.StateConnecting, Attempts: 3, Connects: 1, Sent: 2, LastError: network},
		}, map[string]float64{
			"edgegw_cloud_messages_sent_total": 7, "edgegw_cloud_connect_attempts_total": 6, "edgegw_cloud_connects_total": 2,
			"edgegw_cloud_sessions_refused/3": 1, "edgegw_cloud_sessions_refused/4": 0, "edgegw_cloud_sessions/backoff": 1,
		}},
		{"none", nil, map[string]float64{
			"edgegw_cloud_messages_sent_total": 7, "edgegw_cloud_connect_attempts_total": 6, "edgegw_cloud_sessions/backoff": 0,
		}},
	}
	for _, step := range steps {
		got := sessionValues(t, c, step.sts)
		for k, want := range step.want {
			if v, ok := got[k]; !ok || v != want {
				t.Errorf("%s: %s = %v (present %v), want %v", step.name, k, v, ok, want)
			}
		}
	}
}

// TestCommitHistogram: the spool's per-bucket counts become a cumulative
// histogram with +Inf holding everything.
func TestCommitHistogram(t *testing.T) {
	l := spool.Latency{Avg: 2 * time.Millisecond, Buckets: []spool.LatencyBucket{
		{UpTo: time.Millisecond, Count: 3}, {UpTo: 5 * time.Millisecond, Count: 0},
		{UpTo: 10 * time.Millisecond, Count: 2}, {Count: 1},
	}}
	var pb dto.Metric
	if err := commitHistogram(l).Write(&pb); err != nil {
		t.Fatal(err)
	}
	h := pb.GetHistogram()
	if h.GetSampleCount() != 6 || math.Abs(h.GetSampleSum()-0.012) > 1e-12 {
		t.Errorf("count %d sum %v, want 6 and 0.012", h.GetSampleCount(), h.GetSampleSum())
	}
	var got bytes.Buffer
	for _, b := range h.GetBucket() {
		fmt.Fprintf(&got, "%g:%d ", b.GetUpperBound(), b.GetCumulativeCount())
	}
	if want := "0.001:3 0.005:3 0.01:5 "; got.String() != want {
		t.Errorf("buckets %q, want %q", got.String(), want)
	}
}
