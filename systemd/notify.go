package systemd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/coreos/go-systemd/v22/daemon"
)

// maxStatusLen bounds a STATUS= line; systemd shows one line in
// `systemctl status`, and a notification datagram has to stay small.
const maxStatusLen = 256

// Notifier sends sd_notify messages to the service manager. Without
// NOTIFY_SOCKET in the environment every method is a no-op that returns
// nil. Its methods are safe for concurrent use.
type Notifier struct {
	log *slog.Logger
}

// NewNotifier returns a Notifier that logs to log (nil: discard).
func NewNotifier(log *slog.Logger) *Notifier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Notifier{log: log}
}

// Ready tells systemd that start-up is complete (READY=1), together with
// the first status line when status is not empty. Call it once the gateway
// serves local devices.
func (n *Notifier) Ready(status string) error {
	return n.send("READY", daemon.SdNotifyReady, status)
}

// Status sets the free-text status line `systemctl status` shows.
// Newlines are replaced by spaces, so a status can never carry another
// notification field, and long lines are cut to 256 bytes.
func (n *Notifier) Status(status string) error {
	return n.send("STATUS", "", status)
}

// Reloading tells systemd that the service is reloading its configuration
// (RELOADING=1, with MONOTONIC_USEC= as Type=notify-reload requires). Send
// Ready when the reload is done, whether or not it succeeded.
func (n *Notifier) Reloading() error {
	return n.send("RELOADING", daemon.SdNotifyReloading+"\n"+strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"), "")
}

// Stopping tells systemd that the service is shutting down (STOPPING=1).
// Call it on SIGTERM before the drain starts.
func (n *Notifier) Stopping() error {
	return n.send("STOPPING", daemon.SdNotifyStopping, "")
}

// ExtendTimeout asks systemd to wait d longer for the current start or stop
// (EXTEND_TIMEOUT_USEC=), for a start-up that legitimately takes long, such
// as checking a large database. It must be repeated before d runs out.
func (n *Notifier) ExtendTimeout(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("notify systemd EXTEND_TIMEOUT_USEC: duration %v is not positive", d)
	}
	return n.send("EXTEND_TIMEOUT_USEC", "EXTEND_TIMEOUT_USEC="+strconv.FormatInt(d.Microseconds(), 10), "")
}

// send writes one datagram holding field (may be empty) and, when status
// is not empty, a STATUS= line. what names the message in errors.
func (n *Notifier) send(what, field, status string) error {
	var lines []string
	if field != "" {
		lines = append(lines, field)
	}
	if status != "" {
		lines = append(lines, "STATUS="+cleanStatus(status))
	}
	if len(lines) == 0 {
		return nil
	}
	if _, err := daemon.SdNotify(false, strings.Join(lines, "\n")); err != nil {
		return fmt.Errorf("notify systemd %s: %w", what, err)
	}
	return nil
}

// cleanStatus makes s a single line of at most maxStatusLen bytes, cut at
// a rune boundary.
func cleanStatus(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == 0 {
			return ' '
		}
		return r
	}, s)
	if len(s) <= maxStatusLen {
		return s
	}
	cut := maxStatusLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// WatchdogInterval returns the watchdog timeout systemd set for this
// process (WatchdogSec=), or 0 when the watchdog is off.
func WatchdogInterval() (time.Duration, error) {
	iv, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return 0, fmt.Errorf("read systemd watchdog settings: %w", err)
	}
	return iv, nil
}

// errCheckStuck reports a liveness check that has not returned in time.
var errCheckStuck = errors.New("liveness check has not returned")

// RunWatchdog keeps systemd's watchdog fed while check reports the process
// alive, until ctx ends. It returns nil at once when the watchdog is off
// (WATCHDOG_USEC unset, or set for another process), and an error only
// when the watchdog settings cannot be read. A ping that cannot be sent is
// logged and tried again at the next period.
//
// Every half watchdog interval it calls check and sends WATCHDOG=1 only if
// check returned nil. check should fail when one of the gateway's loops is
// wedged (the spool writer or the broker has made no progress), so that
// systemd kills and restarts the service. A ping that is withheld is logged
// at Error level with check's error, and the first ping after a failure at
// Info level. A check that does not return within a quarter of the
// interval counts as failed; it is not called again until it has returned,
// so a stuck check blocks the pings but starts no further goroutines.
// check must return eventually: RunWatchdog does not wait for a stuck call
// when ctx ends.
//
// systemd stops watching once the service is stopping (after STOPPING=1 or
// a stop job), so the caller may cancel ctx when the shutdown begins.
func (n *Notifier) RunWatchdog(ctx context.Context, check func() error) error {
	iv, err := WatchdogInterval()
	if err != nil || iv == 0 {
		return err
	}
	return n.runWatchdog(ctx, iv, check)
}

func (n *Notifier) runWatchdog(ctx context.Context, iv time.Duration, check func() error) error {
	period := max(iv/2, time.Millisecond)
	patience := max(iv/4, time.Millisecond)
	n.log.Info("systemd watchdog on", "timeout", iv.String(), "ping_every", period.String())

	var (
		running  chan error // non-nil while a check call is outstanding
		failing  bool
		withheld int
	)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		if running == nil {
			ch := make(chan error, 1)
			go func() { ch <- check() }()
			running = ch
		}
		var cerr error
		timer := time.NewTimer(patience)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case cerr = <-running:
			running = nil
		case <-timer.C:
			cerr = fmt.Errorf("%w within %v", errCheckStuck, patience)
		}
		timer.Stop()

		if cerr == nil {
			if _, err := daemon.SdNotify(false, daemon.SdNotifyWatchdog); err != nil {
				// Keep trying: a transient send failure must not end the
				// pings for good.
				n.log.Error("send the watchdog ping", "err", err)
			} else if failing {
				n.log.Info("liveness restored; watchdog pings resumed", "withheld", withheld)
				failing, withheld = false, 0
			}
		} else {
			failing = true
			withheld++
			n.log.Error("liveness check failed; withholding the watchdog ping, systemd restarts the service if this persists",
				"err", cerr, "withheld", withheld, "timeout", iv.String())
		}

		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
