// Package systemd connects edgegw to the service manager: readiness and
// status notifications (sd_notify), a watchdog whose pings are tied to the
// liveness of the gateway's real loops, and socket-activated listeners.
//
// Everything here is a no-op that returns no error when the process does
// not run under systemd (NOTIFY_SOCKET, WATCHDOG_USEC and LISTEN_FDS unset),
// so the daemon calls it unconditionally. It is built on
// github.com/coreos/go-systemd/v22 (daemon and activation).
//
// The protocol, as the daemon uses it with the unit in this directory
// (Type=notify, NotifyAccess=main, WatchdogSec=30):
//
//   - Notifier.Ready once the registry is open and the local broker listens
//     (not when the cloud answers: the plant must work offline); systemd
//     then reports the unit active.
//   - Notifier.Status whenever the summary changes (devices connected,
//     spool depth); `systemctl status` shows the last line.
//   - Notifier.RunWatchdog from Ready until the shutdown begins (systemd
//     arms the watchdog once start-up is complete): it sends WATCHDOG=1
//     every half watchdog interval, but only while the caller's liveness
//     check passes, so a wedged spool writer or broker makes systemd kill
//     and restart the service.
//   - Notifier.Stopping on SIGTERM, before the drain starts.
//
// Listeners returns the sockets systemd passed (edgegw.socket names them
// with FileDescriptorName=); it may be called any number of times but
// takes the descriptors from the environment only once.
package systemd
