// Package gwtest runs a gateway inside a test: the start, wait-for-Ready
// and stop-on-cleanup block every rig of the gateway's external tests and
// of cmd/edgegw's tests shared, and what those rigs begin with: a cloud
// simulator, a configuration, a registry.
//
// It is a package of its own, not part of internal/testutil, because it
// imports gateway: the gateway package's internal tests import testutil,
// and would form an import cycle with it. For the same reason those
// internal tests (package gateway) cannot use gwtest. Like testutil it is
// for tests only; internal/deps_test.go keeps it out of the daemon.
package gwtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/testutil"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/uplink/cloudsim"
)

// Bounds of a gateway's start and stop: generous, because the race
// detector on a shared machine slows both down a lot.
const (
	ReadyTimeout = 30 * time.Second
	StopTimeout  = 40 * time.Second
)

// Running is a gateway whose Run is going on in a goroutine of the test.
type Running struct {
	Gateway *gateway.Gateway

	tb     testing.TB
	cancel context.CancelFunc
	done   chan error

	stopOnce sync.Once
	stopErr  error
	warnings *testutil.SyncBuffer // the gateway's warnings and errors
}

// Start makes a gateway with gateway.New(cfg, opts), runs it, and returns
// once it is Ready. It fails tb (Fatal) when New or Run fails first, or
// when the gateway is not ready within ReadyTimeout. The gateway stops
// when the test ends, or earlier with Stop.
func Start(tb testing.TB, cfg *config.Config, opts gateway.Options) *Running {
	tb.Helper()
	// Keep the gateway's warnings and errors: a stop that fails prints
	// them (a stuck shutdown logs what it waits for).
	warnings := &testutil.SyncBuffer{}
	keep := slog.NewTextHandler(warnings, &slog.HandlerOptions{Level: slog.LevelWarn})
	if opts.Logger == nil {
		opts.Logger = slog.New(keep)
	} else {
		opts.Logger = slog.New(teeHandler{opts.Logger.Handler(), keep})
	}
	gw, err := gateway.New(cfg, opts)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{Gateway: gw, tb: tb, cancel: cancel, done: make(chan error, 1), warnings: warnings}
	go func() { r.done <- gw.Run(ctx) }()
	select {
	case <-gw.Ready():
	case err := <-r.done:
		cancel()
		tb.Fatalf("gateway: %v", err)
	case <-time.After(ReadyTimeout):
		cancel()
		select {
		case <-r.done:
		case <-time.After(StopTimeout):
		}
		tb.Fatalf("gateway not ready within %v", ReadyTimeout)
	}
	tb.Cleanup(func() { r.Stop() })
	return r
}

// Stop cancels Run and waits for it to return, at most StopTimeout. The
// first call reports a non-nil error of Run, or the timeout, to the test
// (Errorf) and returns it; later calls return the same error and report
// nothing. A test that expects Run to fail does not use Start.
func (r *Running) Stop() error {
	r.stopOnce.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				r.stopErr = fmt.Errorf("gateway stopped with: %w", err)
			}
		case <-time.After(StopTimeout):
			r.stopErr = fmt.Errorf("gateway did not stop within %v", StopTimeout)
		}
		if r.stopErr != nil {
			r.tb.Error(r.stopErr)
			r.tb.Logf("the gateway's warnings and errors:\n%s", r.warnings.String())
		}
	})
	return r.stopErr
}

// Addr returns the bound address (host:port, or a socket path) of the
// gateway's first listener with the given scheme ("tcp", "tls", "ws",
// "unix"), or "" when it has none.
func (r *Running) Addr(scheme string) string {
	addrs := r.Gateway.Addrs()
	for _, id := range slices.Sorted(maps.Keys(addrs)) {
		if strings.HasPrefix(id, scheme+"://") {
			return addrs[id].String()
		}
	}
	return ""
}

// Config returns the configuration the test rigs start from: a fresh
// state directory (TempDir/state), a TCP listener on a loopback port and
// an admin unix socket (see Socket), the cloud endpoint at sim's plain TCP
// listener, a short reconnect backoff (50–300 ms), no metrics server, and
// a 5 s shutdown budget.
func Config(tb testing.TB, sim *cloudsim.Sim) *config.Config {
	tb.Helper()
	// Unix socket paths are limited to 108 bytes, and a TempDir holds the
	// test's name: the socket gets a short directory of its own.
	sockDir, err := os.MkdirTemp("", "egw")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg := config.Default()
	cfg.StateDir = filepath.Join(tb.TempDir(), "state")
	cfg.Broker.Listeners = []string{"tcp://127.0.0.1:0", "unix://" + filepath.Join(sockDir, "admin.sock")}
	cfg.Cloud.Endpoint = "tcp://" + sim.Addr(cloudsim.TCP)
	cfg.Cloud.BackoffMin = config.Duration(50 * time.Millisecond)
	cfg.Cloud.BackoffMax = config.Duration(300 * time.Millisecond)
	cfg.Metrics.Listen = ""
	cfg.Shutdown.Timeout = config.Duration(15 * time.Second) // roomy: under -race on a loaded CI box a part can take seconds to stop
	return cfg
}

// Socket returns the path of cfg's first unix socket listener, or "".
func Socket(cfg *config.Config) string {
	for _, l := range cfg.Broker.Listeners {
		if p, ok := strings.CutPrefix(l, "unix://"); ok {
			return p
		}
	}
	return ""
}

// AddAdmin adds a network admin user to cfg whose password is in a file
// (mode 0600) in a TempDir of the test; it returns the file's path.
func AddAdmin(tb testing.TB, cfg *config.Config, user, password string) (passwordFile string) {
	tb.Helper()
	passwordFile = filepath.Join(tb.TempDir(), user+".pw")
	if err := os.WriteFile(passwordFile, []byte(password+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg.Broker.Admin = append(cfg.Broker.Admin, config.AdminUser{User: user, PasswordFile: passwordFile})
	return passwordFile
}

// OpenRegistry opens (creating them if need be) the state directory, the
// key and the registry of cfg, with the cheapest password hashing the
// registry allows. The gateway must not be running; the caller closes the
// registry before starting it.
func OpenRegistry(tb testing.TB, cfg *config.Config) *secrets.Registry {
	tb.Helper()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		tb.Fatal(err)
	}
	key, _, err := secrets.LoadOrCreateKey(cfg.EffectiveKeyFile(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	reg, err := secrets.OpenRegistry(cfg.RegistryPath(), key, &secrets.RegistryOptions{PasswordIterations: secrets.MinPasswordIterations})
	if err != nil {
		tb.Fatal(err)
	}
	return reg
}

// StartCloud makes and starts a cloud simulator on cfg, closed when the
// test ends.
func StartCloud(tb testing.TB, cfg cloudsim.Config) *cloudsim.Sim {
	tb.Helper()
	sim, err := cloudsim.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := sim.Start(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sim.Close() })
	return sim
}

// teeHandler sends each record to both handlers (each filters by its own
// level).
type teeHandler struct{ a, b slog.Handler }

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return t.a.Enabled(ctx, l) || t.b.Enabled(ctx, l)
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range []slog.Handler{t.a, t.b} {
		if h.Enabled(ctx, r.Level) {
			errs = append(errs, h.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{t.a.WithAttrs(as), t.b.WithAttrs(as)}
}

func (t teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{t.a.WithGroup(name), t.b.WithGroup(name)}
}
