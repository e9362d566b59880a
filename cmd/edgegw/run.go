package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/edgegw/edgegw/gateway"
	"github.com/edgegw/edgegw/gateway/config"
	"github.com/edgegw/edgegw/internal/memreport"
	"github.com/edgegw/edgegw/secrets"
	"github.com/edgegw/edgegw/systemd"
)

func init() {
	commands["run"] = runDaemon
	commands["keygen"] = runKeygen
}

// runDaemon implements 'edgegw run -config FILE': the daemon, with systemd
// integration when systemd is there (socket activation, READY/STATUS/
// STOPPING notifications, a watchdog tied to the gateway's liveness check)
// and none of it otherwise.
func runDaemon(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/edgegw/edgegw.toml", "configuration `file`")
	level := fs.String("log-level", "", "override log_level: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// SIGHUP reloads (systemctl reload); caught from the start, because its
	// default action would end the daemon.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	load := func() (*config.Config, error) {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return nil, err
		}
		if *level != "" {
			cfg.LogLevel = *level
		}
		return cfg, nil
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	lvl, err := parseLevel(cfg.LogLevel)
	if err != nil {
		return err
	}
	var levelVar slog.LevelVar
	levelVar.Set(lvl)
	log := loggerFor(stderr, &levelVar, cfg.LogFormat)
	bi := build()
	log.Info("edgegw starting", "version", bi.Version, "commit", bi.Commit, "go", bi.GoVersion, "config", *cfgPath)

	if path := os.Getenv("EDGEGW_CPUPROFILE"); path != "" {
		stop, err := startCPUProfile(path)
		if err != nil {
			return err
		}
		defer stop()
		log.Warn("debug: writing a CPU profile until exit (EDGEGW_CPUPROFILE)", "file", path)
	}
	if path := os.Getenv("EDGEGW_TRACE"); path != "" {
		stop, err := startTrace(path)
		if err != nil {
			return err
		}
		defer stop()
		log.Warn("debug: writing an execution trace until exit (EDGEGW_TRACE)", "file", path)
	}
	if dir := os.Getenv("EDGEGW_PROFILE_DIR"); dir != "" {
		stop := profileOnSignal(log, dir)
		defer stop()
		log.Warn("debug: SIGUSR1 writes a memory report and heap and goroutine profiles (EDGEGW_PROFILE_DIR)", "dir", dir)
	}

	notify := systemd.NewNotifier(log)
	inherited, err := systemd.Listeners()
	if err != nil {
		// Usable listeners are still returned; a bad fd is named in err.
		log.Error("socket activation", "err", err)
	}
	g, err := gateway.New(cfg, gateway.Options{Logger: log, Level: &levelVar, Inherited: inherited, Version: bi.Version, Commit: bi.Commit})
	if err != nil {
		return err
	}
	check := g.Alive
	if os.Getenv("EDGEGW_DEBUG_HANG") == "1" {
		check = debugHangCheck(log, check)
	}

	runErr := make(chan error, 1)
	go func() { runErr <- g.Run(ctx) }()
	select {
	case <-g.Ready():
	case err := <-runErr:
		return err
	}
	status := func() string {
		s := g.Snapshot()
		return fmt.Sprintf("%d local clients, %d/%d cloud sessions up, spool %d messages",
			s.LocalClients, s.Sessions["connected"], sessionTotal(s), s.Spool.Depth)
	}
	_ = notify.Ready(status())
	wdCtx, stopWatchdog := context.WithCancel(context.Background())
	defer stopWatchdog()
	go func() { _ = notify.RunWatchdog(wdCtx, check) }()

	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = notify.Stopping()
			stopWatchdog()
			return <-runErr
		case err := <-runErr:
			return err
		case <-tick.C:
			_ = notify.Status(status())
		case <-hup:
			_ = notify.Reloading()
			reload(log, *cfgPath, load, g)
			_ = notify.Ready(status())
		}
	}
}

// reload re-reads the configuration file and applies it to g. A file that
// does not load or apply is logged (file:line: key) and the running
// configuration stays; Gateway.Reload logs what changed.
func reload(log *slog.Logger, path string, load func() (*config.Config, error), g *gateway.Gateway) {
	log.Info("reloading configuration (SIGHUP)", "config", path)
	cfg, err := load()
	if err == nil {
		_, _, err = g.Reload(cfg)
	}
	if err != nil {
		log.Error("configuration not reloaded; keeping the running configuration", "err", err)
	}
}

func sessionTotal(s gateway.Snapshot) int {
	n := 0
	for _, c := range s.Sessions {
		n += c
	}
	return n
}

// debugHangCheck, enabled only by EDGEGW_DEBUG_HANG=1 in the environment,
// makes the liveness check fail after SIGUSR2: the system test uses it to
// prove that systemd's watchdog restarts a daemon whose loops stop.
func debugHangCheck(log *slog.Logger, check func() error) func() error {
	var hung atomic.Bool
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	go func() {
		<-usr2
		log.Warn("debug: hang requested with SIGUSR2 (EDGEGW_DEBUG_HANG=1); watchdog pings stop")
		hung.Store(true)
	}()
	return func() error {
		if hung.Load() {
			return errors.New("debug hang requested")
		}
		return check()
	}
}

// runKeygen implements 'edgegw keygen -out FILE': create the registry key
// (32 random bytes, mode 0600) if the file is missing; check it otherwise.
// The key is never printed. systemd's edgegw-keygen.service runs it before
// the daemon, whose LoadCredential= needs the file to exist.
func runKeygen(_ context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("edgegw keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "key `file` to create if absent (e.g. /etc/edgegw/edgegw.key)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintln(stderr, "edgegw keygen: -out FILE is required")
		return errUsage
	}
	key, _, err := secrets.LoadOrCreateKey(*out, slog.New(slog.NewTextHandler(stderr, nil)))
	clear(key)
	return err
}

// loggerFor builds the process logger on w.
func loggerFor(w io.Writer, lvl slog.Leveler, format string) *slog.Logger {
	if f, ok := stderrFile(w); ok {
		return newLogger(f, lvl, format)
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl}))
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}

// startTrace writes a runtime execution trace (go tool trace) to path
// until stop is called: where latency goes (scheduling, syscalls, GC,
// blocking) shows there and not in a CPU profile. Traces grow by several
// MB per second under load; use it for short runs.
func startTrace(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("EDGEGW_TRACE: %w", err)
	}
	if err := trace.Start(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("EDGEGW_TRACE: %w", err)
	}
	return func() {
		trace.Stop()
		_ = f.Close()
	}, nil
}

// startCPUProfile writes a CPU profile to path until stop is called: a
// debugging aid for the field and for `edgegw bench` (its gateway child
// inherits the environment).
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("EDGEGW_CPUPROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("EDGEGW_CPUPROFILE: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}

// profileOnSignal writes memory-N.json, heap-N.pb.gz and goroutine-N.pb.gz
// (N = 1, 2, …) to dir on every SIGUSR1, then a CPU profile of the next
// 10 s (cpu-N.pb.gz), until stop is called: a debugging
// aid for the field and for `edgegw bench sessions` (its gateway child
// inherits the environment), enabled only by EDGEGW_PROFILE_DIR. The
// report (internal/memreport) attributes heap and goroutines to paho,
// mochi and edgegw's own packages; `go tool pprof` reads the profiles.
func profileOnSignal(log *slog.Logger, dir string) (stop func()) {
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	done := make(chan struct{})
	go func() {
		for n := 1; ; n++ {
			select {
			case <-usr1:
			case <-done:
				return
			}
			if err := memreport.WriteFiles(dir, n); err != nil {
				log.Error("debug: write memory report (EDGEGW_PROFILE_DIR)", "err", err)
				continue
			}
			log.Info("debug: memory report written (EDGEGW_PROFILE_DIR)", "dir", dir, "n", n)
			// Then what the process does meanwhile: a CPU profile of the
			// next 10 s (none while EDGEGW_CPUPROFILE runs one).
			path := filepath.Join(dir, fmt.Sprintf("cpu-%d.pb.gz", n))
			if stopCPU, err := startCPUProfile(path); err == nil {
				select {
				case <-time.After(10 * time.Second):
				case <-done:
				}
				stopCPU()
			}
		}
	}()
	return func() {
		signal.Stop(usr1)
		close(done)
	}
}
