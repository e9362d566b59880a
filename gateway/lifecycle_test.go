package gateway

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
)

// runReady starts gw's Run and waits until the gateway is Ready, failing
// the test when Run returns first or after 30 s. The test ends Run with
// cancel and reads its error from done: what Run returns is for the test
// to judge. (The external tests' gwtest.Start cannot serve this package's
// own tests: it imports gateway.)
func runReady(t *testing.T, gw *Gateway) (cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- gw.Run(ctx) }()
	select {
	case <-gw.Ready():
	case err := <-ch:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		select {
		case <-ch:
		case <-time.After(20 * time.Second):
		}
		t.Fatal("gateway not ready within 30 s")
	}
	return cancel, ch
}

// openTestRegistry opens (creating them if need be) cfg's state
// directory, key and registry, with the cheapest password hashing; the
// gateway must not run. It is gwtest.OpenRegistry for this package's own
// tests, which cannot import gwtest.
func openTestRegistry(t *testing.T, cfg *config.Config) *secrets.Registry {
	t.Helper()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, _, err := secrets.LoadOrCreateKey(cfg.EffectiveKeyFile(), nil)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := secrets.OpenRegistry(cfg.RegistryPath(), key, &secrets.RegistryOptions{PasswordIterations: secrets.MinPasswordIterations})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestRunOnce: a second Run, while the first runs or after it returned,
// returns ErrAlreadyRun (it used to fail with "already running", then panic
// with "close of closed channel"); the stop steps run last-in-first-out,
// one log line each.
func TestRunOnce(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0", "unix://" + filepath.Join(dir, "admin.sock")}
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Shutdown.Timeout = config.Duration(5 * time.Second)
	var logs testutil.SyncBuffer
	gw, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	select {
	case <-gw.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not ready within 30 s")
	}

	if err := gw.Run(ctx); !errors.Is(err, ErrAlreadyRun) {
		t.Errorf("second Run while running = %v, want ErrAlreadyRun", err)
	}
	if err := gw.Alive(); err != nil {
		t.Errorf("Alive after a refused second Run = %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20 s")
	}
	if err := gw.Run(t.Context()); !errors.Is(err, ErrAlreadyRun) {
		t.Errorf("Run after Run returned = %v, want ErrAlreadyRun", err)
	}
	if err := gw.Alive(); !errors.Is(err, errNotRunning) {
		t.Errorf("Alive after Run = %v", err)
	}

	var steps []string
	for _, m := range regexp.MustCompile(`msg="shutdown step done" step=(\w+) duration=`).FindAllStringSubmatch(logs.String(), -1) {
		steps = append(steps, m[1])
	}
	if want := []string{"broker", "uplink", "metrics", "spool", "registry"}; !slices.Equal(steps, want) {
		t.Errorf("stop steps %q, want %q\nlog:\n%s", steps, want, logs.String())
	}
}

// TestStopSteps: steps run last-in-first-out, each logged with its name
// and duration; errors and a step that overran its share are named.
func TestStopSteps(t *testing.T) {
	var logs testutil.SyncBuffer
	s := &stopSteps{log: slog.New(slog.NewTextHandler(&logs, nil))}
	var order []string
	release := make(chan struct{})
	defer close(release)
	s.add("first", time.Second, func() error { order = append(order, "first"); return nil })
	s.add("stuck", 10*time.Millisecond, func() error { <-release; return nil })
	s.add("failing", time.Second, func() error { order = append(order, "failing"); return errors.New("boom") })
	s.add("last", time.Second, func() error { order = append(order, "last"); return nil })

	start := time.Now()
	err := s.run()
	if took := time.Since(start); took > 10*time.Millisecond+stopSlack+2*time.Second {
		t.Errorf("run took %v with a stuck step", took)
	}
	if want := []string{"last", "failing", "first"}; !slices.Equal(order, want) {
		t.Errorf("order %q, want %q", order, want)
	}
	if err == nil || !strings.Contains(err.Error(), "stop failing: boom") || !strings.Contains(err.Error(), "stop stuck: not done within") {
		t.Errorf("run = %v, want the failing and the stuck step named", err)
	}
	for _, want := range []string{
		`msg="shutdown step done" step=last duration=`,
		`msg="shutdown step failed" step=failing duration=`,
		`msg="shutdown step overran; not waiting for it" step=stuck duration=`,
		`msg="shutdown step done" step=first duration=`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	if err := s.run(); err != nil {
		t.Errorf("second run = %v, want nothing left to stop", err)
	}
}

// TestStopBudget: shutdown.timeout is split once, and the parts' bounds
// add up to it.
func TestStopBudget(t *testing.T) {
	for _, tt := range []struct {
		total, broker, uplink, spool time.Duration
	}{
		{20 * time.Second, 8 * time.Second, 8 * time.Second, 4 * time.Second},
		{5 * time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}, // the spool's floor
	} {
		b := newStopBudget(tt.total)
		if b.total != tt.total || b.broker != tt.broker || b.uplink != tt.uplink || b.spool != tt.spool {
			t.Errorf("newStopBudget(%v) = %+v", tt.total, b)
		}
	}
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	gw, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if gw.budget != newStopBudget(cfg.Shutdown.Timeout.Std()) {
		t.Errorf("New's budget = %+v", gw.budget)
	}
}

// TestVersionOption: the version gateway.status reports comes from
// Options, with the build info as the fallback.
func TestVersionOption(t *testing.T) {
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	for _, tt := range []struct{ opt, want string }{
		{"v1.2.3", "v1.2.3"},
		{"", versionString()},
	} {
		gw, err := New(cfg, Options{Version: tt.opt})
		if err != nil {
			t.Fatal(err)
		}
		if gw.version != tt.want || gw.version == "" {
			t.Errorf("Options.Version %q: version %q, want %q", tt.opt, gw.version, tt.want)
		}
	}
}
